"""Token classification (task.kind: tag): a label per word, such as named entities (CoNLL's B-PER,
I-PER, O) or parts of speech. Examples are lists of words with a tag each (datasets' tokens and
ner_tags layout). The words are joined with spaces and tokenized; the first token of each word
carries its tag and the others none, so every tokenizer (WordPiece, byte-level BPE) aligns alike.
Tags written in the BIO, IOBES or BILOU scheme are also scored by entity (exact spans of one
type), as seqeval scores CoNLL."""

from __future__ import annotations

import json
from bisect import bisect_right

import torch
import torch.nn.functional as F

from pretrain.data.batches import IGNORE
from pretrain.data.sources import DataError, column_values, rewritten


def word_column(table, words: str, tags: str | None, where: str):
    """``table`` with each example's words (and tags) checked and written as JSON text (one type
    for every source, and text hold-out can hash). Words are a list of text; tags a list as long,
    of names or numbers (datasets' ClassLabel numbers read as their names); either may be text, as
    a table's cell holds a list (``_listed``). A DataError names the first example that is not one."""
    names = _class_names(table.features[tags]) if tags else None
    columns = {words: [], **({tags: []} if tags else {})}
    marks = column_values(table, tags) if tags else [None] * len(table)
    for i, (value, marked) in enumerate(zip(column_values(table, words), marks, strict=True)):
        said = _words(value, f"task.tokens_column={words!r}: example {i} of {where}")
        columns[words].append(json.dumps(said, ensure_ascii=False))
        if tags:
            marks = _tags(marked, names, len(said), f"task.tags_column={tags!r}: example {i} of {where}")
            columns[tags].append(json.dumps(marks, ensure_ascii=False))
    return rewritten(table, columns)


def _class_names(feature) -> list[str] | None:
    """The names behind a column of ClassLabel lists (datasets' Sequence or list of ClassLabel)."""
    import datasets

    inner = getattr(feature, "feature", None) or (feature[0] if isinstance(feature, list) and feature else None)
    return inner.names if isinstance(inner, datasets.ClassLabel) else None


def _listed(value):
    """A list as a table's cell holds one: CSV and TSV hold text, so a list is written there as a
    JSON or Python list (pandas' to_csv writes "['EU', 'rejects']") or as words between spaces."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
        import ast

        try:
            parsed = ast.literal_eval(text)  # literals only: nothing in the cell runs
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            parsed = None
        if isinstance(parsed, list):
            return parsed
    return value.split()


def _words(value, what: str) -> list[str]:
    value = _listed(value)
    if not isinstance(value, list) or not all(isinstance(w, str | int | float) and not isinstance(w, bool)
                                              for w in value):  # fmt: skip
        raise DataError(f"{what} holds {type(value).__name__} {str(value)[:40]!r}, not a list of words")
    words = [str(w) for w in value]
    blank = next((k for k, w in enumerate(words) if not w.strip()), None)
    if blank is not None or not words:
        why = f"word {blank} is blank" if words else "it has no words"
        raise DataError(f"{what}: {why}; a word is text without spaces around it")
    return words


def _tags(value, names: list[str] | None, count: int, what: str) -> list[str]:
    value = _listed(value)
    if not isinstance(value, list):
        raise DataError(f"{what} holds {type(value).__name__} {str(value)[:40]!r}, not a list of tags (one per word)")
    if len(value) != count:
        raise DataError(f"{what} has {len(value)} tags for {count} words; give one tag per word")
    tags = []
    for k, tag in enumerate(value):
        if names is not None and isinstance(tag, int) and 0 <= tag < len(names):
            tag = names[tag]
        if tag is None or isinstance(tag, bool | list | dict) or not str(tag).strip():
            raise DataError(f"{what}: tag {k} is {tag!r}, not a tag (a name such as B-PER, or a number)")
        tags.append(str(tag))
    return tags


def first_tokens(tok, words: list[list[str]], seq_len: int, with_types: bool) -> tuple[dict, list[list[int | None]]]:
    """(the tokenizer's encoding of each example's words joined by spaces, cut to seq_len; for each
    word the index of its first token, None when it lies past the cut)."""
    texts = [" ".join(w) for w in words]
    enc = tok(texts, truncation=True, max_length=seq_len, return_offsets_mapping=True,
              return_token_type_ids=with_types)  # fmt: skip
    firsts = []
    for ws, offsets in zip(words, enc["offset_mapping"], strict=True):
        starts = [0]
        for w in ws[:-1]:
            starts.append(starts[-1] + len(w) + 1)
        first: list[int | None] = [None] * len(ws)
        for index, (a, b) in enumerate(offsets):
            if a == b:
                continue  # a special token ([CLS], end-of-text) covers no character
            word = bisect_right(starts, b - 1) - 1  # the word of its last character (BPE's leading space)
            if first[word] is None:
                first[word] = index
        firsts.append(first)
    return enc, firsts


def tag_rows(tok, table, t, labels: list[str], seq_len: int, with_types: bool) -> list[dict]:
    """Tokenized examples: input ids with, at each word's first token, its tag's index (IGNORE at
    the other tokens, and where a word lies past seq_len)."""
    index = {name: i for i, name in enumerate(labels)}
    words = [json.loads(x) for x in column_values(table, t.tokens_column)]
    enc, firsts = first_tokens(tok, words, seq_len, with_types)
    rows = []
    for i, (tags, first) in enumerate(zip(column_values(table, t.tags_column), firsts, strict=True)):
        ids = enc["input_ids"][i]
        marks = [IGNORE] * len(ids)
        for tag, position in zip(json.loads(tags), first, strict=True):
            if position is not None:
                marks[position] = index[tag]
        rows.append({"input_ids": ids, "tags": marks,
                     **({"token_type_ids": enc["token_type_ids"][i]} if with_types else {})})  # fmt: skip
    return rows


class TagCollator:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, samples: list[dict]) -> dict:
        from finetune.tasks import pad, padded

        return {**padded(samples, self.pad_id), "labels": pad([s["tags"] for s in samples], IGNORE)}


PREFIXES = {"B": "B", "I": "I", "E": "E", "S": "S", "L": "E", "U": "S"}
"""The prefix of an entity tag, as conlleval reads it: BIO's B- and I-, IOBES's E- (end) and S-
(single), BILOU's L- (last) as E- and U- (unit) as S-."""


def are_entity_tags(labels: list[str]) -> bool:
    """Entity tags: O, and PREFIX-TYPE tags in the BIO (IOB2), IOBES or BILOU scheme (at least one
    B- or single-token tag), which are scored by entity."""
    tagged = [x for x in labels if x != "O"]
    return (any(x[:2] in ("B-", "S-", "U-") for x in tagged)
            and all(len(x) > 2 and x[1] == "-" and x[0] in PREFIXES for x in tagged))  # fmt: skip


def _parts(tag: str) -> tuple[str, str]:
    return ("O", "") if tag == "O" else (PREFIXES[tag[0]], tag[2:])


def entities(tags: list[str]) -> set[tuple[int, int, str]]:
    """The (start, end, type) spans of a tag sequence in the BIO, IOBES or BILOU scheme, as
    conlleval (and seqeval's default mode) reads one: an entity ends after an E- or S-, before a
    B-, S- or O, or where the type changes; one starts at a B- or S-, at an I- or E- that follows
    an O, an E- or an S-, or where the type changes."""
    spans, start = set(), None
    was, kind = "O", ""
    for k, tag in enumerate([*tags, "O"]):
        now, typ = _parts(tag)
        ends = was in "ES" or (was in "BI" and now in "BSO") or (was != "O" and kind != typ)
        if start is not None and ends:
            spans.add((start, k, kind))
            start = None
        begins = now in "BS" or (was in "OES" and now in "IE") or (now != "O" and kind != typ)
        if begins:
            start = k
        was, kind = now, typ
    return spans


class TagLoss:
    """The loss of a tagging batch (cross-entropy over the tagged tokens) and its sums: the
    confusion matrix over tags and, for entity tags (are_entity_tags), the entities found, given and
    right."""

    def __init__(self, labels: list[str]):
        self.labels, self.by_entity = labels, are_entity_tags(labels)

    def __call__(self, engine, batch: dict):
        kwargs = {k: batch[k] for k in ("attention_mask", "token_type_ids") if k in batch}
        logits = engine(batch["input_ids"], **kwargs)  # (B, T, tags)
        labels = batch["labels"]
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
        n, scored = logits.shape[-1], labels != IGNORE
        guess = logits.argmax(-1)
        confusion = torch.bincount(labels[scored] * n + guess[scored], minlength=n * n).view(n, n)
        sums = {"count": int(scored.sum()), "confusion": confusion}
        if self.by_entity:
            found = given = right = 0
            for truth, pred, keep in zip(labels.tolist(), guess.tolist(), scored.tolist(), strict=True):
                want = entities([self.labels[t] for t, k in zip(truth, keep, strict=True) if k])
                got = entities([self.labels[p] for p, k in zip(pred, keep, strict=True) if k])
                found, given, right = found + len(got), given + len(want), right + len(got & want)
            sums.update(entities_found=found, entities_given=given, entities_right=right)
        return loss, sums


def tag_metrics(sums: dict) -> dict:
    """Accuracy, macro-F1 and confusion over the tagged words; for entity tags, entity precision,
    recall and F1 (an entity counts when its span and type are both right)."""
    from finetune.tasks import classification_metrics

    out = classification_metrics(sums)
    if "entities_found" in sums:
        right = float(sums["entities_right"])
        precision = right / max(float(sums["entities_found"]), 1.0)
        recall = right / max(float(sums["entities_given"]), 1.0)
        out.update(val_entity_precision=precision, val_entity_recall=recall,
                   val_entity_f1=2 * precision * recall / max(precision + recall, 1e-12))  # fmt: skip
    return out

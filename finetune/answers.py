"""Extractive question answering (task.kind: qa): the answer is a span of the context, as in
SQuAD. The question and context go in as a pair, a context too long for data.seq_len in windows
that overlap (task.doc_stride); a head of two outputs per token gives the span's start and end.
SQuAD 2.0's unanswerable questions, and windows that do not hold the answer, point both at the
first token, and a span scores against that "no answer". Training's evaluation (and
finetune.evaluate's span scores) take each example's best span over its windows, as predict does,
and score it by token against the window's labelled span (exact span, token overlap F1);
finetune.evaluate also scores the answers' text as SQuAD's script does (exact match and F1 after
lowercasing and dropping punctuation and articles)."""

from __future__ import annotations

import json
import math
import re
import string
from collections import Counter

import torch
import torch.nn.functional as F

from pretrain.data.batches import IGNORE
from pretrain.data.sources import DataError, column_texts, column_values, rewritten

MAX_ANSWER_TOKENS = 30
"""The longest span decoding considers, in tokens (SQuAD's scripts use 30)."""


def answer_column(table, question: str, context: str, answers: str | None, where: str):
    """``table`` with each example's answers checked and written as JSON text: a list of
    [start, text] in the context. SQuAD's {"text": [...], "answer_start": [...]} (empty lists: no
    answer), or a text, which is found in the context. A DataError names the first that is not one."""
    if answers is None:
        return table
    written = []
    given = zip(*(column_values(table, c) for c in (question, context, answers)), strict=True)
    for i, (q, c, value) in enumerate(given):
        what = f"task.answers_column={answers!r}: example {i} of {where}"
        if not isinstance(q, str) or not q.strip() or not isinstance(c, str) or not c.strip():
            raise DataError(f"{what}: its question or context is blank or not text")
        written.append(json.dumps(_spans(value, c, what), ensure_ascii=False))
    return rewritten(table, {answers: written})


def _spans(value, context: str, what: str) -> list[list]:
    if isinstance(value, str):
        if value.strip() and value in context:
            return [[context.index(value), value]]
        raise DataError(f"{what}: the answer {value[:40]!r} is not in its context; give SQuAD's "
                        "{text, answer_start}, or a text found in the context")  # fmt: skip
    if isinstance(value, dict) and isinstance(value.get("text"), list) and isinstance(value.get("answer_start"), list):
        texts, starts = value["text"], value["answer_start"]
        if len(texts) != len(starts):
            raise DataError(f"{what}: {len(texts)} answer texts and {len(starts)} starts")
        spans = []
        for text, start in zip(texts, starts, strict=True):
            if not isinstance(start, int) or not isinstance(text, str) or context[start : start + len(text)] != text:
                raise DataError(f"{what}: the answer {str(text)[:40]!r} is not at character {start} of its context")
            spans.append([start, text])
        return spans
    raise DataError(f"{what} holds {type(value).__name__} {str(value)[:40]!r}, not an answer (SQuAD's {{text: [...], "
                    "answer_start: [...]}, or a text in the context)")  # fmt: skip


def stride_for(task, seq_len: int) -> int:
    """The tokens consecutive windows of a context share: task.doc_stride, else a quarter of seq_len."""
    return seq_len // 4 if task.doc_stride is None else task.doc_stride


def encode(tok, questions: list[str], contexts: list[str], seq_len: int, with_types: bool, stride: int):
    """The pairs tokenized in windows of seq_len: a question is cut to half of seq_len, and a context
    that does not fit with it is read in windows that share ``stride`` tokens (at most half of what a
    window holds of it). Returns the encoding (one row a window; ``overflow_to_sample_mapping``
    gives each window's example) and, per window, its tokens' character spans in the context (None
    outside it)."""
    cut = tok(questions, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    limit = seq_len // 2
    questions = [q[: at[limit - 1][1]] if len(at) > limit else q for q, at in zip(questions, cut, strict=True)]
    longest = max((min(len(offsets), limit) for offsets in cut), default=0)
    room = seq_len - longest - tok.num_special_tokens_to_add(pair=True)  # context tokens a window holds, at least
    if room < 2:
        raise DataError(f"data.seq_len={seq_len} leaves {room} tokens of context beside a question; raise data.seq_len")
    enc = tok(questions, contexts, truncation="only_second", max_length=seq_len, stride=min(stride, room // 2),
              return_overflowing_tokens=True, return_offsets_mapping=True,
              return_token_type_ids=with_types)  # fmt: skip
    spans = []
    for w, offsets in enumerate(enc["offset_mapping"]):
        seq = enc.sequence_ids(w)
        spans.append([tuple(o) if s == 1 and o[0] < o[1] else None for o, s in zip(offsets, seq, strict=True)])
    return enc, spans


def qa_rows(tok, table, t, seq_len: int, with_types: bool, training: bool) -> tuple[list[dict], int]:
    """(rows, how many examples were left out): a row per window of an example (see encode), with
    the first answer's start and end tokens where the window holds all of it, else 0 and 0, as for
    no answer. An answer no window holds (longer than a window) cannot be learned: in training its
    example is left out; elsewhere it is kept and not scored (its spans are IGNORE)."""
    questions, contexts = column_texts(table, t.question_column), column_texts(table, t.context_column)
    enc, spans = encode(tok, questions, contexts, seq_len, with_types, stride_for(t, seq_len))
    answers = [json.loads(a) for a in column_values(table, t.answers_column)]
    rows, held = [], set()
    for w, (i, cover) in enumerate(zip(enc["overflow_to_sample_mapping"], spans, strict=True)):
        start = end = 0  # no answer here: the first token
        if answers[i]:
            a, text = answers[i][0]
            found = _token_span(cover, a, a + len(text))
            if found is not None:
                start, end = found
                held.add(i)
        rows.append({"input_ids": enc["input_ids"][w], "start": start, "end": end, "example": i,
                     "context": [int(span is not None) for span in cover],
                     **({"token_type_ids": enc["token_type_ids"][w]} if with_types else {})})  # fmt: skip
    lost = {i for i, a in enumerate(answers) if a and i not in held}
    if training:
        return [r for r in rows if r["example"] not in lost], len(lost)
    for r in rows:
        if r["example"] in lost:
            r["start"] = r["end"] = IGNORE
    return rows, len(lost)


def _token_span(cover: list, a: int, b: int) -> tuple[int, int] | None:
    """The first and last tokens whose characters meet [a, b), or None when the window does not hold them all."""
    inside = [k for k, span in enumerate(cover) if span is not None and span[0] < b and span[1] > a]
    held = [span for span in cover if span is not None]
    if not inside or held[0][0] > a or held[-1][1] < b:
        return None
    return inside[0], inside[-1]


class QACollator:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, samples: list[dict]) -> dict:
        from finetune.tasks import pad, padded

        return {**padded(samples, self.pad_id), "labels": torch.tensor([[s["start"], s["end"]] for s in samples]),
                "context": pad([s["context"] for s in samples], 0).bool()}  # fmt: skip


def span_scores(logits: torch.Tensor, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: the best span's (start, end) among ``allowed`` tokens (B, T), of at most
    MAX_ANSWER_TOKENS, with its score (start + end logit), and the score of no answer (the first
    token's)."""
    start, end = logits.float().unbind(-1)
    neg = torch.finfo(start.dtype).min / 4
    s, e = start.masked_fill(~allowed, neg), end.masked_fill(~allowed, neg)
    scores = s[:, :, None] + e[:, None, :]  # (B, start, end)
    T = logits.shape[1]
    k = torch.arange(T, device=logits.device)
    ok = (k[None, :] >= k[:, None]) & (k[None, :] - k[:, None] < MAX_ANSWER_TOKENS)
    best, where = scores.masked_fill(~ok, neg).flatten(1).max(-1)
    return torch.stack([where // T, where % T], -1), best, start[:, 0] + end[:, 0]


def best_spans(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """(B, 2) start and end of each row's best span (span_scores), or (0, 0), no answer, where that
    scores higher."""
    spans, best, none = span_scores(logits, allowed)
    return torch.where((none > best)[:, None], torch.zeros_like(spans), spans)


class QALoss:
    """Cross-entropy of the start and of the end (their mean); in evaluation also, per window, what
    scoring an example by its best window needs (see qa_metrics). ``examples``: the example of each
    evaluated window, in the order of the evaluation's rows (a batch's positions index them)."""

    FIELDS = ("seen", "example", "span", "null", "exact", "f1", "holds")  # a row of the windows' table each

    def __init__(self, examples: list[int]):
        self.examples = torch.tensor(examples, dtype=torch.float64)

    def __call__(self, engine, batch: dict):
        kwargs = {k: batch[k] for k in ("attention_mask", "token_type_ids") if k in batch}
        logits = engine(batch["input_ids"], **kwargs)  # (B, T, 2)
        labels = batch["labels"]
        mask = batch["attention_mask"].bool()
        masked = logits.float().masked_fill(~mask[..., None], torch.finfo(torch.float32).min / 4)
        loss = (F.cross_entropy(masked[..., 0], labels[:, 0], ignore_index=IGNORE)
                + F.cross_entropy(masked[..., 1], labels[:, 1], ignore_index=IGNORE)) / 2  # fmt: skip
        scored = labels[:, 0] != IGNORE
        if torch.is_grad_enabled():  # a training step reads the loss alone (evaluations run without gradients)
            return loss, {"count": int(scored.sum())}
        found, score, null = span_scores(logits, batch["context"])
        at = batch["position"][scored].cpu()  # each row is scored once in a pass (a second look: IGNORE)
        values = torch.stack([x.double() for x in (torch.ones_like(score), score, null, (found == labels).all(-1),
                                                   _overlap_f1(found, labels), (labels != 0).any(-1))])
        values = values[:, scored].cpu()
        windows = torch.zeros(len(self.FIELDS), len(self.examples), dtype=torch.float64)
        windows[:, at] = torch.cat([values[:1], self.examples[at][None], values[1:]])
        return loss, {"count": int(scored.sum()), "windows": windows}


@torch.no_grad()
def predict_answers(model, tok, task, questions: list[str], contexts: list[str], max_length: int,
                    batch_size: int = 32) -> list[tuple[str, int | None]]:  # fmt: skip
    """Each question's answer in its context and where it starts (("", None): no answer): the best
    span over the context's windows, unless no answer scores higher in every window (the lowest
    no-answer score, as HF's SQuAD 2.0 post-processing compares)."""
    from finetune.tasks import pad

    with_types, out = model.cfg.type_vocab_size > 0, []
    for first in range(0, len(questions), batch_size):
        qs, cs = questions[first : first + batch_size], contexts[first : first + batch_size]
        enc, spans = encode(tok, qs, cs, max_length, with_types, stride_for(task, max_length))
        best = {}  # example -> (span score, window, start, end), and its lowest no-answer score
        none = {}
        for w0 in range(0, len(spans), batch_size):
            ids = enc["input_ids"][w0 : w0 + batch_size]
            kwargs = {"token_type_ids": pad(enc["token_type_ids"][w0 : w0 + batch_size], 0)} if with_types else {}
            logits = model(pad(ids, tok.pad_token_id), attention_mask=pad([[1] * len(x) for x in ids], 0), **kwargs)
            allowed = pad([[int(s is not None) for s in cover] for cover in spans[w0 : w0 + batch_size]], 0).bool()
            found, score, null = span_scores(logits, allowed)
            for w, (a, b), sc, nu in zip(range(w0, w0 + len(ids)), found.tolist(), score.tolist(), null.tolist(),
                                         strict=True):  # fmt: skip
                i = enc["overflow_to_sample_mapping"][w]
                none[i] = min(nu, none.get(i, nu))
                if spans[w][a] is not None and spans[w][b] is not None and sc > best.get(i, (float("-inf"),))[0]:
                    best[i] = (sc, w, a, b)
        for i, context in enumerate(cs):
            if i not in best or none[i] > best[i][0]:
                out.append(("", None))
                continue
            _, w, a, b = best[i]
            text = context[spans[w][a][0] : spans[w][b][1]]  # a byte-level BPE token holds the space before its word
            out.append((text.strip(), spans[w][a][0] + len(text) - len(text.lstrip())))
    return out


def _overlap_f1(guess: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Token-overlap F1 of two (B, 2) inclusive spans; a no-answer span (0, 0) matches only itself."""
    lo, hi = torch.maximum(guess[:, 0], truth[:, 0]), torch.minimum(guess[:, 1], truth[:, 1])
    common = (hi - lo + 1).clamp(min=0).double()
    g, t = (guess[:, 1] - guess[:, 0] + 1).double(), (truth[:, 1] - truth[:, 0] + 1).double()
    f1 = torch.where(common > 0, 2 * common / (g + t), torch.zeros_like(common))
    empty = (guess == 0).all(-1) | (truth == 0).all(-1)
    return torch.where(empty, (guess == truth).all(-1).double(), f1)


def qa_metrics(sums: dict) -> dict:
    """The loss over the scored windows; each scored example's span (its best over its windows,
    unless no answer scores higher in every window, as predict_answers decides) exact and its token
    F1, against the span labelled in that window (or no answer), over the examples."""
    n = max(float(sums["count"]), 1.0)
    windows = dict(zip(QALoss.FIELDS, sums["windows"].tolist(), strict=True))
    best, lowest_null, answerable = {}, {}, {}
    for w, seen in enumerate(windows["seen"]):
        if not seen:
            continue
        e, span = int(windows["example"][w]), windows["span"][w]
        if e not in best or span > best[e][0]:
            best[e] = (span, windows["exact"][w], windows["f1"][w])
        lowest_null[e] = min(lowest_null.get(e, math.inf), windows["null"][w])
        answerable[e] = answerable.get(e, False) or bool(windows["holds"][w])
    scores = [best[e][1:] if best[e][0] >= lowest_null[e] else (float(not answerable[e]),) * 2 for e in best]
    m = max(len(scores), 1)
    return {"val_loss": float(sums["loss_sum"]) / n, "val_span_exact": sum(x for x, _ in scores) / m,
            "val_span_f1": sum(f for _, f in scores) / m}  # fmt: skip


def normalized(text: str) -> str:
    """SQuAD's answer normalization: lower case, no punctuation, no articles, single spaces."""
    text = "".join(c for c in text.lower() if c not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def text_scores(got: str, wanted: list[str]) -> tuple[float, float]:
    """(exact match, F1) of an answer against the best of the references, as SQuAD's script scores
    them; no references (unanswerable): right only when the answer is empty too."""
    if not wanted:
        return float(not got), float(not got)
    exact = max(float(normalized(got) == normalized(w)) for w in wanted)
    return exact, max(_text_f1(normalized(got).split(), normalized(w).split()) for w in wanted)


def _text_f1(got: list[str], wanted: list[str]) -> float:
    common = sum((Counter(got) & Counter(wanted)).values())
    if not got or not wanted:
        return float(got == wanted)
    if common == 0:
        return 0.0
    precision, recall = common / len(got), common / len(wanted)
    return 2 * precision * recall / (precision + recall)

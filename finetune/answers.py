"""Extractive question answering (task.kind: qa): the answer is a span of the context, as in
SQuAD. The question and context go in as a pair (the longer cut first); a head of two
outputs per token gives the span's start and end. SQuAD 2.0's unanswerable questions point both
at the first token, and a span scores against that "no answer". Training's evaluation scores
spans by token (exact span, token overlap F1); finetune.evaluate scores the answers' text as
SQuAD's script does (exact match and F1 after lowercasing and dropping punctuation and articles)."""

from __future__ import annotations

import json
import re
import string
from collections import Counter

import torch
import torch.nn.functional as F

from pretrain.data.batches import IGNORE
from pretrain.data.sources import DataError, rewritten

MAX_ANSWER_TOKENS = 30
"""The longest span decoding considers, in tokens (SQuAD's scripts use 30)."""


def answer_column(table, question: str, context: str, answers: str | None, where: str):
    """``table`` with each example's answers checked and written as JSON text: a list of
    [start, text] in the context. SQuAD's {"text": [...], "answer_start": [...]} (empty lists: no
    answer), or a text, which is found in the context. A DataError names the first that is not one."""
    if answers is None:
        return table
    written = []
    for i, (q, c, value) in enumerate(zip(table[question], table[context], table[answers], strict=True)):
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


def encode(tok, questions: list[str], contexts: list[str], seq_len: int, with_types: bool):
    """The pairs tokenized, cut to fit seq_len (the longer of the two first: the context, unless a
    question is longer than what is left of it), and, per example, its tokens' character spans in
    the context (None outside it)."""
    enc = tok(questions, contexts, truncation="longest_first", max_length=seq_len, return_offsets_mapping=True,
              return_token_type_ids=with_types)  # fmt: skip
    spans = []
    for i, offsets in enumerate(enc["offset_mapping"]):
        seq = enc.sequence_ids(i)
        spans.append([tuple(o) if s == 1 and o[0] < o[1] else None for o, s in zip(offsets, seq, strict=True)])
    return enc, spans


def qa_rows(tok, table, t, seq_len: int, with_types: bool, training: bool) -> tuple[list[dict], int]:
    """(rows, how many were left out): input ids with the first answer's start and end tokens (0
    and 0 for no answer). An answer the cut context does not hold cannot be learned: in training
    the example is left out; elsewhere it is kept and scored as a miss (its span is IGNORE)."""
    questions, contexts = [str(x) for x in table[t.question_column]], [str(x) for x in table[t.context_column]]
    enc, spans = encode(tok, questions, contexts, seq_len, with_types)
    rows, left_out = [], 0
    for i, (answers, cover) in enumerate(zip(table[t.answers_column], spans, strict=True)):
        answers = json.loads(answers)
        start = end = 0  # no answer: the first token
        if answers:
            a, text = answers[0]
            start, end = _token_span(cover, a, a + len(text))
            if start is None:
                if training:
                    left_out += 1
                    continue
                start = end = IGNORE
        rows.append({"input_ids": enc["input_ids"][i], "start": start, "end": end,
                     "context": [int(span is not None) for span in cover],
                     **({"token_type_ids": enc["token_type_ids"][i]} if with_types else {})})  # fmt: skip
    return rows, left_out


def _token_span(cover: list, a: int, b: int) -> tuple[int | None, int | None]:
    """The first and last tokens whose characters meet [a, b), or (None, None) when they are not all there."""
    inside = [k for k, span in enumerate(cover) if span is not None and span[0] < b and span[1] > a]
    last = max((span[1] for span in cover if span is not None), default=0)
    if not inside or last < b:
        return None, None
    return inside[0], inside[-1]


class QACollator:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, samples: list[dict]) -> dict:
        from finetune.tasks import pad, padded

        return {**padded(samples, self.pad_id), "labels": torch.tensor([[s["start"], s["end"]] for s in samples]),
                "context": pad([s["context"] for s in samples], 0).bool()}  # fmt: skip


def best_spans(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """(B, 2) start and end of each row's best span: the highest start + end logit over spans of
    ``allowed`` tokens (B, T) of at most MAX_ANSWER_TOKENS, or (0, 0), no answer, where its score
    is higher."""
    start, end = logits.float().unbind(-1)
    neg = torch.finfo(start.dtype).min / 4
    s, e = start.masked_fill(~allowed, neg), end.masked_fill(~allowed, neg)
    scores = s[:, :, None] + e[:, None, :]  # (B, start, end)
    T = logits.shape[1]
    k = torch.arange(T, device=logits.device)
    ok = (k[None, :] >= k[:, None]) & (k[None, :] - k[:, None] < MAX_ANSWER_TOKENS)
    scores = scores.masked_fill(~ok, neg).flatten(1)
    best, where = scores.max(-1)
    spans = torch.stack([where // T, where % T], -1)
    none = start[:, 0] + end[:, 0] > best
    return torch.where(none[:, None], torch.zeros_like(spans), spans)


def qa_loss(engine, batch: dict):
    """Cross-entropy of the start and of the end (their mean), and the sums: spans exactly right and
    the token-overlap F1 of the predicted spans, over the scored examples."""
    kwargs = {k: batch[k] for k in ("attention_mask", "token_type_ids") if k in batch}
    logits = engine(batch["input_ids"], **kwargs)  # (B, T, 2)
    labels = batch["labels"]
    mask = batch["attention_mask"].bool()
    masked = logits.float().masked_fill(~mask[..., None], torch.finfo(torch.float32).min / 4)
    loss = (F.cross_entropy(masked[..., 0], labels[:, 0], ignore_index=IGNORE)
            + F.cross_entropy(masked[..., 1], labels[:, 1], ignore_index=IGNORE)) / 2  # fmt: skip
    with torch.no_grad():
        guess = best_spans(logits.detach(), batch["context"])
        scored = labels[:, 0] != IGNORE
        exact = (guess == labels).all(-1) & scored
        f1 = _overlap_f1(guess, labels) * scored
    return loss, {"count": int(scored.sum()), "span_exact": exact.sum(), "span_f1": f1.sum()}


@torch.no_grad()
def predict_answers(model, tok, questions: list[str], contexts: list[str], max_length: int,
                    batch_size: int = 32) -> list[tuple[str, int | None]]:  # fmt: skip
    """Each question's answer in its context and where it starts (("", None): no answer)."""
    from finetune.tasks import pad

    with_types, out = model.cfg.type_vocab_size > 0, []
    for start in range(0, len(questions), batch_size):
        qs, cs = questions[start : start + batch_size], contexts[start : start + batch_size]
        enc, spans = encode(tok, qs, cs, max_length, with_types)
        ids = enc["input_ids"]
        kwargs = {"token_type_ids": pad(enc["token_type_ids"], 0)} if with_types else {}
        logits = model(pad(ids, tok.pad_token_id), attention_mask=pad([[1] * len(x) for x in ids], 0), **kwargs)
        allowed = pad([[int(s is not None) for s in cover] for cover in spans], 0).bool()
        for (a, b), cover, context in zip(best_spans(logits, allowed).tolist(), spans, cs, strict=True):
            if (a, b) == (0, 0) or cover[a] is None or cover[b] is None:
                out.append(("", None))
                continue
            text = context[cover[a][0] : cover[b][1]]  # a byte-level BPE token holds the space before its word
            out.append((text.strip(), cover[a][0] + len(text) - len(text.lstrip())))
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
    n = max(float(sums["count"]), 1.0)
    return {"val_loss": float(sums["loss_sum"]) / n, "val_span_exact": float(sums["span_exact"]) / n,
            "val_span_f1": float(sums["span_f1"]) / n}  # fmt: skip


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

"""Extractive question answering (task.kind: qa) data and scoring: SQuAD's answers (and a plain
answer text) become token spans of the context, unanswerable questions point at the first token,
a long context is read in overlapping windows (an answer longer than a window is left out of
training), spans decode within the context and over the windows, and the answers' text is scored
as SQuAD's script scores it."""

import json
from functools import partial

import pytest
import torch

from finetune.answers import QACollator, QALoss, best_spans, normalized, qa_metrics, qa_rows, text_scores
from finetune.data import check_task_sources, task_tables
from pretrain.data.batches import IGNORE
from pretrain.data.sources import DataError

from .conftest import finetune_task, jsonl

CONTEXT = "The json module was added in Python 2.6. It reads and writes JSON text."
ROWS = [
    {"question": "When was json added?", "context": CONTEXT, "answers": {"text": ["Python 2.6"], "answer_start": [29]}},
    {"question": "What does it write?", "context": CONTEXT, "answers": "JSON text"},
    {"question": "Who wrote it?", "context": CONTEXT, "answers": {"text": [], "answer_start": []}},
]  # fmt: skip


task = partial(finetune_task, "qa")


@pytest.mark.parametrize("tokenizer", ["bpe", "wordpiece"])
def test_answers_become_the_token_spans_that_cover_them(tmp_path, tokenizer, request):
    tok = request.getfixturevalue(tokenizer)
    cfg = task(jsonl(tmp_path / "qa.jsonl", ROWS))
    table = task_tables(cfg)["train"]
    assert [json.loads(a) for a in table["answers"]] == [[[29, "Python 2.6"]], [[61, "JSON text"]], []]
    rows, left_out = qa_rows(tok, table, cfg.task, 128, tokenizer == "wordpiece", training=True)
    assert left_out == 0 and (rows[2]["start"], rows[2]["end"]) == (0, 0)  # no answer: the first token
    for row, want in zip(rows[:2], ["python 2.6", "json text"], strict=True):
        said = tok.decode(row["input_ids"][row["start"] : row["end"] + 1]).replace(" ", "").lower()
        assert said == want.replace(" ", "")
        assert all(row["context"][row["start"] : row["end"] + 1])  # the span lies in the context


def test_an_answer_longer_than_a_window_is_left_out_of_training_and_not_scored_elsewhere(tmp_path, bpe):
    cfg = task(jsonl(tmp_path / "qa.jsonl", ROWS[:1]))
    table = task_tables(cfg)["train"]
    rows, left_out = qa_rows(bpe, table, cfg.task, 12, False, training=True)
    assert (rows, left_out) == ([], 1)
    rows, _ = qa_rows(bpe, table, cfg.task, 12, False, training=False)
    assert (rows[0]["start"], rows[0]["end"]) == (IGNORE, IGNORE)


LONG = " ".join(f"line {i} says nothing much." for i in range(30)) + " The answer is Python 2.6 here."


@pytest.mark.parametrize("tokenizer", ["bpe", "wordpiece"])
def test_a_long_context_is_read_in_overlapping_windows_and_the_answer_learned_where_it_is(tmp_path, tokenizer,
                                                                                        request):  # fmt: skip
    tok = request.getfixturevalue(tokenizer)
    rows = [{"question": "Which version?", "context": LONG, "answers": "Python 2.6"},
            {"question": "Who wrote it?", "context": LONG, "answers": {"text": [], "answer_start": []}}]  # fmt: skip
    cfg = task(jsonl(tmp_path / "qa.jsonl", rows), doc_stride=8)
    got, left_out = qa_rows(tok, task_tables(cfg)["train"], cfg.task, 64, tokenizer == "wordpiece", training=True)
    windows = [r for r in got if r["example"] == 0]
    assert left_out == 0 and len(windows) > 2 and len(got) == 2 * len(windows)  # both contexts, the same windows
    assert all(len(r["input_ids"]) <= 64 for r in got)
    labeled = [r for r in windows if (r["start"], r["end"]) != (0, 0)]
    assert labeled and all(r is windows[-1] or r is windows[-2] for r in labeled)  # the answer is at the end
    for r in labeled:
        said = tok.decode(r["input_ids"][r["start"] : r["end"] + 1]).replace(" ", "").lower()
        assert said == "python2.6"
    assert all((r["start"], r["end"]) == (0, 0) for r in got if r["example"] == 1)
    # consecutive windows share 8 tokens of the context
    ctx = [[t for t, c in zip(r["input_ids"], r["context"], strict=True) if c] for r in windows]
    assert all(a[-8:] == b[:8] for a, b in zip(ctx, ctx[1:], strict=False))


def test_the_answer_is_the_best_span_over_the_windows_unless_no_answer_wins_in_every_one(bpe):
    from finetune.answers import encode, predict_answers

    cfg = task("unused.jsonl", doc_stride=8)
    enc, spans = encode(bpe, ["Which version?"], [LONG], 64, False, 8)
    where = LONG.index("Python 2.6")
    span = {w: [k for k, c in enumerate(cover) if c and c[0] < where + 10 and c[1] > where] for w, cover in
            enumerate(spans)}  # fmt: skip
    holds = [w for w, ks in span.items() if ks and spans[w][ks[0]][0] <= where]

    class Reader(torch.nn.Module):  # points at Python 2.6 where a window holds it; elsewhere says no answer
        cfg = type("Cfg", (), {"type_vocab_size": 0})()
        sure = 9.0

        def forward(self, input_ids, **_):
            out = torch.zeros(*input_ids.shape, 2)
            out[:, 0, :] = 5.0
            for w in range(input_ids.shape[0]):
                if w in holds:
                    out[w, span[w][0], 0] = out[w, span[w][-1], 1] = self.sure
            return out

    reader = Reader()
    assert len(spans) > 2 and holds
    assert predict_answers(reader, bpe, cfg.task, ["Which version?"], [LONG], 64) == [("Python 2.6", where)]
    reader.sure = 4.0  # 8 against no answer's 10 in every window: no answer
    assert predict_answers(reader, bpe, cfg.task, ["Which version?"], [LONG], 64) == [("", None)]


def test_spans_decode_within_the_context_and_no_answer_wins_when_it_scores_higher():
    logits = torch.zeros(2, 6, 2)
    logits[0, 3, 0], logits[0, 4, 1], logits[0, 1, 0], logits[0, 1, 1] = 5, 5, 9, 9  # token 1: question, not allowed
    logits[1, 0, :], logits[1, 2, 0], logits[1, 2, 1] = 8, 3, 3  # no answer scores 16 against 6
    allowed = torch.tensor([[0, 0, 1, 1, 1, 1]] * 2).bool()
    assert best_spans(logits, allowed).tolist() == [[3, 4], [0, 0]]
    logits[0, 5, 0] = 20  # a start after every good end: the end must not come before it
    assert best_spans(logits, allowed).tolist()[0] == [5, 5]


class Fixed(torch.nn.Module):
    """A reader whose start and end logits are given, row by row of the batch (by position)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, input_ids, **_):
        return self.logits[self.rows]


def window(start=(), end=(), null=None) -> torch.Tensor:
    out = torch.full((5, 2), -5.0)
    for k, v in start:
        out[k, 0] = v
    for k, v in end:
        out[k, 1] = v
    if null is not None:
        out[0] = null / 2
    return out


def test_the_loss_and_the_span_scores_of_a_batch():
    reader = Fixed(torch.stack([window([(2, 5.0)], [(3, 5.0)]), window([(2, 5.0)], [(2, 5.0)])]))
    reader.rows = [0, 1]  # (2, 3): right; (2, 2) against (2, 4): F1 2 * 1 / (1 + 3)
    samples = [{"input_ids": [1] * 5, "start": 2, "end": end, "context": [0, 1, 1, 1, 1], "position": i, "example": i}
               for i, end in enumerate((3, 4))]  # fmt: skip
    with torch.no_grad():
        loss, sums = QALoss([0, 1])(reader, QACollator(0)(samples))
    assert sums["count"] == 2
    assert float(loss) == pytest.approx((0 + 10) / 2 / 2, abs=1e-3)  # only row 1's end is wrong, by 10 in logits
    assert set(QALoss([0, 1])(reader, QACollator(0)(samples))[1]) == {"count"}  # a training step: the loss alone
    metrics = qa_metrics({"loss_sum": loss * 2, **sums})
    assert metrics["val_span_exact"] == 0.5 and metrics["val_span_f1"] == pytest.approx((1.0 + 0.5) / 2)


def test_an_example_is_scored_by_its_best_window_as_predict_answers_it():
    """Three examples in five windows, scored in two batches (as on two ranks, or one after the other):
    the first's best span is in a window that does not hold its answer (0, where each window scored
    apart gives a half); the second has no answer, which scores highest in both its windows (1);
    the third's span is one token of its two (F1 2/3)."""
    logits = torch.stack([window([(3, 6.0)], [(3, 6.0)]),  # example 0: (3, 3) scores 12, the answer is elsewhere
                          window([(2, 5.0)], [(3, 5.0)]),  # ... its answer (2, 3), 10
                          window(null=20.0), window(null=20.0),  # example 1: no answer scores 20 in both
                          window([(1, 5.0)], [(1, 5.0)])])  # example 2: (1, 1) against (1, 2)  # fmt: skip
    labels = [(0, 0), (2, 3), (0, 0), (0, 0), (1, 2)]
    examples = [0, 0, 1, 1, 2]
    loss_fn, sums = QALoss(examples), {}
    from pretrain.trainer import accumulate

    for rows in ([4, 1], [0, 2, 3]):
        reader = Fixed(logits)
        reader.rows = rows
        samples = [{"input_ids": [1] * 5, "start": labels[r][0], "end": labels[r][1], "context": [0, 1, 1, 1, 1],
                    "position": r, "example": examples[r]} for r in rows]  # fmt: skip
        with torch.no_grad():  # as evaluations run
            accumulate(sums, *loss_fn(reader, QACollator(0)(samples)))
    metrics = qa_metrics(sums)
    assert metrics["val_span_exact"] == pytest.approx(1 / 3)
    assert metrics["val_span_f1"] == pytest.approx((0 + 1 + 2 / 3) / 3)


def test_answer_text_is_scored_as_squads_script_scores_it():
    assert normalized("The  Python 2.6!") == "python 26"
    assert text_scores("python 2.6", ["Python 2.6", "2.6"]) == (1.0, 1.0)
    exact, f1 = text_scores("in Python 2.6", ["Python 2.6"])
    assert exact == 0.0 and f1 == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert text_scores("", []) == (1.0, 1.0) and text_scores("x", []) == (0.0, 0.0)


@pytest.mark.parametrize(("answers", "said"), [
    ("Python 3", "the answer 'Python 3' is not in its context"),
    ({"text": ["Python 2.6"], "answer_start": [3]}, "the answer 'Python 2.6' is not at character 3 of its context"),
    ({"text": ["a", "b"], "answer_start": [0]}, "2 answer texts and 1 starts"),
    (["Python 2.6"], "holds list"),
])  # fmt: skip
def test_an_answer_that_is_not_one_is_named_with_its_example(tmp_path, answers, said):
    cfg = task(jsonl(tmp_path / "qa.jsonl", [ROWS[0], {**ROWS[0], "answers": answers}]))
    with pytest.raises(DataError, match=r"task.answers_column='answers': example 1 of data.sources\[0\]") as e:
        check_task_sources(cfg)
    assert said in str(e.value)


@pytest.mark.parametrize("stride, said", [(-1, "task.doc_stride=-1: must be >= 0"),
                                          (90, "task.doc_stride=90: more than a third of data.seq_len=256, so "
                                               "windows would barely advance; use task.doc_stride <= 85, or null "
                                               "for 64")])  # fmt: skip
def test_a_stride_windows_cannot_advance_with_is_refused(stride, said):
    from pretrain.config import ConfigError

    with pytest.raises(ConfigError) as e:
        task("unused.jsonl", doc_stride=stride)
    assert said in str(e.value)


SQUAD_V2 = {"version": "v2.0", "data": [
    {"title": "json", "paragraphs": [
        {"context": CONTEXT, "qas": [
            {"id": "q1", "question": "When was json added?", "is_impossible": False,
             "answers": [{"text": "Python 2.6", "answer_start": 29}, {"text": "2.6", "answer_start": 36}]},
            {"id": "q2", "question": "Who wrote it?", "is_impossible": True, "answers": [],
             "plausible_answers": [{"text": "Python", "answer_start": 29}]},
        ]},
    ]},
    {"title": "text", "paragraphs": [
        {"context": "It reads JSON text.", "qas": [
            {"id": "q3", "question": "What does it read?", "answers": [{"text": "JSON text", "answer_start": 9}]},
        ]},
    ]},
]}  # fmt: skip


def test_squads_own_json_files_read_a_question_a_row(tmp_path):
    """train-v1.1.json and dev-v2.0.json nest articles, paragraphs and questions: datasets' json
    reader gave one row of 'version' and 'data', and the task no question column."""
    (tmp_path / "dev-v2.0.json").write_text(json.dumps(SQUAD_V2))
    cfg = task(tmp_path / "dev-v2.0.json")
    check_task_sources(cfg)  # what the launcher runs before any rank starts
    table = task_tables(cfg)["train"]
    assert table["question"] == ["When was json added?", "Who wrote it?", "What does it read?"]
    assert table["context"] == [CONTEXT, CONTEXT, "It reads JSON text."]
    assert [json.loads(a) for a in table["answers"]] == [[[29, "Python 2.6"], [36, "2.6"]], [], [[9, "JSON text"]]]
    bad = {"data": [{"title": "t", "paragraphs": [{"context": CONTEXT, "qas": [
        {"id": "x", "question": "Where?", "answers": [{"text": "json", "answer_start": "4"}]}]}]}]}  # fmt: skip
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"bad.json data\[0\].paragraphs\[0\].qas\[0\] has the answer .*: not a text "
                       "and the character position it starts at"):  # fmt: skip
        check_task_sources(task(tmp_path / "bad.json"))

"""A fine-tuning task's own files as users bring them: labels missing or blank in some rows, one
label only, sources of different formats (a label that is a number in one file and text in the
other). Each is read, or refused in one line naming the rows, before a classifier is built."""

import json

import pytest

from finetune.config import load_finetune_config
from finetune.data import check_task_sources, task_tables
from pretrain.data.sources import DataError

ROWS = [{"text": f"example {i} is {'good' if i % 2 else 'bad'}", "label": i % 2} for i in range(30)]


def task(*sources, kind="classify", fraction=0.0):
    return load_finetune_config(None, ["init_from=somewhere", f"task.kind={kind}",
                                       f"data.validation_fraction={fraction}",
                                       f"data.sources={json.dumps([{'files': str(s)} for s in sources])}"])  # fmt: skip


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_rows_without_a_label_are_named_not_learned_as_a_class(tmp_path):
    rows = [dict(r) for r in ROWS]
    del rows[3]["label"]
    rows[7]["label"] = None
    cfg = task(jsonl(tmp_path / "holes.jsonl", rows))
    message = (r"task.label_column='label': 2 example\(s\) of data.sources\[0\] \(train data\) have no label "
               r"\(null, absent or blank\): examples 3, 7 \(counting from 0\)")  # fmt: skip
    with pytest.raises(DataError, match=message):
        check_task_sources(cfg)  # what the launcher runs before any rank starts
    with pytest.raises(DataError, match=message):
        task_tables(cfg)
    (tmp_path / "blank.csv").write_text("text,label\n" + "".join(f"{r['text']},{'  ' if i == 5 else r['label']}\n"
                                                                  for i, r in enumerate(ROWS)))  # fmt: skip
    with pytest.raises(DataError, match=r"have no label \(null, absent or blank\): example 5 \("):
        check_task_sources(task(tmp_path / "blank.csv"))
    rows = [dict(r) for r in ROWS]
    rows[4]["text"] = None
    with pytest.raises(DataError, match=r"task.text_column='text': 1 example\(s\) .* have no value .*: example 4 "):
        check_task_sources(task(jsonl(tmp_path / "notext.jsonl", rows)))


def test_one_label_is_refused(tmp_path):
    cfg = task(jsonl(tmp_path / "one.jsonl", [{**r, "label": "pos"} for r in ROWS]))
    with pytest.raises(DataError, match=r"the training data has 1 label\(s\) \['pos'\]; a classifier needs examples "):
        check_task_sources(cfg)


def test_a_label_that_training_never_has_is_refused_before_any_rank_starts(tmp_path):
    """A validation or test file with a class the training files lack was found only once ranks ran
    (validation) or at evaluation after training (test)."""
    train = jsonl(tmp_path / "train.jsonl", ROWS)
    other = jsonl(tmp_path / "other.jsonl", ROWS[:4] + [{"text": "a third kind", "label": 7}])
    for part in ("validation", "test"):
        cfg = task(train)
        setattr(cfg.data.sources[0], f"{part}_files", str(other))
        with pytest.raises(DataError, match=rf"labels \['7'\] appear in the {part} data of data.sources\[0\] but "
                           r"never in training \(training has \['0', '1'\]\)"):  # fmt: skip
            check_task_sources(cfg)
        setattr(cfg.data.sources[0], f"{part}_files", str(jsonl(tmp_path / "fine.jsonl", ROWS[:4])))
        check_task_sources(cfg)
    words = [{"tokens": ["Paris", "is"], "ner_tags": ["B-LOC", "O"]}] * 6
    cfg = task(jsonl(tmp_path / "tags.jsonl", words), kind="tag")
    cfg.data.sources[0].validation_files = str(jsonl(tmp_path / "dev.jsonl", [{"tokens": ["Ada"],
                                                                             "ner_tags": ["B-PER"]}]))  # fmt: skip
    with pytest.raises(DataError, match=r"tags \['B-PER'\] appear in the validation data of data.sources\[0\]"):
        check_task_sources(cfg)


def test_sources_of_different_formats_are_one_table(tmp_path):
    """JSON holds the text as large_string and here the label as text; a TSV's reader holds the text as
    string and the label as a number."""
    quoted = jsonl(tmp_path / "a.json", [{**r, "label": str(r["label"])} for r in ROWS[:20]])
    (tmp_path / "b.tsv").write_text("text\tlabel\n" + "".join(f"{r['text']}\t{r['label']}\n" for r in ROWS[20:]))
    tables = task_tables(task(quoted, tmp_path / "b.tsv"))
    assert tables["train"]["text"] == [r["text"] for r in ROWS]
    assert tables["train"]["label"] == [str(r["label"]) for r in ROWS]  # as the classifier names its labels


def test_texts_that_are_lists_and_labels_that_are_lists_or_scores_are_refused(tmp_path):
    """str() would have trained on a list's repr, made '[0]' a class, or a class of every score."""
    cases = [("tokens", {"text": "a b".split()}, r"task.text_column='text': example 0 .* holds list \"\['a', 'b'\]\", "
                                                  r"not text"),
             ("multi", {"label": [1]}, r"holds list '\[1\]', not one label: classification takes one label per"),
             ("score", {"label": 2.5}, r"holds float '2.5', a score, not a category")]  # fmt: skip
    for name, change, message in cases:
        with pytest.raises(DataError, match=message):
            check_task_sources(task(jsonl(tmp_path / f"{name}.jsonl", [{**r, **change} for r in ROWS])))
    whole = jsonl(tmp_path / "whole.jsonl", [{**r, "label": float(r["label"])} for r in ROWS])  # 0.0, 1.0: categories
    check_task_sources(task(whole))


def test_a_classlabel_column_gives_its_names_and_minus_one_is_a_missing_label(tmp_path):
    """Files datasets wrote (save_to_disk, its parquet, as GLUE ships) keep labels as ClassLabel
    indices: the classifier's labels.json and every prediction read "0"/"1", not the names."""
    import datasets

    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})  # fmt: skip
    rows = {"text": [r["text"] for r in ROWS], "label": [r["label"] for r in ROWS]}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "sst"))
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(tmp_path / "sst.parquet"))
    for source in (tmp_path / "sst", tmp_path / "sst.parquet"):
        table = task_tables(task(source))["train"]
        assert table["label"] == ["positive" if r["label"] else "negative" for r in ROWS], source
        check_task_sources(task(source))
    rows["label"][4] = -1  # a test split's "no label"
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "unlabeled"))
    with pytest.raises(DataError, match=r"1 example\(s\) of data.sources\[0\] \(train data\) have no label \(null, "
                                        r"absent or blank\): example 4 \("):  # fmt: skip
        task_tables(task(tmp_path / "unlabeled"))


def test_labels_written_with_spaces_around_them_are_the_same_labels(tmp_path):
    """A spreadsheet's export writes "pos " in some rows: it was a third and fourth class."""
    (tmp_path / "train.tsv").write_text("text\tlabel\n" + "".join(
        f"{r['text']}\t{[' pos', 'neg ', 'pos', 'neg'][i % 4]}\n" for i, r in enumerate(ROWS)))  # fmt: skip
    cfg = task(tmp_path / "train.tsv", fraction=0.2)
    check_task_sources(cfg)
    tables = task_tables(cfg)
    assert {split: sorted(set(t["label"])) for split, t in tables.items()} == {"train": ["neg", "pos"],
                                                                               "validation": ["neg", "pos"]}
    rows = [dict(r, label=" 1 ") for r in ROWS[:3]] + ROWS  # numbers in text in one file: the same labels
    assert {str(x) for x in task_tables(task(jsonl(tmp_path / "t.jsonl", rows)))["train"]["label"]} == {"0", "1"}


def test_the_tables_the_check_made_are_the_ones_the_examples_are_made_from(tmp_path, monkeypatch):
    """A tagging or chat table's rows are checked and rewritten one by one: the launcher's and each
    rank's check make each source's tables once, not once more for the examples."""
    import finetune.data as data

    made, make = [], data.source_table
    monkeypatch.setattr(data, "source_table", lambda src, part, *a, **k: made.append(part) or make(src, part, *a, **k))
    a, b, dev = (jsonl(tmp_path / f"{name}.jsonl", rows) for name, rows in (("a", ROWS), ("b", ROWS[::-1]),
                                                                           ("dev", ROWS[:6])))  # fmt: skip
    cfg = load_finetune_config(None, ["init_from=somewhere", "task.kind=classify", "data.validation_fraction=0.2",
                                      f"data.sources=[{{files: {a}}}, {{files: {b}, validation_files: {dev}}}]"])
    read = check_task_sources(cfg)
    tables = task_tables(cfg, read=read)
    assert made == ["train", "train", "validation"] and sorted(read) == [(0, "train"), (1, "train"), (1, "validation")]
    assert len(tables["train"]) + len(tables["validation"]) == 30 + 30 + 6 and 6 < len(tables["validation"]) < 30
    task_tables(cfg)  # without them: made again
    assert made[3:] == ["train", "train", "validation"]


def test_evaluating_on_validation_files_reads_no_training_data(tmp_path, monkeypatch):
    """`finetune.evaluate RUN` scores the run's validation data; where every source names its own,
    the training tables (a million rows, say) are not read; where a share is held out, they are."""
    from types import SimpleNamespace

    import finetune.data as data
    from finetune.evaluate import examples

    made, make = [], data.source_table
    monkeypatch.setattr(data, "source_table", lambda src, part, *a, **k: made.append(part) or make(src, part, *a, **k))
    train, dev = jsonl(tmp_path / "train.jsonl", ROWS), jsonl(tmp_path / "dev.jsonl", ROWS[:6])
    args = SimpleNamespace(data=None, split="validation")
    named = load_finetune_config(None, ["init_from=somewhere", "task.kind=classify", "data.validation_fraction=0.2",
                                        f"data.sources=[{{files: {train}, validation_files: {dev}}}]"])  # fmt: skip
    table, what = examples(named, args, print)
    assert made == ["validation"] and list(table["text"]) == [r["text"] for r in ROWS[:6]]
    held = task(train, fraction=0.2)
    made.clear()
    table, what = examples(held, args, print)
    assert made == ["train"] and 0 < len(table) < 30 and what == "the run's validation data"

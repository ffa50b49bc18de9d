"""Local files that cannot be read as text are refused with one line naming the file and why,
before anything is tokenized."""

import json

import pytest

from pretrain.data.config import DataConfig, SourceConfig
from pretrain.data.sources import DataError, check_local_sources, load_corpus


def corpus(path, **source):
    return load_corpus(DataConfig(sources=[SourceConfig(files=str(path), **source)], validation_fraction=0.0,
                                  num_proc=1), "train")  # fmt: skip


def test_an_empty_jsonl_is_named(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match=r"data.sources\[0\].files: .*empty.jsonl is empty"):
        corpus(tmp_path / "empty.jsonl")


def test_a_table_with_its_header_line_alone_is_named(tmp_path):
    (tmp_path / "header.csv").write_text("text,label\n")
    with pytest.raises(DataError, match=r"header.csv: no examples in it \(a csv or tsv file with its header line "
                       r"alone\); give examples"):  # fmt: skip
        corpus(tmp_path / "header.csv")


def test_latin1_bytes_are_named_with_the_file_and_offset(tmp_path):
    (tmp_path / "latin.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9 au lait"}\n')
    with pytest.raises(DataError, match=r"latin.jsonl is not UTF-8 text \(byte 28\); convert it"):
        corpus(tmp_path / "latin.jsonl")


def test_a_text_column_of_numbers_is_refused_naming_the_columns(tmp_path):
    (tmp_path / "ints.jsonl").write_text('{"id": 1, "body": "x"}\n{"id": 2, "body": "y"}\n')
    with pytest.raises(DataError, match=r"text_column='id': holds int64 values \(example 0: int '1'\), not text; "
                       r".*\['id', 'body'\]"):  # fmt: skip
        corpus(tmp_path / "ints.jsonl", text_column="id")
    assert len(corpus(tmp_path / "ints.jsonl", text_column="body")) == 2


ROWS = [{"text": f"document {i}: the quick brown fox jumps over the lazy dog", "id": i} for i in range(40)]


def write(path, text: str, opener=open):
    with opener(path, "wt", encoding="utf-8", newline="") as f:
        f.write(text)
    return path


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz"])
def test_compressed_json_text_and_csv_read_as_their_plain_selves(tmp_path, suffix):
    import bz2
    import gzip
    import lzma

    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}[suffix]
    jsonl = "".join(json.dumps(r) + "\n" for r in ROWS)
    csv = "id,text\n" + "".join(f'{r["id"]},"{r["text"]}\nsecond line"\n' for r in ROWS)
    (tmp_path / "plain").mkdir()
    (tmp_path / "packed").mkdir()
    for name, body in (("c4.00000-of-01024.json", jsonl), ("t.csv", csv), ("book.txt", csv)):
        plain = write(tmp_path / "plain" / name, body)
        packed = write(tmp_path / "packed" / (name + suffix), body, opener)
        assert corpus(packed)["text"] == corpus(plain)["text"]
    assert len(corpus(tmp_path / "packed" / f"c4.00000-of-01024.json{suffix}")) == 40
    # A folder finds them by the kind before the compression suffix, and one source takes one kind.
    with pytest.raises(DataError, match=r"found \['.csv', '.json', '.txt'\]; .* also as .gz, .bz2, .xz, .zst"):
        corpus(tmp_path / "packed")


def test_broken_archives_are_named_with_the_file(tmp_path, monkeypatch):
    import gzip
    import sys

    whole = gzip.compress("".join(json.dumps(r) + "\n" for r in ROWS).encode())
    (tmp_path / "cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])  # a download that stopped
    with pytest.raises(DataError, match=r"cut.jsonl.gz cannot be decompressed \(EOFError: .*\): truncated or corrupt"):
        corpus(tmp_path / "cut.jsonl.gz")
    (tmp_path / "fake.txt.gz").write_text("not gzip at all")
    with pytest.raises(DataError, match=r"fake.txt.gz cannot be decompressed \(BadGzipFile"):
        corpus(tmp_path / "fake.txt.gz")
    (tmp_path / "none.txt.gz").write_bytes(gzip.compress(b""))
    with pytest.raises(DataError, match=r"none.txt.gz is empty once decompressed"):
        corpus(tmp_path / "none.txt.gz")
    (tmp_path / "latin.txt.gz").write_bytes(gzip.compress(b"ok\ncaf\xe9\n"))
    with pytest.raises(DataError, match=r"latin.txt.gz is not UTF-8 text \(byte 6 once decompressed\)"):
        corpus(tmp_path / "latin.txt.gz")
    (tmp_path / "t.parquet.gz").write_bytes(gzip.compress(b"PAR1"))
    with pytest.raises(DataError, match=r"parquet files are read as they are; decompress it"):
        corpus(tmp_path / "t.parquet.gz")
    monkeypatch.setitem(sys.modules, "zstandard", None)  # not installed
    (tmp_path / "t.jsonl.zst").write_bytes(b"(\xb5/\xfd")
    with pytest.raises(DataError, match=r"files: .*t.jsonl.zst: reading .zst files needs the zstandard package"):
        corpus(tmp_path / "t.jsonl.zst")


def test_a_bad_json_line_is_named_by_its_number_alone(tmp_path, capfd):
    lines = [json.dumps(r) for r in ROWS]
    (tmp_path / "torn.jsonl").write_text("\n".join(lines) + '\n{"text": "half a rec')
    with pytest.raises(DataError, match=r"torn.jsonl line 41 is not JSON \(column 10: Unterminated string"):
        corpus(tmp_path / "torn.jsonl")
    assert "Failed to load JSON" not in capfd.readouterr().err  # datasets' own line is not printed before ours
    (tmp_path / "lists.jsonl").write_text("\n".join(lines[:3] + ["[1, 2]"] + lines[3:]) + "\n")
    with pytest.raises(DataError, match=r"lists.jsonl line 4 is a JSON list, not an object of named fields"):
        corpus(tmp_path / "lists.jsonl")
    (tmp_path / "array.json").write_text("[\n" + ",\n".join(lines[:5]) + ",\n]\n")  # a trailing comma
    with pytest.raises(DataError, match=r"array.json is not JSON: line 7 column 1: Expecting value"):
        corpus(tmp_path / "array.json")


def test_records_under_a_key_are_read_with_field(tmp_path):
    (tmp_path / "squad.json").write_text(json.dumps({"version": "1.1", "data": ROWS}))
    (tmp_path / "only.json").write_text(json.dumps({"data": ROWS}))
    with pytest.raises(DataError, match=r"text_column='text': no such column; the data has \['data'\]: the records "
                                        r"are a list under 'data' \(one JSON document\); read them with field: data"):
        corpus(tmp_path / "only.json")
    assert corpus(tmp_path / "squad.json", field="data")["text"] == [r["text"] for r in ROWS]
    with pytest.raises(DataError, match=r"squad.json: field='rows' is not a key of the document \(it has \['data', "):
        corpus(tmp_path / "squad.json", field="rows")
    (tmp_path / "a.txt").write_text("text")
    with pytest.raises(DataError, match=r"field='data' picks the records out of a JSON document; these are .txt"):
        corpus(tmp_path / "a.txt", field="data")


def test_byte_order_marks_are_not_text_and_utf16_is_named(tmp_path):
    (tmp_path / "bom.txt").write_bytes("\ufeffdef f():\n    return 1\n".encode())
    assert corpus(tmp_path / "bom.txt")["text"] == ["def f():\n    return 1\n"]
    (tmp_path / "wide.txt").write_text("def f():\n", encoding="utf-16")
    with pytest.raises(DataError, match=r"wide.txt is utf-16 text, not UTF-8; convert it, e.g. iconv -f utf-16"):
        corpus(tmp_path / "wide.txt")


def test_a_text_column_of_mixed_kinds_shows_a_value_that_is_not_text(tmp_path):
    (tmp_path / "mixed.jsonl").write_text('{"text": "a b"}\n{"text": null}\n{"text": 12345}\n')
    with pytest.raises(DataError, match=r"text_column='text': holds values of mixed kinds \(example 2: int '12345'\)"):
        corpus(tmp_path / "mixed.jsonl")


def test_a_json_object_of_columns_is_named_with_how_to_write_records(tmp_path):
    (tmp_path / "columns.json").write_text(json.dumps({"text": ["a b", "c d"], "id": [1, 2]}))
    with pytest.raises(DataError, match=r"text_column='text': holds lists \(example 0: list .*one JSON object of "
                       r"columns .*write a record a line"):  # fmt: skip
        corpus(tmp_path / "columns.json")


@pytest.mark.parametrize("name, text", [("blank.txt", "  \n\n\t\n"),
                                        ("blank.jsonl", '{"text": null}\n{"text": " "}\n{"id": 3}\n')])
def test_a_source_without_a_non_empty_document_is_found_by_the_preflight_check(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    cfg = DataConfig(sources=[SourceConfig(files=str(tmp_path / name))], cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError, match=rf"data.sources\[0\]: the train data has no non-empty documents \(files "
                       rf".*{name}\)"):  # fmt: skip
        check_local_sources(cfg)
    (tmp_path / "dev.txt").write_text("\n")
    (tmp_path / name).write_text('{"text": "a real document"}\n' if name.endswith("jsonl") else "a document\n")
    cfg.sources[0].validation_files = str(tmp_path / "dev.txt")
    with pytest.raises(DataError, match=r"the validation data has no non-empty documents \(validation_files .*dev"):
        check_local_sources(cfg)


def test_documents_without_text_are_left_out_and_counted_once_but_blank_lines_are_layout(tmp_path):
    """Null, absent and blank texts of a table are left out of pretraining and the log says how
    many, once (not again for the validation share held out of the same rows); blank lines of a
    text file read a line a document are its layout, and are not counted."""
    docs = [{"text": f"document {i} says something"} for i in range(40)]
    lines = [json.dumps(d) for d in docs[:20]] + ['{"text": null}', '{"text": " \\n "}', '{"id": 7}']
    (tmp_path / "holes.jsonl").write_text("\n".join(lines + [json.dumps(d) for d in docs[20:]]) + "\n")
    said = []
    cfg = DataConfig(sources=[SourceConfig(files=str(tmp_path / "holes.jsonl"))], validation_fraction=0.1, num_proc=1)
    train, validation = load_corpus(cfg, "train", log=said.append), load_corpus(cfg, "validation", log=said.append)
    assert len(train) + len(validation) == 40
    left_out = [m for m in said if "left out" in m]
    assert left_out == ["data.sources[0]: 3 of the 43 documents of its train data have no text (null, absent or "
                        "blank 'text'): left out"]  # fmt: skip
    (tmp_path / "lines.txt").write_text("one line\n\n  \nanother line\n")
    said.clear()
    cfg = DataConfig(sources=[SourceConfig(files=str(tmp_path / "lines.txt"), sample_by="line")],
                     validation_fraction=0.0, num_proc=1)  # fmt: skip
    assert list(load_corpus(cfg, "train", log=said.append)["text"]) == ["one line", "another line"]
    assert not [m for m in said if "left out" in m]


def test_predict_reads_a_compressed_text_file_one_text_per_line(tmp_path):
    import gzip

    from finetune.predict import read_texts

    (tmp_path / "texts.txt.gz").write_bytes(gzip.compress("\ufefffirst text\n\nsecond text\n".encode()))
    assert read_texts(str(tmp_path / "texts.txt.gz"), None, None) == (["first text", "second text"], None)


def test_predict_and_evaluate_read_files_of_other_names_with_kind(tmp_path):
    """--kind reads a file whatever its name, as a source's kind does; without it, a name of no
    known kind is refused with the flag that reads it (it said 'kind: text', a config's option)."""
    import argparse
    from types import SimpleNamespace

    from finetune.data import add_file_arguments, file_table
    from finetune.predict import read_texts

    ap = argparse.ArgumentParser()
    add_file_arguments(ap)
    cfg = SimpleNamespace(task=SimpleNamespace(text_column="text", text_pair_column=None))
    (tmp_path / "snippets.c").write_text("int main(void);\nvoid f(int x);\n")
    (tmp_path / "rows.data").write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n')
    assert read_texts(str(tmp_path / "snippets.c"), ap.parse_args(["--kind", "text"]), cfg) == (
        ["int main(void);", "void f(int x);"], None)  # fmt: skip
    assert read_texts(str(tmp_path / "rows.data"), ap.parse_args(["--kind", "json"]), cfg) == (["a", "b"], None)
    table = file_table(str(tmp_path / "rows.data"), ap.parse_args(["--kind", "json"]),
                       {"text_column": "text", "label_column": "label"}, "--data")  # fmt: skip
    assert table["label"] == ["x", "y"]
    with pytest.raises(DataError) as e:
        read_texts(str(tmp_path / "snippets.c"), ap.parse_args([]), cfg)
    assert str(e.value).startswith(f"{tmp_path / 'snippets.c'}: found ['.c']; one source takes files of one kind")
    assert str(e.value).endswith("; --kind text reads files of any name as text")


def test_sources_of_different_formats_mix(tmp_path):
    """A JSON document's text is large_string, a text file's string: interleaving needs one type."""
    (tmp_path / "a.json").write_text(json.dumps([{"text": f"json {i}"} for i in range(10)]))
    (tmp_path / "b.txt").write_text("plain text\n")
    sources = [SourceConfig(files=str(tmp_path / "a.json")), SourceConfig(files=str(tmp_path / "b.txt"))]
    cfg = DataConfig(sources=sources, validation_fraction=0.0, num_proc=1)
    assert sorted(set(load_corpus(cfg, "train")["text"])) == [f"json {i}" for i in range(10)] + ["plain text\n"]


def test_a_dataset_saved_by_datasets_is_read_from_its_arrow_files(tmp_path):
    import datasets

    rows = [{"text": f"saved {i}", "id": i} for i in range(12)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    assert corpus(tmp_path / "saved")["text"] == [r["text"] for r in rows]  # not its dataset_info.json
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows), "validation": datasets.Dataset.from_list(rows[:2])}
                         ).save_to_disk(str(tmp_path / "dict"))  # fmt: skip
    with pytest.raises(DataError, match=r"dict is a DatasetDict written by save_to_disk \(splits \['train', "
                                        r"'validation'\]\); name a split's folder, e.g. files: .*dict/train"):
        corpus(tmp_path / "dict")
    assert len(corpus(tmp_path / "dict" / "validation")) == 2


def test_files_and_folders_whose_names_read_as_globs_are_read_as_named(tmp_path):
    """datasets takes every file name as a pattern: "[1]" is a character class, and "notes [1].txt"
    matched nothing, alone or as a folder's file. A broken link says where it points."""
    folder = tmp_path / "drafts [v2]"
    folder.mkdir()
    write(folder / "notes [1].txt", "first draft\n")
    write(folder / "notes 1.txt", "not the bracketed one\n")
    assert corpus(folder / "notes [1].txt")["text"] == ["first draft\n"]
    assert sorted(corpus(folder)["text"]) == ["first draft\n", "not the bracketed one\n"]
    assert corpus(tmp_path / "drafts [[]v2]" / "*1].txt")["text"] == ["first draft\n"]  # an escaped glob still globs
    (tmp_path / "gone.txt").symlink_to(tmp_path / "moved.txt")
    with pytest.raises(DataError, match=r"gone.txt is a symbolic link to '.*moved.txt', which does not exist"):
        corpus(tmp_path / "gone.txt")


def test_files_that_passed_the_check_are_not_read_again_until_they_change(tmp_path, monkeypatch):
    """Every rank checks the local files at every start (a resume too): over a large corpus that
    was minutes of reading what had not changed."""
    import os

    from pretrain.data import sources

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write(corpus / "a.txt", "first document\n")
    write(corpus / "b.jsonl", json.dumps({"body": "second"}) + "\n")
    cfg = DataConfig(sources=[SourceConfig(files=str(corpus / "a.txt"), validation_files=str(corpus / "*.txt")),
                              SourceConfig(files=str(corpus / "b.jsonl"), text_column="body")],
                     cache_dir=str(tmp_path / "cache"), num_proc=1)  # fmt: skip
    read = []
    table = sources.text_table
    monkeypatch.setattr(sources, "text_table", lambda src, part, where: read.append((where, part)) or
                        table(src, part, where))  # fmt: skip
    sources.check_local_sources(cfg)
    assert read == [("data.sources[0]", "train"), ("data.sources[0]", "validation"), ("data.sources[1]", "train")]
    sources.check_local_sources(cfg)
    assert len(read) == 3  # nothing read again
    write(corpus / "b.jsonl", json.dumps({"body": "sekond"}) + "\n")  # other bytes, the same size
    os.utime(corpus / "b.jsonl", ns=(1, 1))
    sources.check_local_sources(cfg)
    assert read[3:] == [("data.sources[1]", "train")]  # the changed file's source only
    (corpus / "a.txt").write_bytes(b"caf\xe9 latin-1\n")
    with pytest.raises(DataError, match=r"a.txt is not UTF-8 text"):
        sources.check_local_sources(cfg)
    cfg.sources[1].text_column = "text"  # another option: checked again, and refused
    (corpus / "a.txt").write_text("fixed\n")
    with pytest.raises(DataError, match=r"text_column='text': no such column"):
        sources.check_local_sources(cfg)


def test_column_values_read_in_one_batch_are_the_examples_values_in_their_order():
    """A shuffled, cut and held-out table reads through its index: the values as example by example."""
    import datasets

    from pretrain.data.sources import column_texts, column_values

    table = datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(50)], "label": list(range(50))})
    table = table.shuffle(seed=3).select(range(20)).filter(lambda row: row["label"] % 3)
    assert column_values(table, "label") == [row["label"] for row in table] != sorted(column_values(table, "label"))
    assert column_texts(table, "label") == [str(row["label"]) for row in table]
    assert column_values(table.select([]), "text") == []

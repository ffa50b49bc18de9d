"""A user's own files, as they come: one long text file, headerless TSV with separate
train/validation/test files, other delimiters and quoting; explicit validation files; no
validation at all. Each read through datasets' builders, with the split rules checked."""

import pytest

from pretrain.config import ConfigError, load_config
from pretrain.data.config import DataConfig, SourceConfig
from pretrain.data.sources import DataError, load_corpus, load_table

LINES = [f"line {i}: the quick brown fox number {i} jumps over the lazy dog" for i in range(400)]


def cfg_for(fraction=0.01, **source) -> DataConfig:
    cfg = DataConfig(sources=[SourceConfig(**source)], validation_fraction=fraction, num_proc=1)
    cfg.validate()
    return cfg


def test_one_long_text_file_keeps_a_tail_for_validation_and_trains_on_the_rest(tmp_path):
    book = tmp_path / "book.txt"
    book.write_text("\n".join(LINES) + "\n")
    said = []
    cfg = cfg_for(0.05, files=str(book))
    train = load_corpus(cfg, "train")["text"]
    validation = load_corpus(cfg, "validation", log=said.append)["text"]
    assert "".join(train) + "".join(validation) == book.read_text()  # nothing lost, nothing seen twice
    assert validation[0].startswith("line ") and train[-1].endswith("\n")  # cut at a line break
    share = len("".join(validation)) / len(book.read_text())
    assert 0.04 < share < 0.06
    assert LINES[-1] in validation[-1] and LINES[-1] not in "".join(train)  # the tail, not a hashed pick
    assert len(said) == 1 and "holding out the last 5.0% of the text" in said[0], said


def test_sample_by_line_or_paragraph_and_chunks_make_documents_of_one_file(tmp_path):
    text = "\n\n".join("\n".join(LINES[i : i + 4]) for i in range(0, 40, 4)) + "\n"
    (tmp_path / "a.txt").write_text(text)
    assert len(load_corpus(cfg_for(0.0, files=str(tmp_path / "a.txt")), "train")) == 1
    assert len(load_corpus(cfg_for(0.0, files=str(tmp_path / "a.txt"), sample_by="paragraph"), "train")) == 10
    assert len(load_corpus(cfg_for(0.0, files=str(tmp_path / "a.txt"), sample_by="line"), "train")) == 40
    pieces = load_corpus(cfg_for(0.0, files=str(tmp_path / "a.txt"), chunk_chars=300), "train")["text"]
    assert len(pieces) > 5 and all(len(p) <= 300 for p in pieces)
    assert "".join(pieces).rstrip("\n") == text.rstrip("\n")  # nothing lost but trailing blank lines
    assert all(p.endswith("\n") for p in pieces[:-1])  # cut after line breaks


def test_headerless_tsv_with_column_names_quotes_as_text_and_other_delimiters(tmp_path):
    (tmp_path / "train.tsv").write_text('a "quoted" start\t1\nplain, with comma\t0\n')
    src = SourceConfig(files=str(tmp_path / "train.tsv"), header=False, column_names=["sentence", "label"],
                       quoting="none")  # fmt: skip
    table = load_table(src, "train", "data.sources[0]")
    assert table.column_names == ["sentence", "label"] and len(table) == 2  # the first line is data
    assert table["sentence"] == ['a "quoted" start', "plain, with comma"] and table["label"] == [1, 0]
    (tmp_path / "semi.csv").write_text("text;label\nNA;x\nnull;y\n")
    semi = load_table(SourceConfig(files=str(tmp_path / "semi.csv"), delimiter=";"), "train", "s")
    assert semi["text"] == ["NA", "null"]  # text that pandas would turn into missing values stays text
    renamed = load_table(SourceConfig(files=str(tmp_path / "semi.csv"), delimiter=";", column_names=["t", "l"]),
                         "train", "s")  # fmt: skip
    assert renamed.column_names == ["t", "l"] and len(renamed) == 2  # the header line replaced, not data


def test_validation_files_are_the_validation_set_and_training_keeps_all_its_files(tmp_path):
    (tmp_path / "train.txt").write_text("\n".join(LINES[:300]))
    (tmp_path / "dev.txt").write_text("\n".join(LINES[300:]))
    cfg = cfg_for(0.5, files=str(tmp_path / "train.txt"), validation_files=str(tmp_path / "dev.txt"),
                  sample_by="line")  # fmt: skip
    assert load_corpus(cfg, "train")["text"] == LINES[:300]  # validation_fraction does not cut it
    assert load_corpus(cfg, "validation")["text"] == LINES[300:]


def test_no_validation_fraction_and_no_validation_files_means_no_validation_data(tmp_path):
    (tmp_path / "a.txt").write_text("\n".join(LINES))
    cfg = cfg_for(0.0, files=str(tmp_path / "a.txt"))
    assert not cfg.has_validation() and load_corpus(cfg, "validation") is None
    assert load_corpus(cfg, "train")["text"] == ["\n".join(LINES)]  # never the training data as validation


@pytest.mark.parametrize("source, message", [
    ({"files": "x.txt", "validation_split": "test"},
     "data.sources[0].validation_split='test': only hub datasets have named splits; for local files give "
     "validation_files"),
    ({"hub": "imdb", "test_files": "t.csv"}, "data.sources[0].test_files: goes with files"),
    ({"files": "x.tsv", "header": False}, "data.sources[0].header=false: give column_names"),
    ({"files": "x.csv", "delimiter": "ab"}, "data.sources[0].delimiter='ab': must be one character"),
])  # fmt: skip
def test_local_files_with_named_splits_or_a_headerless_table_without_names_are_refused(tmp_path, source, message):
    import yaml

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"data": {"sources": [source]}}))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message in str(err.value)


def test_a_missing_validation_file_is_named(tmp_path):
    (tmp_path / "a.txt").write_text("x\n")
    cfg = cfg_for(0.0, files=str(tmp_path / "a.txt"), validation_files=str(tmp_path / "dev*.txt"))
    with pytest.raises(DataError, match=r"data.sources\[0\].validation_files: nothing matches"):
        load_corpus(cfg, "validation")


def test_a_damaged_datasets_cache_of_a_file_is_rebuilt_and_a_bad_file_still_named(tmp_path, monkeypatch, capsys):
    """datasets keeps an Arrow copy of each file it read (under HF_DATASETS_CACHE); one cut short
    made every later read fail with an error that named the user's file, which was fine."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    records = tmp_path / "records.jsonl"
    records.write_text("".join(f'{{"text": "{line}"}}\n' for line in LINES))
    src = SourceConfig(files=str(records))
    assert load_table(src, "train", "data.sources[0]")["text"] == LINES
    assert capsys.readouterr().err == ""
    (arrow,) = (tmp_path / "hf").rglob("json-train.arrow")
    arrow.write_bytes(arrow.read_bytes()[:1000])
    assert load_table(src, "train", "data.sources[0]")["text"] == LINES
    err = capsys.readouterr().err
    assert err.startswith(f"warning: data.sources[0].files: datasets' cache of it (under {tmp_path / 'hf'}) did not "
                          "read (") and err.rstrip().endswith("rebuilt it from the files"), err  # fmt: skip
    records.write_text('{"text": "one"}\n{"text": "tw\n')  # now the file itself is bad: it is the one named
    with pytest.raises(DataError, match=r"records.jsonl line 2 is not JSON"):
        load_table(src, "train", "data.sources[0]")
    assert capsys.readouterr().err == ""


def test_a_code_folder_is_read_as_text_with_kind_text_and_its_hidden_folders_left_out(tmp_path):
    """A folder of C sources gave "nothing matches 'FOLDER' (give a file, a glob or a directory)"
    (it is a directory); .md beside .txt was refused as two kinds; no name outside the table of
    suffixes could be read at all."""
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / ".git" / "objects").mkdir(parents=True)
    (repo / ".git" / "objects" / "pack").write_bytes(bytes(range(256)) * 4)  # not text: must not be read
    sources = {"src/list.c": "int len(struct list *l) { return l->n; }\n", "src/list.h": "int len(struct list *l);\n",
               "Makefile": "all:\n\tcc src/list.c\n"}  # fmt: skip
    for name, text in sources.items():
        (repo / name).write_text(text)
    with pytest.raises(DataError) as refused:
        load_table(SourceConfig(files=str(repo)), "train", "data.sources[0]")
    assert str(refused.value) == (f"data.sources[0].files: {repo} holds 3 file(s), none named as a kind read by its "
                                  "suffix (1 (none), 1 .c, 1 .h); give kind: text to read them as text (source code, "
                                  "say), or another kind")  # fmt: skip
    with pytest.raises(DataError, match=r"found \['.c', '.h'\]; one source takes files of one kind: text .*kind: text"):
        load_table(SourceConfig(files=str(repo / "src" / "*")), "train", "data.sources[0]")
    (repo / "src" / "README").write_text("how to build\n")  # a file without a suffix is named, not shown as ''
    with pytest.raises(DataError, match=r"found \['.c', '.h', 'README \(no suffix\)'\]; one source takes files"):
        load_table(SourceConfig(files=str(repo / "src" / "*")), "train", "data.sources[0]")
    (repo / "src" / "README").unlink()
    texts = load_corpus(cfg_for(0.0, files=str(repo), kind="text"), "train")["text"]
    assert sorted(texts) == sorted(sources.values())  # each file one document; .git left out
    notes = tmp_path / "notes"
    notes.mkdir()
    for name, text in {"a.md": "# title\n", "b.txt": "plain\n", "c.py": "x = 1\n"}.items():
        (notes / name).write_text(text)
    assert sorted(load_corpus(cfg_for(0.0, files=str(notes)), "train")["text"]) == ["# title\n", "plain\n", "x = 1\n"]
    (notes / "d.csv").write_text("text\nrow\n")
    (notes / "e.tsv").write_text("text\nrow\n")
    with pytest.raises(DataError, match=r"found \['.csv', '.tsv'\]: .csv files are read with ',' and .tsv files with"):
        load_table(SourceConfig(files=str(notes / "*sv")), "train", "data.sources[0]")
    with pytest.raises(ValueError, match=r"kind=text: says how to read local files \(files:\)"):
        SourceConfig(hub="wikitext", kind="text").validate()

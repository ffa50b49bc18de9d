"""Local files that cannot be read as text are refused with one line naming the file and why,
before anything is tokenized."""

import pytest

from pretrain.data.config import DataConfig, SourceConfig
from pretrain.data.sources import DataError, load_corpus


def corpus(path, **source):
    return load_corpus(DataConfig(sources=[SourceConfig(files=str(path), **source)], validation_fraction=0.0,
                                  num_proc=1), "train")  # fmt: skip


def test_an_empty_jsonl_is_named(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match=r"data.sources\[0\].files: .*empty.jsonl is empty"):
        corpus(tmp_path / "empty.jsonl")


def test_latin1_bytes_are_named_with_the_file_and_offset(tmp_path):
    (tmp_path / "latin.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9 au lait"}\n')
    with pytest.raises(DataError, match=r"latin.jsonl is not UTF-8 text \(byte 28\); convert it"):
        corpus(tmp_path / "latin.jsonl")


def test_a_text_column_of_numbers_is_refused_naming_the_columns(tmp_path):
    (tmp_path / "ints.jsonl").write_text('{"id": 1, "body": "x"}\n{"id": 2, "body": "y"}\n')
    with pytest.raises(DataError, match=r"text_column='id': holds int64 values, not text; .*\['id', 'body'\]"):
        corpus(tmp_path / "ints.jsonl", text_column="id")
    assert len(corpus(tmp_path / "ints.jsonl", text_column="body")) == 2

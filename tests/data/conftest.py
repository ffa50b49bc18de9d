import os
import shutil
from pathlib import Path

import pytest

from pretrain.data.config import DataConfig, SourceConfig, TokenizerConfig
from pretrain.data.sources import stdlib_files

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """40 real documents: standard-library modules copied as .txt files."""
    folder = tmp_path_factory.mktemp("corpus")
    picked = [f for f in stdlib_files() if Path(f).parent.name in ("json", "email", "logging", "http", "xml")]
    for i, f in enumerate(sorted(picked)[:40]):
        shutil.copy(f, folder / f"{i:02d}-{Path(f).stem}.txt")
    return folder


def data_cfg(corpus_dir, tmp_path, **kw) -> DataConfig:
    base = dict(
        sources=[SourceConfig(files=str(corpus_dir))], seq_len=32, cache_dir=str(tmp_path / "cache"),
        validation_fraction=0.1, tokenizer=TokenizerConfig(vocab_size=400), num_proc=1,
    )  # fmt: skip
    cfg = DataConfig(**{**base, **kw})
    cfg.validate()
    return cfg


@pytest.fixture(scope="session")
def bpe(corpus_dir, tmp_path_factory):
    from pretrain.data.sources import load_corpus
    from pretrain.data.tokenizer import train_tokenizer

    cfg = data_cfg(corpus_dir, tmp_path_factory.mktemp("tok"))
    return train_tokenizer(load_corpus(cfg, "train"), "decoder", cfg.tokenizer, 400)


@pytest.fixture(scope="session")
def wordpiece(corpus_dir, tmp_path_factory):
    from pretrain.data.sources import load_corpus
    from pretrain.data.tokenizer import train_tokenizer

    cfg = data_cfg(corpus_dir, tmp_path_factory.mktemp("tok"))
    return train_tokenizer(load_corpus(cfg, "train"), "encoder", cfg.tokenizer, 400)


def finetune_task(kind: str, *sources, fraction: float = 0.0, **options):
    """A fine-tuning config of ``kind`` over local ``sources`` (no checkpoint is read), with task
    ``options`` given as on a command line (lists as JSON)."""
    import json

    from finetune.config import load_finetune_config

    options = {"kind": kind, **options}
    overrides = [f"task.{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in options.items()]
    return load_finetune_config(None, ["init_from=somewhere", *overrides, f"data.validation_fraction={fraction}",
                                       f"data.sources={json.dumps([{'files': str(s)} for s in sources])}"])  # fmt: skip


def jsonl(path, rows):
    """``rows`` written as JSON lines at ``path``."""
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path

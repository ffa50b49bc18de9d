"""The data section of a run config: sources, tokenizer, packing and batching. No torch here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

BUILTIN_CORPORA = ("python-stdlib",)


@dataclass
class SourceConfig:
    """One corpus. Give exactly one of ``builtin``, ``files`` or ``hub``."""

    builtin: Literal["python-stdlib"] | None = None
    """python-stdlib: the source files of the running interpreter's standard library (no download)."""
    files: list[str] | str | None = None
    """Local file(s): a path, a glob or a directory; .txt (one document per file), .json/.jsonl,
    .csv, .parquet."""
    hub: str | None = None
    """A dataset id on the HF hub (needs network the first time; then datasets' cache)."""
    hub_config: str | None = None
    """The dataset's configuration name on the hub (e.g. sample-10BT), if it has several."""
    split: str = "train"
    """The split training reads."""
    validation_split: str | None = None
    """A named validation split; None holds out data.validation_fraction of the documents."""
    text_column: str = "text"
    """The column holding the text (json, jsonl, csv, parquet and hub data)."""
    weight: float = 1.0
    """Relative share of documents when several sources are mixed."""

    def validate(self) -> None:
        given = [k for k in ("builtin", "files", "hub") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                f"builtin/files/hub: give exactly one; got {given or 'none'} "
                f"(e.g. {{builtin: python-stdlib}}, {{files: 'data/*.jsonl'}}, {{hub: wikitext}})"
            )
        if self.weight <= 0:
            raise ValueError(f"weight={self.weight}: must be > 0")


@dataclass
class TokenizerConfig:
    path: str | None = None
    """A tokenizer.json or an HF tokenizer directory to load; None trains one on the training data."""
    kind: Literal["bpe", "wordpiece", "unigram"] | None = None
    """What to train: None picks byte-level BPE for decoders and WordPiece for encoders."""
    vocab_size: int | None = None
    """Size to train to; None uses model.vocab_size."""
    max_documents: int | None = None
    """Train on at most this many documents (None: all)."""

    def validate(self) -> None:
        if self.vocab_size is not None and self.vocab_size < 64:
            raise ValueError(f"vocab_size={self.vocab_size}: must be >= 64 (room for bytes and specials)")


@dataclass
class DataConfig:
    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig(builtin="python-stdlib")])
    """Where the text comes from; several are mixed by weight."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """Load a tokenizer or train one on the training data."""
    seq_len: int = 256
    """Tokens in one training sequence."""
    validation_fraction: float = 0.01
    """Share of documents held out for validation where a source names no validation split; chosen
    by a hash of each document's text, so the same documents are held out on every run."""
    cache_dir: str = "data_cache"
    """Packed token shards, one folder per fingerprint of (sources, tokenizer, seq_len, split)."""
    num_proc: int = 2
    """Processes that tokenize in parallel."""
    num_workers: int = 0
    """DataLoader worker processes per rank."""
    document_mask: bool = False
    """Limit attention to one document inside each packed sequence."""
    mlm_probability: float = 0.15
    """Encoders: share of tokens selected for masked-LM prediction."""
    shuffle: bool = True
    """Shuffle sequences each epoch (seeded: the same order on every run and resume)."""

    def validate(self) -> None:
        if self.seq_len < 2:
            raise ValueError(f"seq_len={self.seq_len}: must be >= 2")
        if not self.sources:
            raise ValueError("sources=[]: give at least one source, e.g. [{builtin: python-stdlib}]")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction={self.validation_fraction}: must be in [0, 1)")
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"mlm_probability={self.mlm_probability}: must be in (0, 1)")
        if self.num_proc < 1 or self.num_workers < 0:
            raise ValueError(f"num_proc={self.num_proc}, num_workers={self.num_workers}: need >= 1 and >= 0")

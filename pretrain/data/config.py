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
    """Local file(s): a path, a glob or a directory (its files of the kinds below, hidden ones left
    out); .txt/.md/.py (text, see sample_by), .json/.jsonl, .csv/.tsv (see delimiter, header),
    .parquet, .arrow (a folder written by datasets' save_to_disk is read as its Arrow files),
    .conll/.conllu (tagging data, a word a line); text, json, csv and conll also compressed (.gz,
    .bz2, .xz, .zst). Files of one kind may mix suffixes (.md
    with .txt); other names are read with ``kind``."""
    validation_files: list[str] | str | None = None
    """Local files (path, glob or directory) holding this source's validation data; when given,
    nothing is held out of ``files``."""
    test_files: list[str] | str | None = None
    """Local files with labeled test data (fine-tuning): never read in training;
    `python -m finetune.evaluate RUN --split test` scores them."""
    kind: Literal["text", "json", "csv", "parquet", "arrow", "conll", "conllu"] | None = None
    """Local files: read every file as this kind whatever its name (source code such as .c, .rs or
    .js as text, a .log as text, a .ndjson as json, CoNLL-2003's eng.train as conll); a directory
    then gives all its files (hidden ones left out). None: each file's kind from its suffix (see
    files). conll and conllu (word-per-line tagging data) are read as pretrain.data.conll says."""
    hub: str | None = None
    """A dataset id on the HF hub (needs network the first time; then datasets' cache)."""
    hub_config: str | None = None
    """The dataset's configuration name on the hub (e.g. sample-10BT), if it has several."""
    split: str = "train"
    """The hub split training reads."""
    validation_split: str | None = None
    """A named hub split for validation; None holds out data.validation_fraction (local files:
    use validation_files)."""
    test_split: str | None = None
    """A named hub split for test data (fine-tuning; like test_files)."""
    text_column: str = "text"
    """The column holding the text (json, jsonl, csv, tsv, parquet and hub data)."""
    field: str | None = None
    """json: the key of a JSON document whose list holds the records (``{"data": [{...}, ...]}``);
    None: the file is the records (a list of objects, or one object per line)."""
    sample_by: Literal["document", "paragraph", "line"] = "document"
    """Text files: one example per file, per blank-line-separated paragraph, or per line."""
    chunk_chars: int | None = None
    """Cut texts longer than this many characters into pieces at line breaks (one big file becomes
    many documents for the hold-out, shuffling and document masks); None keeps texts whole."""
    delimiter: str | None = None
    """csv/tsv: the field separator; None: ',' for .csv, a tab for .tsv."""
    header: bool = True
    """csv/tsv: the first line names the columns; false: it is data, and column_names names them."""
    column_names: list[str] | None = None
    """csv/tsv: the columns' names, in order (required with header: false; with a header they
    replace its names)."""
    quotechar: str = '"'
    """csv/tsv: the character that quotes a field holding the delimiter or a line break."""
    quoting: Literal["minimal", "all", "nonnumeric", "none"] = "minimal"
    """csv/tsv: Python csv quoting; none reads quote characters as text (common for raw TSV)."""
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
        for name in ("validation_split", "test_split"):
            if getattr(self, name) and not self.hub:
                files = name.replace("split", "files")
                raise ValueError(f"{name}={getattr(self, name)!r}: only hub datasets have named splits; for local "
                                 f"files give {files} (a path, glob or directory)")  # fmt: skip
        for name in ("validation_files", "test_files"):
            if getattr(self, name) and not self.files:
                raise ValueError(f"{name}: goes with files (local training files); for hub data use "
                                 f"{name.replace('files', 'split')}")  # fmt: skip
        if self.kind and not self.files:
            raise ValueError(f"kind={self.kind}: says how to read local files (files:); hub data has its own format")
        if not self.header and not self.column_names:
            raise ValueError("header=false: give column_names, e.g. [text, label], so the columns can be named")
        if self.delimiter is not None and len(self.delimiter) != 1:
            raise ValueError(f"delimiter={self.delimiter!r}: must be one character, e.g. ',' or a tab")
        if len(self.quotechar) != 1:
            raise ValueError(f"quotechar={self.quotechar!r}: must be one character")
        if self.chunk_chars is not None and self.chunk_chars < 64:
            raise ValueError(f"chunk_chars={self.chunk_chars}: must be >= 64 (or null to keep texts whole)")

    def local_parts(self) -> list[str]:
        """The parts (train, validation, test) this source reads from local files."""
        if not self.files:
            return []
        return ["train"] + [part for part in ("validation", "test") if getattr(self, f"{part}_files")]

    def names(self, part: str) -> bool:
        """Whether this source names its own data for ``part`` (train, validation or test)."""
        if part == "train":
            return True
        return bool(getattr(self, f"{part}_files") or getattr(self, f"{part}_split"))


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
    """Share held out for validation where a source names no validation data: the documents chosen
    by a hash of their text (the same on every run), or, where that would hold out almost nothing
    (a few long documents), the last part of the text. 0: no hold-out (no evaluation without
    validation data)."""
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
    objective: Literal["span_corruption", "text_infilling"] = "span_corruption"
    """Encoder-decoders: span_corruption (T5: each corrupted span becomes a sentinel, and the decoder
    predicts the spans behind their sentinels) or text_infilling (BART: each span becomes one <mask>,
    and the decoder predicts the whole sequence)."""
    noise_density: float = 0.15
    """Encoder-decoders: share of each sequence's tokens in the corrupted spans (T5 0.15, BART 0.3)."""
    mean_noise_span_length: float = 3.0
    """Encoder-decoders: mean length in tokens of a corrupted span (T5 and BART: 3)."""
    span_lengths: Literal["split", "poisson"] = "split"
    """Encoder-decoders: how the corrupted spans get their lengths. split (T5): the noise tokens
    split at random into round(noise / mean_noise_span_length) spans of at least one token, so every
    batch has the same shapes. poisson (BART's text infilling only): lengths drawn from
    Poisson(mean_noise_span_length) until the noise tokens are covered, a length of 0 inserting a
    <mask> where no token was; the encoder's inputs then differ in length and are padded."""
    permute_sentences: bool = False
    """Text infilling: shuffle the sentences of each sequence in the encoder's input before its spans
    are masked, as BART does (a sentence ends after a token ending in '.', '!', '?' or a newline, so
    code's lines are its sentences); the decoder still writes them in their order."""
    shuffle: bool = True
    """Shuffle sequences each epoch (seeded: the same order on every run and resume)."""

    def has_validation(self) -> bool:
        """Whether any validation data exists: a held-out share, or a source with its own."""
        return self.validation_fraction > 0 or any(s.names("validation") for s in self.sources)

    def validate(self) -> None:
        if self.seq_len < 2:
            raise ValueError(f"seq_len={self.seq_len}: must be >= 2")
        if not self.sources:
            raise ValueError("sources=[]: give at least one source, e.g. [{builtin: python-stdlib}]")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction={self.validation_fraction}: must be in [0, 1)")
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"mlm_probability={self.mlm_probability}: must be in (0, 1)")
        if not 0.0 < self.noise_density < 1.0 or self.mean_noise_span_length < 1.0:
            raise ValueError(f"noise_density={self.noise_density}, mean_noise_span_length="
                             f"{self.mean_noise_span_length}: need a density in (0, 1) and a span length >= 1")
        if self.permute_sentences and self.objective != "text_infilling":
            raise ValueError(f"permute_sentences=true is BART's text infilling noise; objective={self.objective!r} "
                             "does not take it (use objective=text_infilling)")  # fmt: skip
        if self.span_lengths == "poisson" and self.objective != "text_infilling":
            raise ValueError(f"span_lengths='poisson' is BART's text infilling; objective={self.objective!r} "
                             "numbers its spans with sentinels (use span_lengths=split, or "
                             "objective=text_infilling)")  # fmt: skip
        if self.num_proc < 1 or self.num_workers < 0:
            raise ValueError(f"num_proc={self.num_proc}, num_workers={self.num_workers}: need >= 1 and >= 0")

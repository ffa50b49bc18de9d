"""Text corpora through HF datasets: a hub dataset, local files, the built-in corpus, or a weighted
mix of them, each reduced to one ``text`` column, with a deterministic validation hold-out."""

from __future__ import annotations

import glob
import hashlib
import os
import sysconfig
from pathlib import Path

from pretrain.data.config import DataConfig, SourceConfig
from pretrain.errors import ConfigError

BUILDERS = {".txt": "text", ".md": "text", ".py": "text", ".json": "json", ".jsonl": "json", ".csv": "csv",
            ".parquet": "parquet"}  # fmt: skip


class DataError(ConfigError):
    """Bad data input: names what was given and what was expected."""


def stdlib_files() -> list[str]:
    """The running interpreter's standard-library sources: real text on every machine with Python."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "__pycache__"}
    return sorted(str(p) for p in root.rglob("*.py") if not skip & set(p.parts))


def resolve_files(spec: list[str] | str, where: str) -> list[str]:
    """Paths, globs and directories -> a sorted list of files; a pattern matching nothing is an error."""
    out: list[str] = []
    for pattern in [spec] if isinstance(spec, str) else spec:
        if os.path.isdir(pattern):
            found = [str(p) for p in Path(pattern).rglob("*") if p.is_file() and p.suffix in BUILDERS]
        else:
            found = [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
        if not found:
            raise DataError(f"{where}.files: nothing matches {pattern!r} (give a file, a glob or a directory)")
        out += found
    return sorted(set(out))


def file_stats(files: list[str]) -> list[tuple[str, int, int]]:
    """What identifies local files for caching: path, size, modification time."""
    return [(f, os.path.getsize(f), int(os.path.getmtime(f))) for f in files]


def source_files(src: SourceConfig, where: str) -> list[str]:
    if src.builtin == "python-stdlib":
        return stdlib_files()
    if src.files:
        return resolve_files(src.files, where)
    return []


def load_table(src: SourceConfig, split: str, where: str):
    """One source's split as a datasets.Dataset with all its columns."""
    import datasets

    datasets.disable_progress_bars()
    if src.builtin == "python-stdlib":
        # Some stdlib test files are Latin-1 on purpose; replace the odd byte rather than fail.
        return datasets.load_dataset(
            "text", data_files=stdlib_files(), sample_by="document", split="train", encoding_errors="replace"
        )
    if src.files:
        files = resolve_files(src.files, where)
        kinds = {BUILDERS.get(Path(f).suffix) for f in files}
        if None in kinds or len(kinds) > 1:
            raise DataError(
                f"{where}.files: found {sorted({Path(f).suffix for f in files})}; one source takes files of one "
                f"kind among {sorted(BUILDERS)}"
            )
        builder = kinds.pop()
        if builder != "parquet":  # datasets takes bad bytes into Arrow strings and fails far later
            bad = _bad_text_file(files)
            if bad:
                raise DataError(f"{where}.files: {bad}")
        extra = {"sample_by": "document"} if builder == "text" else {}
        try:
            return datasets.load_dataset(builder, data_files={split: files}, split=split, **extra)
        except Exception as e:  # noqa: BLE001 - datasets raises many kinds; find the file and say why
            raise DataError(f"{where}.files: {_unreadable(files, builder, e)}") from None
    try:
        return datasets.load_dataset(src.hub, src.hub_config, split=split)
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds; all mean the same to a user
        raise DataError(
            f"{where}.hub: could not load {src.hub!r} (config {src.hub_config}, split {split}): {e}"
        ) from None


def _unreadable(files: list[str], builder: str, error: Exception) -> str:
    """Why ``files`` could not be read as ``builder``, naming the first bad file where one stands out."""
    bad = _bad_text_file(files)
    if bad:
        return bad
    cause = error.__cause__ or error
    return f"could not read {files[0] if len(files) == 1 else f'{len(files)} files'} as {builder}: " + \
        f"{type(cause).__name__}: {str(cause).splitlines()[0][:300] if str(cause) else ''}"


def _bad_text_file(files: list[str]) -> str | None:
    """The first file that is empty or not UTF-8, said in words; None when all are fine."""
    import codecs

    for f in files:
        if os.path.getsize(f) == 0:
            return f"{f} is empty"
        decoder = codecs.getincrementaldecoder("utf-8")()
        offset = 0
        with open(f, "rb") as fh:
            while True:
                block = fh.read(1 << 20)
                try:
                    decoder.decode(block, final=not block)
                except UnicodeDecodeError as u:
                    at = offset + u.start - len(decoder.getstate()[0]) if block else os.path.getsize(f) - len(u.object)
                    return f"{f} is not UTF-8 text (byte {max(at, 0)}); convert it, e.g. iconv -f latin1 -t utf-8"
                if not block:
                    break
                offset += len(block)
    return None


def require_columns(ds, columns: dict[str, str], where: str) -> None:
    """columns: config field -> column name; a missing one is named with what the data has."""
    for field_name, column in columns.items():
        if column not in ds.column_names:
            raise DataError(f"{where}.{field_name}={column!r}: no such column; the data has {ds.column_names}")


def load_source(src: SourceConfig, split: str, where: str, num_proc: int = 1):
    """One source's split as a datasets.Dataset with the single column ``text``."""
    ds = load_table(src, split, where)
    require_columns(ds, {"text_column": src.text_column}, where)
    kind = getattr(ds.features[src.text_column], "dtype", None)
    if kind not in ("string", "large_string"):
        raise DataError(f"{where}.text_column={src.text_column!r}: holds {kind or ds.features[src.text_column]} "
                        f"values, not text; name a text column among {ds.column_names}")  # fmt: skip
    ds = ds.select_columns([src.text_column])
    if src.text_column != "text":
        ds = ds.rename_column(src.text_column, "text")
    return ds.filter(lambda t: bool(t and t.strip()), input_columns="text", num_proc=_procs(num_proc, ds))


def held_out(text: str, fraction: float) -> bool:
    """True for the documents in the validation share: decided by the text alone, so stable across
    runs, machines and source order."""
    h = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=8).digest(), "big")
    return h / 2**64 < fraction


class HoldOut:
    """Picklable filter for datasets' worker processes: keep the held-out share or the rest."""

    def __init__(self, fraction: float, keep_held_out: bool):
        self.fraction, self.keep_held_out = fraction, keep_held_out

    def __call__(self, text: str) -> bool:
        return held_out(text, self.fraction) == self.keep_held_out


def load_corpus(cfg: DataConfig, split: str, seed: int = 0):
    """The ``train`` or ``validation`` text of all sources, mixed by weight."""
    import datasets

    if split not in ("train", "validation"):
        raise ValueError(f"split={split!r}: use 'train' or 'validation'")
    parts = []
    for i, src in enumerate(cfg.sources):
        where = f"data.sources[{i}]"
        if src.validation_split and src.files:
            raise DataError(f"{where}.validation_split: local files have no named splits; use data.validation_fraction")
        if split == "validation" and src.validation_split:
            ds = load_source(src, src.validation_split, where, cfg.num_proc)
        else:
            ds = load_source(src, src.split, where, cfg.num_proc)
            if not src.validation_split and cfg.validation_fraction > 0:
                ds = ds.filter(
                    HoldOut(cfg.validation_fraction, split == "validation"),
                    input_columns="text",
                    num_proc=_procs(cfg.num_proc, ds),
                )
        if len(ds) == 0:
            raise DataError(f"{where}: the {split} split has no non-empty documents ({_describe(src)})")
        parts.append(ds)
    if len(parts) == 1:
        return parts[0]
    total = sum(s.weight for s in cfg.sources)
    return datasets.interleave_datasets(
        parts,
        probabilities=[s.weight / total for s in cfg.sources],
        seed=seed,
        stopping_strategy="all_exhausted",
    )


def _procs(num_proc: int, ds) -> int | None:
    n = min(num_proc, max(1, len(ds) // 64))
    return n if n > 1 else None


def _describe(src: SourceConfig) -> str:
    return src.builtin or (f"files {src.files}" if src.files else f"hub {src.hub}")

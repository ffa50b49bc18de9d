"""Text corpora through HF datasets: a hub dataset, local files, the built-in corpus, or a weighted
mix of them, each reduced to one ``text`` column, with a deterministic validation hold-out."""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import os
import sys
import sysconfig
from collections import Counter
from pathlib import Path

import numpy as np

from pretrain.data.config import DataConfig, SourceConfig
from pretrain.errors import ConfigError

BUILDERS = {".txt": "text", ".md": "text", ".py": "text", ".json": "json", ".jsonl": "json", ".csv": "csv",
            ".tsv": "csv", ".parquet": "parquet", ".arrow": "arrow",
            ".conll": "conll", ".conllu": "conllu"}  # fmt: skip
COMPRESSED = {".gz": "gzip", ".bz2": "bz2", ".xz": "lzma", ".zst": "zstandard"}
"""Compression a text, json or csv file may have (data.jsonl.gz, as C4 ships), read by datasets as
it reads; the module that opens it here."""
QUOTING = {"minimal": 0, "all": 1, "nonnumeric": 2, "none": 3}  # Python's csv.QUOTE_* values
CHECKS = 2
"""The version of what check_local_sources looks at: a release that checks more raises it, so the
notes of files that passed an earlier release's checks are not taken for its own."""


class DataError(ConfigError):
    """Bad data input: names what was given and what was expected."""


def stdlib_files() -> list[str]:
    """The running interpreter's standard-library sources: real text on every machine with Python."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "__pycache__"}
    return sorted(str(p) for p in root.rglob("*.py") if not skip & set(p.parts))


def resolve_files(spec: list[str] | str, where: str, kind: str | None = None) -> list[str]:
    """Paths, globs and directories -> a sorted list of files; a pattern matching nothing is an
    error. A directory gives its files, hidden ones (and those under hidden folders, such as .git)
    left out: those of a kind read by suffix, or all of them when the source names its ``kind``."""
    out: list[str] = []
    for pattern in [spec] if isinstance(spec, str) else spec:
        folder = Path(pattern)
        if (folder / "dataset_dict.json").is_file():
            splits = sorted(p.name for p in folder.iterdir() if (p / "state.json").is_file())
            raise DataError(f"{where}: {pattern} is a DatasetDict written by save_to_disk (splits {splits}); name a "
                            f"split's folder, e.g. files: {folder / 'train'}, validation_files: "
                            f"{folder / 'validation'}")  # fmt: skip
        if (folder / "state.json").is_file():  # a Dataset written by save_to_disk: its Arrow files, not its metadata
            found = sorted(str(p) for p in folder.glob("*.arrow"))
        elif folder.is_dir():
            inside = [p for p in folder.rglob("*") if p.is_file() and not any(
                part.startswith(".") for part in p.relative_to(folder).parts)]  # fmt: skip
            found = [str(p) for p in inside if kind or kind_suffix(p) in BUILDERS]
            if inside and not found:
                counts = Counter(kind_suffix(p) or "(none)" for p in inside)
                said = ", ".join(f"{n} {x}" for x, n in sorted(counts.items(), key=lambda c: (-c[1], c[0]))[:5])
                raise DataError(f"{where}: {pattern} holds {len(inside)} file(s), none named as a kind read by its "
                                f"suffix ({said}); give kind: text to read them as text (source code, say), or "
                                f"another kind")  # fmt: skip
        elif os.path.isfile(pattern):  # a file's own name, even one that reads as a glob ("notes [1].txt")
            found = [pattern]
        else:
            found = [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
        if not found and os.path.islink(pattern):
            raise DataError(f"{where}: {pattern} is a symbolic link to {os.readlink(pattern)!r}, which does not "
                            "exist")  # fmt: skip
        if not found:
            raise DataError(f"{where}: nothing matches {pattern!r} (give a file, a glob or a directory)")
        out += found
    return sorted(set(out))


def kind_suffix(path: str | Path) -> str:
    """The suffix that says a file's format: its last, or the one before a compression suffix
    (``c4-train.00000-of-01024.json.gz`` -> ``.json``)."""
    suffixes = Path(path).suffixes
    if len(suffixes) > 1 and suffixes[-1] in COMPRESSED:
        return suffixes[-2]
    return suffixes[-1] if suffixes else ""


def open_bytes(path: str | Path):
    """A file's bytes, decompressed when its name says it is compressed."""
    compression = Path(path).suffix
    if compression not in COMPRESSED or kind_suffix(path) == compression:
        return open(path, "rb")
    import importlib

    try:
        module = importlib.import_module(COMPRESSED[compression])
    except ImportError:
        raise DataError(f"{path}: reading {compression} files needs the {COMPRESSED[compression]} package "
                        f"(pip install {COMPRESSED[compression]}), or decompress it") from None  # fmt: skip
    return module.open(path, "rb")


def open_text(path: str | Path):
    """A file's text (UTF-8, a byte-order mark dropped), decompressed when its name says so."""
    import io

    return io.TextIOWrapper(open_bytes(path), encoding="utf-8-sig")


def file_stats(files: list[str]) -> list[tuple[str, int, int]]:
    """What identifies local files for caching: path, size, modification time."""
    return [(f, os.path.getsize(f), int(os.path.getmtime(f))) for f in files]


def source_files(src: SourceConfig, where: str) -> list[str]:
    """Every local file a source reads (its training, validation and test files)."""
    if src.builtin == "python-stdlib":
        return stdlib_files()
    out = []
    for part in src.local_parts():
        field = "files" if part == "train" else f"{part}_files"
        out += resolve_files(getattr(src, field), f"{where}.{field}", src.kind)
    return out


def load_table(src: SourceConfig, part: str, where: str):
    """One source's ``part`` (train, validation or test: its files or hub split) as a
    datasets.Dataset with all its columns."""
    import datasets

    datasets.disable_progress_bars()
    if src.builtin == "python-stdlib":
        # Some stdlib test files are Latin-1 on purpose; replace the odd byte rather than fail.
        return _load_dataset(
            where, "text", data_files=stdlib_files(), sample_by="document", split="train", encoding_errors="replace"
        )
    if src.files:
        field = "files" if part == "train" else f"{part}_files"
        return _load_files(src, resolve_files(getattr(src, field), f"{where}.{field}", src.kind), f"{where}.{field}")
    split = src.split if part == "train" else getattr(src, f"{part}_split")
    try:
        return datasets.load_dataset(src.hub, src.hub_config, split=split)
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds; all mean the same to a user
        raise DataError(
            f"{where}.hub: could not load {src.hub!r} (config {src.hub_config}, split {split}): {e}"
        ) from None


def _load_dataset(where: str, *args, **kwargs):
    """datasets.load_dataset of local files; where datasets' own cache of them does not read (an
    Arrow file of it cut short or changed: the error would blame the files), once more rebuilding
    that cache from the files. An error in reading the files themselves (datasets'
    DatasetGenerationError), or files that fail again, raise the first error, which is about them.
    (Not for hub datasets: rebuilding is a download, and their usual failure is the network.)"""
    import datasets

    try:
        return datasets.load_dataset(*args, **kwargs)
    except datasets.exceptions.DatasetGenerationError:
        raise
    except Exception as e:  # noqa: BLE001 - which errors a damaged cache gives is datasets' business
        first = e
    try:
        ds = datasets.load_dataset(*args, **kwargs, download_mode="force_redownload")
    except Exception:  # noqa: BLE001 - the files themselves: the first error (and its cause) says why
        raise first  # noqa: B904
    cause = first.__cause__ or first
    print(f"warning: {where}: datasets' cache of it (under {datasets.config.HF_DATASETS_CACHE}) did not read "
          f"({type(cause).__name__}: {str(cause).splitlines()[0][:200] if str(cause) else ''}); rebuilt it from "
          "the files", file=sys.stderr)  # fmt: skip
    return ds


def builder_options(src: SourceConfig, builder: str, suffix: str) -> dict:
    """What datasets' text, json or csv ``builder`` is told about a source's files (the config's
    options); ``suffix``: their kind_suffix."""
    if builder == "text":  # a byte-order mark (Windows editors write one) is not text
        return {"sample_by": src.sample_by, "encoding": "utf-8-sig"}
    if builder == "json":
        return {"field": src.field} if src.field else {}
    if builder == "csv":
        return {"delimiter": src.delimiter or ("\t" if suffix == ".tsv" else ","),
                "header": 0 if src.header else None, "column_names": src.column_names,
                "quotechar": src.quotechar, "quoting": QUOTING[src.quoting],
                "na_filter": False}  # text such as "NA" or "null" stays text  # fmt: skip
    return {}


def _load_files(src: SourceConfig, files: list[str], where: str):
    suffixes = {kind_suffix(f) for f in files}
    kinds = {src.kind} if src.kind else {BUILDERS.get(x) for x in suffixes}
    if None in kinds or len(kinds) > 1:
        bare = sorted(Path(f).name for f in files if not kind_suffix(f))  # a README, a LICENSE: named, not ''
        found = sorted(suffixes - {""}) + ([f"{bare[0]} (no suffix)"] if bare else [])
        raise DataError(f"{where}: found {found}; one source takes files of one kind: text (.txt, .md, "
                        f".py), json (.json, .jsonl), csv (.csv, .tsv), .parquet, .arrow, .conll or .conllu (text, "
                        f"json, csv and conll also as {', '.join(COMPRESSED)}); kind: text reads files of any name as "
                        "text")  # fmt: skip
    builder = kinds.pop()
    if builder == "csv" and len(suffixes) > 1 and src.delimiter is None:
        raise DataError(f"{where}: found {sorted(suffixes)}: .csv files are read with ',' and .tsv files with a "
                        "tab; give delimiter, or one source each")  # fmt: skip
    suffix = suffixes.pop() if len(suffixes) == 1 else ""
    squeezed = sorted({f for f in files if Path(f).suffix in COMPRESSED})
    if builder in ("parquet", "arrow") and squeezed:
        raise DataError(f"{where}: {squeezed[0]}: {builder} files are read as they are; decompress it")
    if src.field and builder != "json":
        raise DataError(f"{where}: field={src.field!r} picks the records out of a JSON document; "
                        f"these are {suffix or builder} files")  # fmt: skip
    if builder not in ("parquet", "arrow"):  # datasets takes bad bytes into Arrow strings and fails far later
        bad = _bad_text_file(files)
        if bad:
            raise DataError(f"{where}: {bad}")
    if builder in ("conll", "conllu"):
        from pretrain.data.conll import read_conll

        return read_conll(files, builder, where)
    if builder == "json" and not src.field and suffix == ".json":
        from pretrain.data.squad import is_squad, read_squad

        squad = [f for f in files if is_squad(f)]
        if squad and len(squad) < len(files):
            raise DataError(f"{where}: {squad[0]} holds SQuAD's articles and {sorted(set(files) - set(squad))[0]} "
                            "does not; give them as two sources")  # fmt: skip
        if squad:
            return read_squad(files, where)
    quiet = logging.getLogger(f"datasets.packaged_modules.{builder}.{builder}")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # its "Failed to load ..." line would come before ours
    escaped = [glob.escape(f) for f in files]  # datasets takes each name as a pattern ("notes [1].txt")
    try:
        return _load_dataset(where, builder, data_files={"train": escaped}, split="train",
                             **builder_options(src, builder, suffix))  # fmt: skip
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds; find the file and say why
        raise DataError(f"{where}: {_unreadable(files, builder, e, src.field)}") from None
    finally:
        quiet.setLevel(level)


def _unreadable(files: list[str], builder: str, error: Exception, field: str | None = None) -> str:
    """Why ``files`` could not be read as ``builder``, naming the first bad file (and line) where
    one stands out."""
    bad = _bad_text_file(files) or (_bad_json(files, field) if builder == "json" else None)
    if bad:
        return bad
    cause = error.__cause__ or error
    if "corresponds to no data" in str(cause):  # datasets' words for a split without a row
        lines = " (a csv or tsv file with its header line alone)" if builder == "csv" else ""
        return f"{files[0] if len(files) == 1 else f'{len(files)} files'}: no examples in it{lines}; give examples"
    return f"could not read {files[0] if len(files) == 1 else f'{len(files)} files'} as {builder}: " + \
        f"{type(cause).__name__}: {str(cause).splitlines()[0][:300] if str(cause) else ''}"


def _bad_text_file(files: list[str]) -> str | None:
    """The first file that is empty, not UTF-8 or (compressed) cannot be decompressed, said in
    words; None when all are fine."""
    import codecs

    for f in files:
        decoder = codecs.getincrementaldecoder("utf-8")()
        offset = 0
        unpacked = " once decompressed" if kind_suffix(f) != Path(f).suffix else ""
        try:
            fh = open_bytes(f)
        except DataError as e:
            return str(e)
        try:
            with fh:
                while True:
                    block = fh.read(1 << 20)
                    if not block and not offset:
                        return f"{f} is empty{unpacked}"
                    if not offset and (encoding := _other_unicode(block)):
                        return f"{f} is {encoding} text, not UTF-8; convert it, e.g. iconv -f {encoding} -t utf-8"
                    try:
                        decoder.decode(block, final=not block)
                    except UnicodeDecodeError as u:
                        at = offset + u.start - len(decoder.getstate()[0]) if block else offset - len(u.object)
                        return (f"{f} is not UTF-8 text (byte {max(at, 0)}{unpacked}); convert it, "
                                "e.g. iconv -f latin1 -t utf-8")  # fmt: skip
                    if not block:
                        break
                    offset += len(block)
        except (OSError, EOFError, ValueError) as e:  # a truncated or corrupt archive (gzip, bz2, lzma, zstd)
            if not unpacked:
                return f"{f} cannot be read ({type(e).__name__}: {e})"
            return f"{f} cannot be decompressed ({type(e).__name__}: {e or 'it ends early'}): truncated or corrupt?"
    return None


def _bad_json(files: list[str], field: str | None) -> str | None:
    """The first file that is not JSON records, with the line that is not: one JSON document (a
    list of objects, or an object whose ``field`` holds one) or one object per line."""
    for f in files:
        with open_text(f) as fh:
            head = fh.read(1 << 16)
        if field or head.lstrip().startswith("["):  # one document
            with open_text(f) as fh:
                try:
                    doc = json.load(fh)
                except json.JSONDecodeError as e:
                    return f"{f} is not JSON: line {e.lineno} column {e.colno}: {e.msg}"
            if field:
                if not isinstance(doc, dict) or field not in doc:
                    keys = sorted(doc) if isinstance(doc, dict) else f"a {type(doc).__name__}"
                    return f"{f}: field={field!r} is not a key of the document (it has {keys})"
                doc = doc[field]
            rows, what = enumerate(doc if isinstance(doc, list) else [doc], 1), "record"
        else:
            rows, what = _json_lines(f), "line"
        for number, row in rows:
            if isinstance(row, json.JSONDecodeError):
                return f"{f} line {number} is not JSON (column {row.colno}: {row.msg})"
            if not isinstance(row, dict):
                return f"{f} {what} {number} is a JSON {type(row).__name__}, not an object of named fields"
    return None


def _json_lines(f: str):
    """(line number, the line's value or its JSONDecodeError) for each non-blank line."""
    with open_text(f) as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as e:
                    yield number, e


def _other_unicode(head: bytes) -> str | None:
    """UTF-16 or UTF-32, by the byte-order mark they start with."""
    if head.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        return "utf-32"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    return None


def require_columns(ds, columns: dict[str, str], where: str, source: str = "") -> None:
    """columns: config field -> column name; a missing one is named with what the data has (and,
    given ``source``, where the data came from)."""
    for field_name, column in columns.items():
        if column not in ds.column_names:
            only = ds.column_names[0] if len(ds.column_names) == 1 else None
            nested = (f": the records are a list under {only!r} (one JSON document); read them with field: {only}"
                      if only and _is_list(ds.features[only]) else "")  # fmt: skip
            raise DataError(f"{where}.{field_name}={column!r}: no such column{' in ' + source if source else ''}; "
                            f"the data has {ds.column_names}{nested}")  # fmt: skip


def text_table(src: SourceConfig, part: str, where: str):
    """One source's ``part`` with its text column checked: there, and holding text."""
    ds = load_table(src, part, where)
    require_columns(ds, {"text_column": src.text_column}, where)
    feature = ds.features[src.text_column]
    kind = getattr(feature, "dtype", None)
    if kind not in ("string", "large_string"):  # mixed kinds (datasets' Json feature): show one
        what = (f"{kind} values" if kind else "lists" if _is_list(feature) else "values of mixed kinds")
        columns = len(ds) == 1 and all(_is_list(f) for f in ds.features.values())
        hint = ("; the file is one JSON object of columns (as json.dump(Dataset.to_dict()) writes it), which reads "
                "as one record: write a record a line (Dataset.to_json) or a list of records" if columns else "")
        raise DataError(f"{where}.text_column={src.text_column!r}: holds {what}{_first_not_text(ds, src.text_column)}, "
                        f"not text; name a text column among {ds.column_names}{hint}")  # fmt: skip
    if not _has_text(ds, src.text_column):  # found here, in the preflight, rather than in every rank
        raise DataError(f"{where}: the {part} data has no non-empty documents ({_describe(src, part)})")
    return ds


def _has_text(ds, column: str) -> bool:
    """Whether any value of ``column`` holds more than whitespace; reads only as far as the first."""
    import pyarrow.compute as pc

    for batch in ds.with_format("arrow").iter(batch_size=10_000):
        if pc.any(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(batch[column])), 0)).as_py():
            return True
    return False


def _is_list(feature) -> bool:
    import datasets

    return isinstance(feature, (list, datasets.Sequence))


def column_values(ds, column: str) -> list:
    """Every value of ``column`` of a datasets table, as one list read in one batch. Iterating
    ``ds[column]`` itself (datasets' lazy Column) formats the examples one at a time: 2.9 s against
    0.02 s for 200,000 labels here."""
    return ds[column][:]


def column_texts(ds, column: str) -> list[str]:
    """``column_values`` as text (a number read as its digits)."""
    return [str(x) for x in column_values(ds, column)]


def first_value(ds, column: str, unfit) -> tuple[int, object] | None:
    """(index, value) of the first value of ``column`` for which ``unfit(value)`` holds, among the
    first 100,000 examples; None when there is none (a column's type says too little: datasets'
    Json feature for values of mixed kinds, a float column of labels)."""
    head = column_values(ds.select(range(min(len(ds), 100_000))), column)
    return next(((i, v) for i, v in enumerate(head) if unfit(v)), None)


def _first_not_text(ds, column: str) -> str:
    """' (example N: VALUE)' for the first value of ``column`` that is neither text nor missing."""
    found = first_value(ds, column, lambda v: v is not None and not isinstance(v, str))
    return f" (example {found[0]}: {type(found[1]).__name__} {str(found[1])[:40]!r})" if found else ""


def check_local_sources(cfg: DataConfig) -> None:
    """Every local file of every source (training, validation, test) exists, reads in its format
    and has its text column: a DataError naming the first that does not. Run before any process
    group exists (and by the launcher, in one process), so a bad file is one line, not a crash of
    every rank. Hub and built-in data are left to the run.

    Reading every byte of a large corpus on every rank at every start (a resume) costs minutes, so
    a source's part that passed is noted under ``data.cache_dir/checked``, keyed by its options and
    its files' paths, sizes and modification times (to the nanosecond): unchanged, it is not read
    again."""
    for i, src in enumerate(cfg.sources):
        for part in src.local_parts():
            where = f"data.sources[{i}]"
            field = "files" if part == "train" else f"{part}_files"
            files = resolve_files(getattr(src, field), f"{where}.{field}", src.kind)
            entry = {**dataclasses.asdict(src), "weight": None, "part": part, "checks": CHECKS,
                     "files": [(f, st.st_size, st.st_mtime_ns) for f in files for st in [os.stat(f)]]}  # fmt: skip
            key = hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()[:24]
            passed = Path(cfg.cache_dir) / "checked" / f"{key}.json"
            if passed.is_file():
                continue
            text_table(src, part, where)
            try:  # a note for the next start; where it cannot be written, that start reads the files again
                passed.parent.mkdir(parents=True, exist_ok=True)
                tmp = passed.with_name(f".{key}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps({"source": where, "part": part, "files": len(files)}))
                os.replace(tmp, passed)
            except OSError:
                pass


def load_source(src: SourceConfig, part: str, where: str, num_proc: int = 1, log=None):
    """One source's ``part`` as a datasets.Dataset with the single column ``text``, empty texts
    dropped (``log`` says how many, unless a text file is read by line or paragraph, where blank
    ones are layout) and long ones cut (chunk_chars)."""
    ds = text_table(src, part, where)
    ds = ds.select_columns([src.text_column])
    if src.text_column != "text":
        ds = ds.rename_column(src.text_column, "text")
    given = len(ds)
    ds = ds.filter(lambda t: bool(t and t.strip()), input_columns="text", num_proc=_procs(num_proc, ds))
    if log is not None and len(ds) < given and src.sample_by == "document":
        log(f"{where}: {given - len(ds):,} of the {given:,} documents of its {part} data have no text (null, "
            f"absent or blank {src.text_column!r}): left out")  # fmt: skip
    if src.chunk_chars:
        ds = ds.map(Chunks(src.chunk_chars), batched=True, input_columns="text", num_proc=_procs(num_proc, ds))
    return ds


class Chunks:
    """Picklable batched map: texts -> pieces of at most ``size`` characters, cut after a line
    break where there is one in the second half of the piece."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, texts: list[str]) -> dict:
        out = []
        for text in texts:
            while len(text) > self.size:
                cut = text.rfind("\n", self.size // 2, self.size) + 1 or self.size
                out.append(text[:cut])
                text = text[cut:]
            if text.strip():
                out.append(text)
        return {"text": out}


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


def characters(ds, column: str = "text") -> np.ndarray:
    """Each row's length in characters, read batch by batch from Arrow."""
    import pyarrow.compute as pc

    parts = [pc.utf8_length(b[column]).to_numpy(zero_copy_only=False)
             for b in ds.with_format("arrow").iter(batch_size=10_000)]  # fmt: skip
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def hold_out(ds, fraction: float, part: str, where: str, num_proc: int = 1, log=None, key: str = "text",
             whole_rows: bool = False):  # fmt: skip
    """``part`` (train or validation) of a table without validation data of its own.

    By document: the rows whose ``key`` hashes into the share. Where that would hold out almost
    nothing or everything (a few long documents; below a quarter or above four times the asked
    share of the characters), the last ``fraction`` of the text instead, cut at a line break: one
    long file still gets a validation tail, and training never sees it. ``whole_rows`` (examples of
    a table): the tail is the last rows, at least one, and no row is cut."""
    lengths = characters(ds, key)
    total = int(lengths.sum())
    held = ds.filter(HoldOut(fraction, True), input_columns=key, num_proc=_procs(num_proc, ds))
    held_chars = int(characters(held, key).sum())
    if fraction * total / 4 <= held_chars <= min(4 * fraction * total, total - 1):
        return held if part == "validation" else ds.filter(HoldOut(fraction, False), input_columns=key,
                                                          num_proc=_procs(num_proc, ds))  # fmt: skip
    if whole_rows:
        n = min(len(ds) - 1, max(1, round(fraction * len(ds))))
        if n < 1:
            raise DataError(f"{where}: {len(ds)} example(s) are too few to hold out {fraction:.1%} for validation; "
                            "add data or give validation_files")  # fmt: skip
        train, validation = ds.select(range(len(ds) - n)), ds.select(range(len(ds) - n, len(ds)))
        said = f"the last {n} of {len(ds)} examples"
    else:
        train, validation = _tail(ds, lengths, fraction, where, key)
        kept = int(characters(validation, key).sum())
        said = f"the last {fraction:.1%} of the text ({kept:,} of {total:,} characters)"
    if log is not None and part == "validation":
        log(f"{where}: holding out {said} for validation: by document, {len(held)} of {len(ds)} would be held out")
    return validation if part == "validation" else train


def _tail(ds, lengths: np.ndarray, fraction: float, where: str, key: str):
    """(head, tail) of the rows' text in order, split at (1 - fraction) of the characters; the
    row holding the cut is split at a line break near it (the other columns copied)."""
    import datasets

    ends = np.cumsum(lengths)
    cut = int(round((1 - fraction) * ends[-1])) if len(ends) else 0
    k = int(np.searchsorted(ends, cut, side="right")) if len(ends) else 0
    if len(ends) == 0 or k >= len(ds):
        raise DataError(f"{where}: the text is too short to hold out {fraction:.1%} for validation; "
                        "add data or give validation data")  # fmt: skip
    row = ds[k]
    text = row[key]
    at = cut - (int(ends[k - 1]) if k else 0)
    newline = text.find("\n", at)
    at = newline + 1 if newline != -1 else at
    head_row, tail_row = {**row, key: text[:at]}, {**row, key: text[at:]}
    one = lambda r: datasets.Dataset.from_list([r], features=ds.features)  # noqa: E731
    head = ([ds.select(range(k))] if k else []) + ([one(head_row)] if head_row[key].strip() else [])
    tail = ([one(tail_row)] if tail_row[key].strip() else []) + ([ds.select(range(k + 1, len(ds)))]
                                                                 if k + 1 < len(ds) else [])  # fmt: skip
    if not head or not tail:
        raise DataError(f"{where}: the text is too short to hold out {fraction:.1%} for validation; "
                        "add data or give validation data")  # fmt: skip
    return datasets.concatenate_datasets(head), datasets.concatenate_datasets(tail)


def load_corpus(cfg: DataConfig, split: str, seed: int = 0, log=None):
    """The ``train`` or ``validation`` text of all sources, mixed by weight. Sources with
    validation data of their own train on all of their training data; the others share
    ``validation_fraction`` (see hold_out). None for ``validation`` when there is none at all."""
    import datasets

    if split not in ("train", "validation"):
        raise ValueError(f"split={split!r}: use 'train' or 'validation'")
    parts, weights = [], []
    for i, src in enumerate(cfg.sources):
        where = f"data.sources[{i}]"
        own = src.names("validation")
        if split == "validation" and not own and cfg.validation_fraction == 0:
            continue
        said = log if own or split == "train" else None  # a held-out share's source was counted for training
        ds = load_source(src, split if own else "train", where, cfg.num_proc, said)  # never empty (text_table)
        if not own and cfg.validation_fraction > 0:
            ds = hold_out(ds, cfg.validation_fraction, split, where, cfg.num_proc, log)
        parts.append(ds)
        weights.append(src.weight)
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    return datasets.interleave_datasets(
        aligned(parts),
        probabilities=[w / sum(weights) for w in weights],
        seed=seed,
        stopping_strategy="all_exhausted",
    )


def rewritten(table, columns: dict[str, list], order: list[str] | None = None):
    """``table`` with ``columns`` (name -> a value per row) as text (large_string), each in place of
    the column of its name. ``order``: the columns the result has, in order (default: the table's,
    then the new ones)."""
    import datasets

    order = order or [*table.column_names, *(c for c in columns if c not in table.column_names)]
    features = datasets.Features({c: datasets.Value("large_string") if c in columns else table.features[c]
                                  for c in order})  # fmt: skip
    return datasets.Dataset.from_dict({c: columns[c] if c in columns else column_values(table, c) for c in order},
                                      features=features)  # fmt: skip


def aligned(tables: list) -> list:
    """The tables with one type per column, so that datasets can concatenate or interleave them
    (sources of different formats differ: JSON text is large_string, a text file's string; a label
    is a number in one file and text in another). Text of either width becomes large_string; a
    column that is text somewhere and not everywhere becomes text, each value as ``str`` writes it
    (as classification names its labels)."""
    import datasets

    if all(t.features == tables[0].features for t in tables):
        return tables
    text = ("string", "large_string")
    out = []
    for t in tables:
        for column in t.column_names:
            kinds = {getattr(o.features.get(column), "dtype", None) for o in tables}
            if len(kinds) == 1:
                continue
            features = t.features.copy()
            features[column] = datasets.Value("large_string")
            if getattr(t.features[column], "dtype", None) in text:
                t = t.cast(features)
            else:
                t = t.map(lambda v, c=column: {c: None if v is None else str(v)}, input_columns=column,
                          features=features)  # fmt: skip
        out.append(t)
    return out


def _procs(num_proc: int, ds) -> int | None:
    n = min(num_proc, max(1, len(ds) // 64))
    return n if n > 1 else None


def _describe(src: SourceConfig, part: str = "train") -> str:
    if src.files:
        field = "files" if part == "train" else f"{part}_files"
        return f"{field} {getattr(src, field) or src.files}"
    return src.builtin or f"hub {src.hub}"

"""A fine-tuning task's tokenized examples, held in columns, made once per data cache and
memory-mapped by every process that reads them.

Making the examples (reading the task's tables, tokenizing them, cutting windows) is most of a
fine-tuning job's start on a large set, and every rank used to make all of them after the
launcher's preflight had made them too. The process that makes them (the preflight, else rank 0
while the others wait for it: finetune.tasks.FinetuneTask.check_data) writes them to
``{data.cache_dir}/examples-{fingerprint}``; a later process with the same fingerprint opens them
instead, its arrays shared through the page cache.
The folder follows the packed cache's rules (pretrain.data.packing): filled under a temporary name
and renamed when complete, found damaged by its sizes, then set aside and made again.

Columns: a value per example (``key.npy``), or a list per example (``key.values.npy`` and
``key.offsets.npy``), of ints or of (start, end) pairs. ``index.json`` says which, with the labels
and the lines said while the examples were made (a run says them again from the cache).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
from pathlib import Path

import numpy as np

from pretrain.data.sources import source_files
from pretrain.data.tokenizer import tokenizer_hash
from pretrain.files import remove_abandoned, set_aside, write_folder

FORMAT_VERSION = 1
"""Raise when the making of any kind's rows changes: every cache made before is then made again."""
SPLITS = ("train", "validation")


class Examples:
    """Rows of one split (dicts of ints, lists of ints and lists of int pairs) in columns of
    arrays: ``len()`` rows, ``examples[i]`` a row as the collators take it, ``column(key)`` one value
    per row."""

    def __init__(self, n: int, kinds: dict[str, str], arrays: dict[str, np.ndarray], folder: Path | None = None):
        self.n, self.kinds, self.arrays, self.folder = n, kinds, arrays, folder

    @classmethod
    def from_rows(cls, rows: list[dict]) -> Examples:
        kinds, arrays = {}, {}
        for key in rows[0] if rows else ():
            values = [r[key] for r in rows]
            first = next((v for v in values if not isinstance(v, list) or v), values[0])
            if not isinstance(first, list):
                kinds[key] = "int"
                arrays[key] = np.asarray(values, dtype=np.int64)
                continue
            pairs = bool(first) and isinstance(first[0], (tuple, list))
            kinds[key] = "pairs" if pairs else "ints"
            sizes = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
            arrays[f"{key}.offsets"] = np.concatenate([[0], np.cumsum(sizes)])
            flat = itertools.chain.from_iterable(itertools.chain.from_iterable(values) if pairs else values)
            total = int(sizes.sum()) * (2 if pairs else 1)
            ints = np.fromiter(flat, dtype=np.int32, count=total)
            arrays[f"{key}.values"] = ints.reshape(-1, 2) if pairs else ints
        return cls(len(rows), kinds, arrays)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        row = {}
        for key, kind in self.kinds.items():
            if kind == "int":
                row[key] = int(self.arrays[key][i])
                continue
            start, end = self.arrays[f"{key}.offsets"][i : i + 2].tolist()
            values = self.arrays[f"{key}.values"][start:end].tolist()
            row[key] = [tuple(v) for v in values] if kind == "pairs" else values
        return row

    def column(self, key: str) -> np.ndarray:
        """A value per row (``int`` columns only)."""
        return self.arrays[key]

    def count(self) -> int:
        """How many examples the rows hold: a QA example read in several windows is a row a window."""
        return len(np.unique(self.arrays["example"])) if "example" in self.kinds else self.n

    def save(self, folder: Path) -> dict:
        folder.mkdir()
        for name, array in self.arrays.items():
            with open(folder / f"{name}.npy", "wb") as f:
                np.save(f, array)
                f.flush()
                os.fsync(f.fileno())
        return {"rows": self.n, "columns": self.kinds}

    @classmethod
    def open(cls, folder: Path, entry: dict) -> Examples:
        """Memory-mapped: read from disk as rows are asked for, shared by every process that opens them."""
        kinds = entry["columns"]
        names = [k if kind == "int" else f"{k}.{part}" for k, kind in kinds.items() for part in ("values", "offsets")]
        # plain views of the maps: slicing an np.memmap makes a memmap each time, twice as slow to read a row
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r").view(np.ndarray)
                  for name in dict.fromkeys(names)}  # fmt: skip
        return cls(entry["rows"], kinds, arrays, folder)

    def __getstate__(self):  # a DataLoader worker started by spawn opens the files again, copying nothing
        return {**self.__dict__, "arrays": None} if self.folder is not None else self.__dict__

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self.arrays is None:
            self.arrays = Examples.open(self.folder, {"rows": self.n, "columns": self.kinds}).arrays


def fingerprint(cfg, tok, sources, token_types: bool) -> str:
    """Everything that changes a task's examples: its sources (local files by size and modification
    time in nanoseconds), the task section, the lengths and hold-out share, the tokenizer (and its chat template)."""
    entries = []
    for i, src in enumerate(sources):
        entry = dataclasses.asdict(src)
        # to the nanosecond: a file written again within the same second (a fix to a bad row) is new
        entry["file_stats"] = [(f, st.st_size, st.st_mtime_ns) for f in source_files(src, f"data.sources[{i}]")
                               for st in [os.stat(f)]]  # fmt: skip
        entries.append(entry)
    payload = {
        "version": FORMAT_VERSION, "sources": entries, "task": dataclasses.asdict(cfg.task),
        "seq_len": cfg.data.seq_len, "target_len": cfg.target_len,
        "validation_fraction": cfg.data.validation_fraction, "tokenizer": tokenizer_hash(tok),
        "specials": tok.special_tokens_map, "chat_template": tok.chat_template, "token_types": token_types,
    }  # fmt: skip
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def damage(folder: Path) -> str | None:
    """What is wrong with a cache of examples, judged by sizes, or None."""
    try:
        index = json.loads((folder / "index.json").read_text())
        splits = {split: index["splits"][split] for split in index["splits"]}
        for split, entry in splits.items():
            examples = Examples.open(folder / split, entry)
            for key, kind in examples.kinds.items():
                if kind == "int" and len(examples.arrays[key]) != examples.n:
                    return f"{split}/{key}.npy holds {len(examples.arrays[key])} rows, the index says {examples.n}"
                if kind != "int":
                    offsets, values = examples.arrays[f"{key}.offsets"], examples.arrays[f"{key}.values"]
                    if len(offsets) != examples.n + 1 or int(offsets[-1]) != len(values):
                        return f"{split}/{key}: the offsets do not match its {len(values)} values"
    except FileNotFoundError as e:
        return f"{Path(e.filename).relative_to(folder) if e.filename else 'a file'} is missing"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"it does not read ({type(e).__name__}: {str(e)[:100]})"
    return None


def is_cached(cfg, tok, sources, token_types: bool) -> bool:
    """Whether the examples are cached, whole, for ``cached`` to read."""
    final = Path(cfg.data.cache_dir) / f"examples-{fingerprint(cfg, tok, sources, token_types)}"
    return final.exists() and damage(final) is None


def cached(cfg, tok, sources, token_types: bool, make, log=print, write: bool = True) -> tuple[dict, dict]:
    """The examples of each split and what their making gave besides (``{"labels": [...], "said":
    [...]}``): read from the cache when made before, else ``make()`` -> (rows by split, labels,
    lines said) and, where ``write``, cached for the next process. ``log`` gets one line saying
    which (and a warning first for a damaged cache set aside, or a folder a killed process left)."""
    fp = fingerprint(cfg, tok, sources, token_types)
    final = Path(cfg.data.cache_dir) / f"examples-{fp}"
    if final.exists():
        problem = damage(final)
        if problem is None:
            index = json.loads((final / "index.json").read_text())
            examples = {split: Examples.open(final / split, entry) for split, entry in index["splits"].items()}
            counts = ", ".join(f"{len(e):,} {split}" for split, e in examples.items())
            log(f"the task's examples ({counts} rows) read from {final}, made before from the same data files, task "
                "and tokenizer")  # fmt: skip
            return examples, {"labels": index["labels"], "said": index["said"]}
        aside = set_aside(final)
        if aside is not None:
            log(f"warning: the examples cached in {final} are damaged ({problem}); moved to {aside} (delete it when "
                "done looking) and made again")  # fmt: skip
    rows, labels, said = make()
    examples = {split: Examples.from_rows(rows[split]) for split in SPLITS if split in rows}
    if not write:
        log("data files read, their examples made and checked")
        return examples, {"labels": labels, "said": said}
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned(final.parent, log)
        with write_folder(final) as tmp:
            splits = {split: e.save(tmp / split) for split, e in examples.items()}
            index = {"version": FORMAT_VERSION, "fingerprint": fp, "splits": splits, "labels": labels, "said": said}
            (tmp / "index.json").write_text(json.dumps(index, indent=1))
    except OSError as e:  # a full disk, a folder not ours to write: the run has its examples all the same
        log(f"warning: the examples could not be cached in {final} ({type(e).__name__}: {e.strerror or e}); each "
            "rank makes them itself (free space there, or set data.cache_dir to a folder this user can write)")
        log("data files read, their examples made and checked")
        return examples, {"labels": labels, "said": said}
    log(f"data files read, their examples made and checked, and cached in {final}")
    # read back from the files: the pages are shared with the ranks that open them after this one
    opened = {split: Examples.open(final / split, entry) for split, entry in splits.items()}
    return opened, {"labels": labels, "said": said}

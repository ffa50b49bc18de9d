"""Packed token shards: documents tokenized in parallel, joined with a separator, written to disk
as raw shards (read back as np.memmap) with a JSON index, cached by fingerprint.

A cache folder is ``{cache_dir}/{split}-{fingerprint}`` holding ``index.json``, the shards
``tokens-NNNNN.bin`` and ``doc_starts.npy`` (where each document begins in the token stream, for
document masks). It is written under a temporary name and renamed into place when complete, so
a half-written cache is never read. A cache damaged afterwards (a shard cut short or gone, an
unreadable index) is found by its sizes when it is next opened, moved aside and packed again.
Sequence i is tokens[i*L : i*L + L + 1] (L = seq_len): inputs
and next-token labels from one read, the last token shared with the next sequence.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from pretrain.data.config import DataConfig
from pretrain.data.sources import DataError, file_stats, load_corpus, source_files
from pretrain.data.tokenizer import separator_id, tokenizer_hash
from pretrain.files import remove_abandoned, set_aside, write_folder

FORMAT_VERSION = 1
LATER_OPTIONS = ("field", "kind")
"""Source options added after caches of this format existed: they enter a fingerprint only when
set, so an upgrade does not re-tokenize every corpus already packed."""
SHARD_TOKENS = 1 << 28  # 512 MiB of uint16 per shard


def fingerprint(cfg: DataConfig, tok, split: str, seed: int) -> str:
    """Everything that changes the packed tokens: sources (and local files' size and mtime),
    tokenizer, sequence length, split and the hold-out rule."""
    sources = []
    for i, src in enumerate(cfg.sources):
        entry = dataclasses.asdict(src)
        for option in LATER_OPTIONS:
            if entry[option] is None:
                del entry[option]
        entry["file_stats"] = file_stats(source_files(src, f"data.sources[{i}]"))
        sources.append(entry)
    payload = {
        "version": FORMAT_VERSION, "sources": sources, "tokenizer": tokenizer_hash(tok), "seq_len": cfg.seq_len,
        "split": split, "validation_fraction": cfg.validation_fraction, "seed": seed if len(sources) > 1 else None,
    }  # fmt: skip
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def pack(cfg: DataConfig, tok, arch: str, split: str = "train", seed: int = 0, log=print) -> Path:
    """Build (or find) the packed cache for one split and return its folder."""
    fp = fingerprint(cfg, tok, split, seed)
    final = Path(cfg.cache_dir) / f"{split}-{fp}"
    if final.exists():
        problem = damage(final)
        if problem is None:
            return final
        aside = set_aside(final)
        if aside is not None:  # else another process of the job moved it first
            log(f"warning: the packed {split} cache {final} is damaged ({problem}); moved to {aside} (delete it "
                "when done looking) and packed again")  # fmt: skip
    start = time.time()
    texts = load_corpus(cfg, split, seed, log)
    sep = separator_id(tok, arch)

    def encode(batch):  # a special token's spelling inside a document ("<|endoftext|>" in code) is text
        ids = tok(batch["text"], add_special_tokens=False, split_special_tokens=True)["input_ids"]
        return {"ids": ids, "n": [len(x) + 1 for x in ids]}  # +1: the separator after each document

    procs = min(cfg.num_proc, max(1, len(texts) // 16))
    tokenized = texts.map(encode, batched=True, batch_size=64, num_proc=procs if procs > 1 else None,
                          remove_columns=["text"])  # fmt: skip
    lengths = np.asarray(tokenized["n"], dtype=np.int64)
    total = int(lengths.sum())
    if total < cfg.seq_len + 1:
        raise DataError(
            f"the {split} corpus has {total} tokens, fewer than one sequence needs "
            f"(data.seq_len + 1 = {cfg.seq_len + 1}); add data or lower data.seq_len"
        )
    dtype = np.uint16 if len(tok) <= 65535 else np.uint32
    need = total * np.dtype(dtype).itemsize + 8 * len(lengths) + 2**16  # shards, document starts, index
    cache = Path(cfg.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    remove_abandoned(cache, log)
    if shutil.disk_usage(cache).free < need:
        raise DataError(_no_space(cache, split, need))
    try:
        with write_folder(final) as tmp:
            shards = _write_shards(tmp, tokenized, total, sep, dtype)
            doc_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            np.save(tmp / "doc_starts.npy", doc_starts)
            index = {
                "version": FORMAT_VERSION, "fingerprint": fp, "split": split, "seq_len": cfg.seq_len,
                "dtype": np.dtype(dtype).name, "num_tokens": total, "num_documents": len(lengths),
                "num_sequences": (total - 1) // cfg.seq_len, "separator_id": sep, "vocab_size": len(tok),
                "shards": shards, "seconds": round(time.time() - start, 2),
            }  # fmt: skip
            _write_json(tmp / "index.json", index)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):  # filled while writing
            raise DataError(_no_space(cache, split, need)) from None
        raise
    log(f"packed {split}: {total:,} tokens from {len(lengths):,} documents in {time.time() - start:.1f}s -> {final}")
    return final


def _no_space(cache: Path, split: str, need: int) -> str:
    """A full disk under data.cache_dir, said with what packing needs, what is free, and what of
    ours there could go (interrupted packing, damaged caches set aside)."""
    leftovers = [p for p in cache.iterdir() if ".tmp-" in p.name or ".damaged-" in p.name]
    size = sum(f.stat().st_size for p in leftovers for f in p.rglob("*") if f.is_file())
    ours = (f" ({size / 2**20:,.1f} MiB of it in {len(leftovers)} folder(s) of interrupted packing or damaged caches "
            f"set aside, which can go: {', '.join(p.name for p in leftovers[:3])})") if leftovers else ""  # fmt: skip
    return (f"data.cache_dir={str(cache)!r}: packing the {split} split needs {need / 2**20:,.1f} MiB and the disk "
            f"holding it has {shutil.disk_usage(cache).free / 2**20:,.1f} MiB free{ours}; free space there or set "
            "data.cache_dir to a larger disk")  # fmt: skip


def damage(folder: Path) -> str | None:
    """What is wrong with a packed cache, judged by sizes (no pass over the tokens), or None."""
    try:
        index = json.loads((folder / "index.json").read_text())
        itemsize = np.dtype(index["dtype"]).itemsize
        shards, total, documents = index["shards"], index["num_tokens"], index["num_documents"]
    except FileNotFoundError:
        return "no index.json"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"index.json does not read ({type(e).__name__}: {str(e)[:100]})"
    for shard in shards:
        path = folder / shard["file"]
        size = path.stat().st_size if path.exists() else None
        if size != shard["num_tokens"] * itemsize:
            held = "is missing" if size is None else f"holds {size // itemsize:,} tokens"
            return f"{shard['file']} {held}, the index says {shard['num_tokens']:,}"
    if sum(shard["num_tokens"] for shard in shards) != total:
        return f"the shards hold {sum(s['num_tokens'] for s in shards):,} tokens, the index says {total:,}"
    try:
        starts = len(np.load(folder / "doc_starts.npy", mmap_mode="r"))
    except (OSError, ValueError) as e:
        return f"doc_starts.npy does not read ({type(e).__name__}: {str(e)[:100]})"
    if starts != documents:
        return f"doc_starts.npy has {starts:,} documents, the index says {documents:,}"
    return None


def _write_shards(folder: Path, tokenized, total: int, sep: int, dtype) -> list[dict]:
    """Stream the tokenized documents into shards with a separator after each document, reading
    Arrow buffers batch by batch: memory stays at one batch whatever the corpus size. Plain writes,
    not a writable memmap: a disk that fills is then an OSError (ENOSPC), not a SIGBUS."""
    shards, written, shard_end, out = [], 0, 0, None
    try:
        for batch in tokenized.with_format("arrow").iter(batch_size=64):
            ids = batch["ids"].combine_chunks()
            offsets = ids.offsets.to_numpy()
            flat = ids.values.to_numpy()[offsets[0] : offsets[-1]]
            docs = len(offsets) - 1
            chunk = np.empty(len(flat) + docs, dtype=dtype)
            seps = offsets[1:] - offsets[0] + np.arange(docs)  # doc i's separator follows its i earlier ones
            keep = np.ones(len(chunk), dtype=bool)
            keep[seps] = False
            chunk[seps] = sep
            chunk[keep] = flat
            pos = 0
            while pos < len(chunk):
                if out is None or written == shard_end:
                    if out is not None:
                        _close_synced(out)
                    size = min(SHARD_TOKENS, total - written)
                    name = f"tokens-{len(shards):05d}.bin"
                    out = open(folder / name, "wb")  # noqa: SIM115 - one shard after another
                    shards.append({"file": name, "num_tokens": size})
                    shard_end = written + size
                take = min(len(chunk) - pos, shard_end - written)
                out.write(chunk[pos : pos + take].tobytes())
                written += take
                pos += take
        _close_synced(out)
        out = None
    finally:
        if out is not None:
            out.close()
    return shards


def _close_synced(f) -> None:
    f.flush()
    os.fsync(f.fileno())
    f.close()


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


class PackedTokens:
    """Read-only view of a packed cache: ``len()`` sequences of seq_len + 1 tokens."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.index = json.loads((self.folder / "index.json").read_text())
        self.seq_len = self.index["seq_len"]
        self.shards = [np.memmap(self.folder / s["file"], dtype=self.index["dtype"], mode="r")
                       for s in self.index["shards"]]  # fmt: skip
        self.bounds = np.cumsum([0] + [len(s) for s in self.shards])
        self.doc_starts = np.load(self.folder / "doc_starts.npy", mmap_mode="r")

    def __len__(self) -> int:
        return self.index["num_sequences"]

    def tokens(self, start: int, end: int) -> np.ndarray:
        """Tokens [start, end) of the stream, across shard boundaries."""
        parts, pos = [], start
        while pos < end:
            k = int(np.searchsorted(self.bounds, pos, side="right")) - 1
            stop = min(end, int(self.bounds[k + 1]))
            parts.append(self.shards[k][pos - self.bounds[k] : stop - self.bounds[k]])
            pos = stop
        return np.concatenate(parts).astype(np.int64)

    def sequence(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(f"sequence {i} of {len(self)}")
        return self.tokens(i * self.seq_len, (i + 1) * self.seq_len + 1)

    def document_ids(self, i: int) -> np.ndarray:
        """For each token of sequence i, the index of the document it belongs to."""
        pos = np.arange(i * self.seq_len, (i + 1) * self.seq_len + 1)
        return np.searchsorted(self.doc_starts, pos, side="right") - 1

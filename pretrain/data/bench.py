"""Tokenization + packing throughput and peak memory on the built-in corpus.

    python -m pretrain.data.bench [--copies N] [--vocab 8192] [--num-proc 2]

--copies N packs N copies of the standard library (as linked files) to show that peak memory
does not grow with the corpus. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=1)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--num-proc", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=1024)
    args = ap.parse_args()

    from pretrain.data.config import DataConfig, SourceConfig, TokenizerConfig
    from pretrain.data.packing import pack
    from pretrain.data.sources import stdlib_files
    from pretrain.data.tokenizer import load_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        for c in range(args.copies):
            for i, f in enumerate(f for f in stdlib_files() if _utf8(f)):
                (corpus / str(c)).mkdir(parents=True, exist_ok=True)
                os.symlink(f, corpus / str(c) / f"{i}.txt")
        cfg = DataConfig(
            sources=[SourceConfig(files=str(corpus / "*" / "*.txt"))]
            if args.copies > 1
            else [SourceConfig(builtin="python-stdlib")],
            tokenizer=TokenizerConfig(vocab_size=args.vocab), seq_len=args.seq_len, cache_dir=str(Path(tmp) / "cache"),
            num_proc=args.num_proc, validation_fraction=0.0,
        )  # fmt: skip
        if args.copies > 1:
            os.environ["HF_DATASETS_CACHE"] = str(Path(tmp) / "hf")  # keep the linked copies out of ~/.cache
        # Train the tokenizer in a child process so the packing numbers below are packing's own.
        t0 = time.time()
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            tok_peak = pool.submit(_train, cfg, args.vocab, Path(tmp) / "tok").result()
        t1 = time.time()
        tok = load_tokenizer(Path(tmp) / "tok")
        base = _rss()
        sampler = _AnonPeak()
        index = json.loads((pack(cfg, tok, "decoder", "train", log=lambda *_: None) / "index.json").read_text())
        t2 = time.time()
        sampler.stop()
    print(json.dumps({
        "copies": args.copies, "documents": index["num_documents"], "tokens": index["num_tokens"],
        "tokenizer_train_s": round(t1 - t0, 1), "tokenizer_train_peak_rss_mib": tok_peak,
        "pack_s": round(t2 - t1, 1), "pack_tokens_per_s": round(index["num_tokens"] / (t2 - t1)),
        "num_proc": args.num_proc, "pack_peak_rss_mib": _rss(), "rss_before_pack_mib": base,
        "pack_peak_anon_mib": sampler.peak_mib,
        "pack_worker_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
    }))  # fmt: skip


class _AnonPeak(threading.Thread):
    """Samples the process's anonymous (heap) resident memory: unlike ru_maxrss it leaves out
    pages of memory-mapped files, which the kernel can drop at will."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak_mib, self._done = 0, threading.Event()
        self.start()

    def run(self):
        while not self._done.wait(0.05):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    self.peak_mib = max(self.peak_mib, int(line.split()[1]) // 1024)

    def stop(self):
        self._done.set()
        self.join()


def _rss() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # KiB -> MiB


def _train(cfg, vocab: int, out: Path) -> int:
    from pretrain.data.sources import load_corpus
    from pretrain.data.tokenizer import save_tokenizer, train_tokenizer

    save_tokenizer(train_tokenizer(load_corpus(cfg, "train"), "decoder", cfg.tokenizer, vocab), out)
    return _rss()


def _utf8(path: str) -> bool:
    """Text a source of files takes: UTF-8 and not empty (the builtin source skips the rest too)."""
    try:
        return Path(path).read_text(encoding="utf-8") != ""
    except UnicodeDecodeError:
        return False


if __name__ == "__main__":
    main()

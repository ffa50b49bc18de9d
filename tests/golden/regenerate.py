"""Regenerate the golden files on purpose (only when a change is meant to alter training):

    OMP_NUM_THREADS=1 .venv/bin/python -m tests.golden.regenerate

- ``losses.json``: the first 30 training losses of the debug model on a fixed slice of the built-in
  corpus (the standard library's ``json`` package), one process, ZeRO-0, fp32, deterministic.
- ``checkpoint/``: that run's step-10 checkpoint (DeepSpeed files, RNG and data state, config,
  tokenizer), which later versions must load and continue with the losses recorded here.

``previous/`` holds checkpoints written by earlier releases. They are never regenerated: this
release must still resume them (within rounding of the curve).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from pretrain.status import metric_records

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
STEPS = 30
SAVED = 10


def corpus(folder: Path) -> Path:
    """The fixed slice: the standard library's json package, file by file."""
    src = Path(sysconfig.get_paths()["stdlib"]) / "json"
    out = folder / "corpus"
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.glob("*.py")):
        shutil.copy(f, out / f"{f.stem}.txt")
    return out


def overrides(work: Path, tokenizer: Path | None) -> list[str]:
    tok = [f"data.tokenizer.path={tokenizer}"] if tokenizer else ["data.tokenizer.vocab_size=512"]
    return [f"output_dir={work / 'runs'}", "name=golden", f"data.sources=[{{files: {corpus(work)}}}]",
            f"data.cache_dir={work / 'cache'}", "data.seq_len=64", "data.validation_fraction=0.0", "data.num_proc=1",
            *tok, f"train.max_steps={STEPS}", "train.micro_batch_size=4", "train.lr=3e-3", "train.warmup_steps=2",
            "train.eval_every=0", "train.seed=1", "train.deterministic=true", "deepspeed.zero_stage=0",
            "deepspeed.precision=fp32", f"checkpoint.every_steps={SAVED}", "checkpoint.keep_last=5",
            "log.every_steps=1", "log.progress_bar=false", "log.tensorboard=false", "log.wandb=off"]  # fmt: skip


def train(work: Path, tokenizer: Path | None, *extra: str, program: tuple[str, ...] = ("-m", "pretrain")):
    """The run's training losses by step. ``program``: how python starts `python -m pretrain`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    proc = subprocess.run([sys.executable, *program, "configs/model/debug.yaml", *overrides(work, tokenizer),
                           *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout[-3000:] + proc.stderr[-3000:])
    return {r["step"]: r["loss"] for r in metric_records(work / "runs" / "golden", "train")}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        losses = train(work, None)
        saved = work / "runs" / "golden" / "checkpoints" / f"step_{SAVED:08d}"
        shutil.rmtree(HERE / "checkpoint", ignore_errors=True)
        shutil.copytree(saved, HERE / "checkpoint")
    (HERE / "losses.json").write_text(json.dumps({str(k): v for k, v in sorted(losses.items())}, indent=1) + "\n")
    print(f"wrote {HERE / 'losses.json'} ({len(losses)} steps) and {HERE / 'checkpoint'}")


if __name__ == "__main__":
    main()

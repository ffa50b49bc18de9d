"""Checkpoints: DeepSpeed's sharded save plus what a run needs to continue exactly.

Layout under ``RUN/checkpoints`` (``best`` names the tag with the best evaluation, when the task
keeps one; retention never deletes it)::

    step_00000100/             DeepSpeed's files for this tag (model, ZeRO optimizer shards)
      rank_state_00000.pt      per-rank RNG states
      config.yaml, tokenizer/  the resolved config and the tokenizer
      complete.json            written last, after every rank finished: step, world size
    step_00000100_universal/   made on demand to resume at another world size
    latest                     the newest complete tag (DeepSpeed's own pointer file)

A save that dies half-way leaves a folder without complete.json and ``latest`` where it was;
resume ignores such folders and the next save of that tag starts it afresh. Retention keeps the
newest ``keep_last`` complete tags and never the one ``latest`` names.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from pretrain.checkpoint_layout import COMPLETE, checkpoints_dir, complete_tags, is_complete, newest_complete, tag_for
from pretrain.config import CheckpointConfig, ConfigError, RunConfig, save_config

__all__ = ["COMPLETE", "checkpoints_dir", "complete_tags", "is_complete", "newest_complete", "tag_for"]


def resolve(path: str | Path) -> Path:
    """A run directory, its checkpoints folder, or a tag folder -> the complete tag folder to use."""
    path = Path(path)
    if (path / COMPLETE).is_file():
        return path
    for root in (path, checkpoints_dir(path)):
        found = newest_complete(root)
        if found is not None:
            return found
    if path.is_dir() and path.name.startswith("step_"):
        newest = newest_complete(path.parent)
        hint = f"the newest complete one is {newest}" if newest else "there is no complete checkpoint beside it"
        raise ConfigError(f"checkpoint {path} is incomplete (no {COMPLETE}: its save did not finish); {hint}")
    raise ConfigError(f"no complete checkpoint in {path} (looked for {COMPLETE} under {path} and {path}/checkpoints)")


def saved_info(tag_dir: Path) -> dict:
    return json.loads((tag_dir / COMPLETE).read_text())


def saved_config(tag_dir: Path) -> RunConfig:
    """The run-config sections of a checkpoint's config (a fine-tuning run's extra keys, such as
    init_from and task, are not needed to read its model, data or DeepSpeed settings)."""
    import dataclasses

    import yaml

    from pretrain.config import from_dict

    data = yaml.safe_load((tag_dir / "config.yaml").read_text())
    names = {f.name for f in dataclasses.fields(RunConfig)}
    return from_dict(RunConfig, {k: v for k, v in data.items() if k in names})


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}  # fmt: skip


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Checkpointer:
    def __init__(self, cfg: CheckpointConfig, run_dir: Path, rank: int, world_size: int):
        self.cfg, self.root, self.rank, self.world = cfg, checkpoints_dir(run_dir), rank, world_size

    def due(self, step: int, last: bool) -> bool:
        return last or (self.cfg.every_steps > 0 and step % self.cfg.every_steps == 0)

    def save(self, engine, step: int, client_state: dict, run_config: RunConfig, tokenizer,
             extra_files: dict[str, str] | None = None, best: bool = False) -> Path:  # fmt: skip
        """Save a complete checkpoint; ``best`` also points ``best`` at it (never pruned)."""
        tag = tag_for(step)
        tag_dir = self.root / tag
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            if tag_dir.exists() and not is_complete(tag_dir):
                shutil.rmtree(tag_dir)  # left by a save that died: start it afresh
        _barrier()
        # universal_checkpoint_info lets ds_to_universal re-shard this save for another world size.
        engine.save_checkpoint(
            str(self.root), tag=tag, client_state={"pretrain": client_state, "universal_checkpoint_info": {}},
            save_latest=False,
        )  # fmt: skip
        torch.save(rng_state(), tag_dir / f"rank_state_{self.rank:05d}.pt")
        if self.rank == 0:
            save_config(run_config, tag_dir / "config.yaml")
            if tokenizer is not None:
                tokenizer.save_pretrained(str(tag_dir / "tokenizer"))
            for name, text in (extra_files or {}).items():
                (tag_dir / name).write_text(text)
        _barrier()  # every rank's shards are on disk before the checkpoint counts
        if self.rank == 0:
            info = {"step": step, "world_size": self.world, "time": time.time()}
            _write_atomic(tag_dir / COMPLETE, json.dumps(info))
            _write_atomic(self.root / "latest", tag)
            if best:
                _write_atomic(self.root / "best", tag)
            self.prune()
        _barrier()
        return tag_dir

    def prune(self) -> None:
        """Keep the newest keep_last complete tags; drop unfinished saves older than the newest."""
        tags = complete_tags(self.root)
        pinned = {(self.root / f).read_text().strip() for f in ("latest", "best") if (self.root / f).exists()}
        for tag in tags[: -self.cfg.keep_last]:
            if tag not in pinned:
                shutil.rmtree(self.root / tag, ignore_errors=True)
                shutil.rmtree(self.root / f"{tag}_universal", ignore_errors=True)
        newest = tags[-1] if tags else None
        for p in self.root.iterdir():
            if p.is_dir() and p.name.startswith("step_") and not p.name.endswith("_universal"):
                if not is_complete(p) and newest and p.name < newest:
                    shutil.rmtree(p, ignore_errors=True)


def universal_tag(tag_dir: Path) -> str:
    """Make (once) the universal form of a checkpoint, for loading at another world size.

    Rank 0 converts with DeepSpeed's ds_to_universal into a temporary folder renamed when done.
    """
    out = tag_dir.parent / f"{tag_dir.name}_universal"
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0 and not out.is_dir():
        tmp = tag_dir.parent / f".{out.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(tag_dir),
               "--output_folder", str(tmp), "--num_extract_workers", "1", "--num_merge_workers", "1"]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RuntimeError(f"ds_to_universal failed on {tag_dir}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        for f in tag_dir.iterdir():  # our own files travel with it
            if f.name.startswith("rank_state_") or f.name in (COMPLETE, "config.yaml"):
                shutil.copy(f, tmp / f.name)
        os.rename(tmp, out)
    _barrier()
    return out.name


def compare_for_resume(old: RunConfig, new: RunConfig, old_world: int, new_world: int, warn) -> dict:
    """Refuse a different model shape; warn about what changes meaning on resume.

    Returns which saved states still apply: {"data": bool}.
    """
    shape = (
        *("arch", "vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "ffn_hidden_size"),
        *("position", "type_vocab_size", "tie_embeddings", "bias", "norm", "mlp", "relative_num_buckets"),
    )
    if old.model.position == "learned":
        shape += ("max_seq_len",)
    changed = {k: (getattr(old.model, k), getattr(new.model, k)) for k in shape
               if getattr(old.model, k) != getattr(new.model, k)}  # fmt: skip
    if changed:
        diff = ", ".join(f"model.{k}: {a} -> {b}" for k, (a, b) in changed.items())
        raise ConfigError(
            f"the checkpoint's model has another shape ({diff}); resume with the saved shape or start a new run "
            f"(another name, or train.resume=never in a fresh output_dir)"
        )
    keep = {"data": True}
    if old.data.seq_len != new.data.seq_len:
        warn(f"data.seq_len changed {old.data.seq_len} -> {new.data.seq_len}: the saved data position counts "
             f"sequences of the old length, so the data stream starts again from its beginning")  # fmt: skip
        keep["data"] = False
    old_global = old.train.global_batch_size or old.train.micro_batch_size * old_world
    new_global = new.train.global_batch_size or new.train.micro_batch_size * new_world
    if old_global != new_global:
        warn(f"global batch changed {old_global} -> {new_global} sequences: the data continues from the same "
             f"sample; each step from here on takes {new_global}")  # fmt: skip
    return keep

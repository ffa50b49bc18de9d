"""Checkpoints: DeepSpeed's sharded save plus what a run needs to continue exactly.

Layout under ``RUN/checkpoints`` (``best`` names the tag with the best evaluation, when the task
keeps one; retention never deletes it)::

    step_00000100/             DeepSpeed's files for this tag (model, ZeRO optimizer shards)
      rank_state_00000.json    per-rank RNG states
      config.yaml, tokenizer/  the resolved config and the tokenizer
      complete.json            written last, after every rank finished: step, world size, the
                               checkpoint format, and each file's size and checksum (blake2b),
                               which every load verifies
    step_00000100_universal/   made on demand to resume at another world size
    latest                     the newest complete tag (DeepSpeed's own pointer file)
    superseded-<time>/         tags newer than the one a run resumed from, moved aside (not deleted)

A tag is written under a temporary name (``.step_00000100.saving``), its files fsynced, then
complete.json, and only then renamed to its own name: a tag is never rewritten in place, and a save
that dies half-way leaves ``latest`` and every complete tag as they were. A complete tag whose
files no longer match complete.json (truncated, bit-flipped) is skipped, with a warning naming the
file, for the newest intact one. Retention keeps the newest ``keep_last`` complete tags and never
the one ``latest`` or ``best`` names.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from pretrain.checkpoint_layout import COMPLETE, checkpoints_dir, complete_tags, is_complete, newest_complete, tag_for
from pretrain.config import CheckpointConfig, ConfigError, DeepSpeedSection, RunConfig, save_config
from pretrain.files import fsync_dir, write_atomic

__all__ = ["COMPLETE", "checkpoints_dir", "complete_tags", "is_complete", "newest_complete", "tag_for"]

FORMAT = 1
"""What a tag holds and how (file layout, state keys, config keys), recorded in complete.json. A
release that changes it raises the number and either reads the older formats it lists in READS or
refuses them with MIGRATION. Tags without the key are format 1 (every release before the key)."""
READS = (1,)
MIGRATION = ("load it with the release that wrote it and export it there (python -m pretrain.export TAG OUT), "
             "then fine-tune from OUT/consolidated or OUT/hf, which this release reads")  # fmt: skip


def check_format(tag_dir: Path) -> Path:
    """``tag_dir`` if this release reads its format and its config, else a ConfigError that says
    what to do."""
    fmt = saved_info(tag_dir).get("format", 1)
    if fmt in READS:
        if (tag_dir / "config.yaml").is_file():
            saved_config(tag_dir)
        return tag_dir
    if isinstance(fmt, int) and fmt > FORMAT:
        raise ConfigError(f"checkpoint {tag_dir} is in checkpoint format {fmt}, written by a newer release; this "
                          f"one reads format {', '.join(map(str, READS))}: upgrade the project to load it")  # fmt: skip
    raise ConfigError(f"checkpoint {tag_dir} is in checkpoint format {fmt!r}, which this release no longer reads "
                      f"(it reads {', '.join(map(str, READS))}): {MIGRATION}")  # fmt: skip


def resolve(path: str | Path, warn=print, best: bool = False, files: bool = True) -> Path:
    """A run directory, its checkpoints folder, or a tag folder -> the complete, intact tag folder
    to use. Given a run, a damaged newest checkpoint is skipped (``warn`` says why) for the newest
    intact one; given a damaged tag, the error names the bad file and the newest intact tag.
    ``best`` (commands that use a run's weights): the checkpoint named ``best`` where there is one.
    ``files=False`` (a preflight): only each checkpoint's record is read, not its files (see verify)."""
    path = Path(path)
    if (path / COMPLETE).is_file():
        problem = verify(path, files)
        if problem:
            other = newest_intact(path.parent, warn=lambda _: None, files=files)
            hint = f"the newest intact checkpoint is {other}" if other else "there is no intact checkpoint beside it"
            raise ConfigError(f"checkpoint {path} is damaged: {problem}; {hint}")
        return check_format(path)
    for root in (path, checkpoints_dir(path)):
        if complete_tags(root):
            chosen = best_tag(root) if best else None
            if chosen is not None:
                problem = verify(chosen, files) if is_complete(chosen) else f"{chosen} is incomplete"
                if problem is None:
                    return check_format(chosen)
                warn(f"warning: not using the best checkpoint {chosen.name}: {problem}")
            found = newest_intact(root, warn, files)
            if found is None:
                raise ConfigError(f"no intact checkpoint in {root}: every complete one failed its check (see above)")
            return check_format(found)
    if path.is_dir() and path.name.startswith("step_"):
        newest = newest_complete(path.parent)
        hint = f"the newest complete one is {newest}" if newest else "there is no complete checkpoint beside it"
        raise ConfigError(f"checkpoint {path} is incomplete (no {COMPLETE}: its save did not finish); {hint}")
    raise ConfigError(f"no complete checkpoint in {path} (looked for {COMPLETE} under {path} and {path}/checkpoints)")


def best_tag(root: Path) -> Path | None:
    """The tag folder the ``best`` pointer names (kept by runs that select a metric), or None."""
    pointer = root / "best"
    return root / pointer.read_text().strip() if pointer.is_file() else None


def describe(tag_dir: Path) -> str:
    """What a command says it used: "checkpoint RUN/checkpoints/step_N (best: val_accuracy 0.91)"."""
    chosen = best_tag(tag_dir.parent)
    if chosen is not None and chosen.name == tag_dir.name:
        return f"checkpoint {tag_dir} (best{_evaluation(tag_dir)})"
    if newest_complete(tag_dir.parent) == tag_dir:
        return f"checkpoint {tag_dir} (newest{_evaluation(tag_dir)})"
    return f"checkpoint {tag_dir}"


def _evaluation(tag_dir: Path) -> str:
    """": val_accuracy 0.91, val_loss 0.3" from the evaluation saved with a checkpoint, or ""."""
    try:
        state = saved_info(tag_dir).get("evaluation") or {}
    except (OSError, ValueError):
        return ""
    shown = ", ".join(f"{k} {v:.4g}" for k, v in state.items() if k != "step" and isinstance(v, float))
    return f": {shown}" if shown else ""


def file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(1 << 23):
            h.update(block)
    return h.hexdigest()


def manifest(tag_dir: Path, names: list[str]) -> dict[str, list]:
    """{relative path: [size, checksum]} of the given files, each fsynced first."""
    out = {}
    for name in names:
        path = tag_dir / name
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        out[name] = [path.stat().st_size, file_digest(path)]
    return out


def verify(tag_dir: Path, files: bool = True) -> str | None:
    """What is wrong with a complete checkpoint's files, or None. Checkpoints of earlier versions
    (no file list in complete.json) are taken as they are. ``files=False``: only its record
    (complete.json) is read, not the files it lists (a launcher's check of a large checkpoint;
    the processes read them through)."""
    try:
        listed = saved_info(tag_dir).get("files")
    except (OSError, ValueError) as e:
        return f"{tag_dir / COMPLETE} cannot be read ({e})"
    if not files:
        return None
    for name, (size, digest) in (listed or {}).items():
        path = tag_dir / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != size:
            return f"{path} has {path.stat().st_size} bytes, {size} were written"
        if file_digest(path) != digest:
            return f"{path} does not match its checksum (corrupted after it was written)"
    return None


def newest_intact(root: Path, warn=print, files: bool = True) -> Path | None:
    """The newest complete checkpoint that passes ``verify`` (``files``: its files too, else its
    record); each one skipped is warned about."""
    first = newest_complete(root)
    candidates = [first] if first is not None else []
    candidates += [root / t for t in reversed(complete_tags(root)) if first is None or t != first.name]
    for tag_dir in candidates:
        problem = verify(tag_dir, files)
        if problem is None:
            return tag_dir
        warn(f"warning: skipping checkpoint {tag_dir.name}: {problem}")
    return None


def set_aside_newer(resume: Path, warn=print) -> Path | None:
    """Resuming from ``resume`` while newer tags exist: move those (another timeline) into
    ``superseded-<time>/`` beside them, so that no save of the new timeline mixes with them."""
    root = resume.parent
    newer = [t for t in complete_tags(root) if t > resume.name]
    newer += [p.name for p in root.glob("step_*") if p.name > resume.name and not is_complete(p)
              and not p.name.endswith("_universal")]  # fmt: skip
    if not newer:
        return None
    aside = root / f"superseded-{time.strftime('%Y%m%d-%H%M%S')}"
    aside.mkdir()
    for name in sorted(set(newer)):
        os.rename(root / name, aside / name)
        if (root / f"{name}_universal").is_dir():
            os.rename(root / f"{name}_universal", aside / f"{name}_universal")
    write_atomic(root / "latest", resume.name)
    if (root / "best").exists() and (root / "best").read_text().strip() in newer:
        (root / "best").unlink()
    warn(f"warning: resuming from {resume.name}: the newer checkpoints {sorted(set(newer))} (another timeline) "
         f"were moved to {aside}")  # fmt: skip
    return aside


def saved_info(tag_dir: Path) -> dict:
    """What complete.json records (step, world size, each file's size and checksum); a ValueError
    when it is not such a record (edited, or another program's file of that name)."""
    info = json.loads((tag_dir / COMPLETE).read_text())
    if not isinstance(info, dict) or not all(isinstance(info.get(k), int) for k in ("step", "world_size")):
        raise ValueError(f"not a checkpoint's record: a JSON object with whole-number 'step' and 'world_size' "
                         f"expected, it holds {json.dumps(info)[:80]}")  # fmt: skip
    files = info.get("files")  # absent in checkpoints of earlier versions
    if files is not None and not (isinstance(files, dict) and all(
            isinstance(v, list) and len(v) == 2 and isinstance(v[0], int) and isinstance(v[1], str)
            for v in files.values())):  # fmt: skip
        raise ValueError(f"its 'files' is not {{name: [size, checksum]}}: {json.dumps(files)[:80]}")
    return info


def saved_config(tag_dir: Path) -> RunConfig:
    """The run-config sections of a checkpoint's config (a fine-tuning run's extra keys, such as
    init_from and task, are not needed to read its model, data or DeepSpeed settings)."""
    import dataclasses

    import yaml

    from pretrain.config import from_dict

    data = yaml.safe_load((tag_dir / "config.yaml").read_text())
    names = {f.name for f in dataclasses.fields(RunConfig)}
    try:
        return from_dict(RunConfig, {k: v for k, v in data.items() if k in names})
    except ConfigError as e:  # a key renamed or a value no longer valid since the release that wrote it
        raise ConfigError(f"the config of checkpoint {tag_dir} does not read in this release ({e}); {MIGRATION}") from e


def saved_task(tag_dir: Path) -> dict:
    """The task section of a checkpoint's config, as written ({} for a pretraining checkpoint)."""
    import yaml

    return (yaml.safe_load((tag_dir / "config.yaml").read_text()) or {}).get("task") or {}


def saved_head(task: dict) -> str:
    """task.head of a checkpoint's task section as written (saved_task): a classifier saved before
    the setting existed has the linear head."""
    return task.get("head", "linear")


def rng_state() -> dict:
    """Every RNG's state as plain JSON data (no pickle: a checkpoint must not be able to run code)."""
    version, key, gauss = random.getstate()
    kind, np_key, pos, has_gauss, cached = np.random.get_state()
    cuda = [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else None
    return {"python": [version, list(key), gauss], "numpy": [kind, np_key.tolist(), pos, has_gauss, cached],
            "torch": torch.get_rng_state().tolist(), "cuda": cuda}  # fmt: skip


def set_rng_state(state: dict) -> None:
    version, key, gauss = state["python"]
    random.setstate((version, tuple(key), gauss))
    kind, np_key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(np_key, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def load_rng_state(tag_dir: Path, rank: int) -> dict | None:
    """This rank's saved RNG states, or None when the checkpoint has none for it."""
    path = tag_dir / f"rank_state_{rank:05d}.json"
    if path.exists():
        return json.loads(path.read_text())
    legacy = tag_dir / f"rank_state_{rank:05d}.pt"
    if legacy.exists():
        from pretrain.safe_load import load_legacy_rank_state

        old = load_legacy_rank_state(legacy)
        version, key, gauss = old["python"]
        kind, np_key, pos, has_gauss, cached = old["numpy"]
        cuda = [s.tolist() for s in old["cuda"]] if old.get("cuda") is not None else None
        return {"python": [version, list(key), gauss], "numpy": [kind, np_key.tolist(), pos, has_gauss, cached],
                "torch": old["torch"].tolist(), "cuda": cuda}  # fmt: skip
    return None


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class Checkpointer:
    def __init__(self, cfg: CheckpointConfig, run_dir: Path, rank: int, world_size: int):
        self.cfg, self.root, self.rank, self.world = cfg, checkpoints_dir(run_dir), rank, world_size

    def due(self, step: int, last: bool) -> bool:
        return last or (self.cfg.every_steps > 0 and step % self.cfg.every_steps == 0)

    def save(self, engine, step: int, client_state: dict, run_config: RunConfig, tokenizer,
             extra_files: dict[str, str] | None = None, best: bool = False) -> Path:  # fmt: skip
        """Save a complete checkpoint; ``best`` also points ``best`` at it (never pruned). A save
        that fails removes what it wrote; on a full disk that is a CheckpointNotSaved saying so."""
        try:
            return self._save(engine, step, client_state, run_config, tokenizer, extra_files, best)
        except Exception as e:
            try:
                free = shutil.disk_usage(self.root).free
            except OSError:
                free = None
            shutil.rmtree(self.root / f".{tag_for(step)}.saving", ignore_errors=True)  # space for status.json
            if not _disk_full(e, free):
                raise
            newest = newest_complete(self.root)
            kept = f"{newest.name} is intact" if newest else "there is no earlier checkpoint"
            size = f"; a checkpoint of this run takes {_size(newest) / 2**20:,.1f} MiB" if newest else ""
            then = f"to resume from {newest.name}" if newest else "to start again"
            raise CheckpointNotSaved(
                f"checkpoint {tag_for(step)} not saved: the disk holding {self.root} is full "
                f"({(free or 0) / 2**20:,.1f} MiB free{size}); the partial save was removed and {kept}. Free "
                f"space (older checkpoints there can go; checkpoint.keep_last, now {self.cfg.keep_last}, caps how "
                f"many are kept), then run the same command again {then}"
            ) from e

    def _save(self, engine, step: int, client_state: dict, run_config: RunConfig, tokenizer,
              extra_files: dict[str, str] | None, best: bool) -> Path:  # fmt: skip
        tag = tag_for(step)
        final = self.root / tag
        work_tag = f".{tag}.saving"
        tag_dir = self.root / work_tag
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tag_dir, ignore_errors=True)  # left by a save that died: start it afresh
        _barrier()
        # universal_checkpoint_info lets ds_to_universal re-shard this save for another world size.
        engine.save_checkpoint(
            str(self.root), tag=work_tag, client_state={"pretrain": client_state, "universal_checkpoint_info": {}},
            save_latest=False,
        )  # fmt: skip
        write_atomic(tag_dir / f"rank_state_{self.rank:05d}.json", json.dumps(rng_state()))
        _barrier()  # every rank's files are there
        mine = [f.name for f in tag_dir.iterdir() if f.is_file() and _written_by(f.name) == self.rank]
        files = manifest(tag_dir, mine)  # fsynced, with sizes and checksums (each rank its own shards)
        if self.rank == 0:
            save_config(run_config, tag_dir / "config.yaml")
            if tokenizer is not None:
                tokenizer.save_pretrained(str(tag_dir / "tokenizer"))
            for name, text in (extra_files or {}).items():
                (tag_dir / name).write_text(text)
            ours = [str(f.relative_to(tag_dir)) for f in tag_dir.rglob("*") if f.is_file()]
            files.update(manifest(tag_dir, [n for n in ours if "/" in n or n in ("config.yaml", *(extra_files or {}))]))
        if dist.is_available() and dist.is_initialized() and self.world > 1:
            gathered = [None] * self.world
            dist.all_gather_object(gathered, files)
            files = {k: v for part in gathered for k, v in part.items()}
        if self.rank == 0:
            info = {"format": FORMAT, "step": step, "world_size": self.world, "time": time.time(), "files": files,
                    "data_samples": (client_state.get("data") or {}).get("num_samples"),
                    "evaluation": {k: v for k, v in ((client_state.get("trainer") or {}).get("last_eval") or {}).items()
                                   if isinstance(v, int | float)}}  # fmt: skip
            write_atomic(tag_dir / COMPLETE, json.dumps(info))
            if final.exists():  # the same step saved by an earlier timeline: keep it, named, beside
                os.rename(final, self.root / f"replaced-{time.strftime('%Y%m%d-%H%M%S')}-{tag}")
            os.rename(tag_dir, final)
            fsync_dir(self.root)
            write_atomic(self.root / "latest", tag)
            if best:
                write_atomic(self.root / "best", tag)
            self.prune()
        _barrier()
        return final

    def mark_best(self, step: int) -> None:
        """Point ``best`` at the complete checkpoint of ``step``, already saved."""
        if self.rank == 0:
            write_atomic(self.root / "best", tag_for(step))

    def prune(self) -> None:
        """Keep the newest keep_last complete tags; drop unfinished saves older than the newest
        (``.step_N.saving`` of a save that was killed, or a tag without its completion mark)."""
        tags = complete_tags(self.root)
        pinned = {(self.root / f).read_text().strip() for f in ("latest", "best") if (self.root / f).exists()}
        for tag in tags[: -self.cfg.keep_last]:
            if tag not in pinned:
                shutil.rmtree(self.root / tag, ignore_errors=True)
                shutil.rmtree(self.root / f"{tag}_universal", ignore_errors=True)
        newest = tags[-1] if tags else None
        for p in self.root.iterdir():
            saving = p.name.startswith(".step_") and p.name.endswith(".saving")  # a save that was killed
            tag = p.name[1 : -len(".saving")] if saving else p.name
            unmarked = tag.startswith("step_") and not tag.endswith("_universal") and not is_complete(p)
            if p.is_dir() and (saving or unmarked) and newest and tag < newest:
                shutil.rmtree(p, ignore_errors=True)


class CheckpointNotSaved(OSError):
    """A checkpoint could not be written for want of space; what it had written is removed."""


def _disk_full(error: BaseException, free: int | None) -> bool:
    """Whether a failed save ran out of space: ENOSPC (or a quota) anywhere in the exception's
    chain, or, as torch's zip writer reports a short write without an errno ("unexpected pos"), next
    to nothing left on the disk."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    return free is not None and free < 16 * 2**20


def _size(tag_dir: Path) -> int:
    return sum(f.stat().st_size for f in tag_dir.rglob("*") if f.is_file())


def _written_by(name: str) -> int:
    """The rank that writes a checkpoint file: its own ZeRO shards and RNG state; rank 0 the rest."""
    m = re.search(r"(?:pp_rank_|rank_state_)0*(\d+)", name)
    return int(m.group(1)) if m else 0


def universal_tag(tag_dir: Path) -> str:
    """Make (once) the universal form of a checkpoint, for loading at another world size.

    Rank 0 converts with DeepSpeed's ds_to_universal into a temporary folder renamed when done.
    """
    out = tag_dir.parent / f"{tag_dir.name}_universal"
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0 and not out.is_dir():
        tmp = tag_dir.parent / f".{out.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [sys.executable, "-m", "pretrain.safe_load", "deepspeed.checkpoint.ds_to_universal",
               "--input_folder", str(tag_dir), "--output_folder", str(tmp),
               "--num_extract_workers", "1", "--num_merge_workers", "1"]  # fmt: skip
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


def loads_universal(old: DeepSpeedSection, new: DeepSpeedSection, old_world: int, new_world: int) -> bool:
    """Whether a checkpoint saved under ``old`` by ``old_world`` processes loads under ``new`` at
    ``new_world`` through its universal form (DeepSpeed's ds_to_universal: every parameter's fp32
    weights and Adam moments, whole) rather than as saved; a ConfigError names a change it cannot
    load at all. What DeepSpeed 0.19 loads (each tried here, one CPU process, fp32/bf16):

    - ZeRO 1 and 2 share one layout: either loads the other's checkpoint as saved, offload or not;
    - another world size or precision (fp32 <-> bf16) at ZeRO 1-3: the universal form;
    - ZeRO-0 keeps the whole optimizer in the format of its precision, which no other stage or
      precision reads; ZeRO-3's universal files differ from ZeRO 1-2's, so neither loads the other;
    - fp16 carries its dynamic loss scale, which a bf16/fp32 checkpoint's static scale of 1 would
      replace, so precision changes to or from fp16 are refused.
    """
    stage = f"deepspeed.zero_stage changed {old.zero_stage} -> {new.zero_stage}"
    precision = f"deepspeed.precision changed {old.precision} -> {new.precision}"
    again = f"resume with deepspeed.zero_stage={old.zero_stage} deepspeed.precision={old.precision}, or start a new run"
    if old.precision != new.precision and "fp16" in (old.precision, new.precision):
        raise ConfigError(f"{precision}: fp16 keeps a dynamic loss scale that the other precisions do not save "
                          f"or read; {again}")  # fmt: skip
    if 0 in (old.zero_stage, new.zero_stage) and (old.zero_stage, old.precision) != (new.zero_stage, new.precision):
        what = stage if old.zero_stage != new.zero_stage else precision
        if old.zero_stage == 0:
            why = f"a ZeRO-0 checkpoint holds the whole optimizer in {old.precision}'s own format, which only ZeRO-0 "
            why += f"in {old.precision} loads"
        else:
            why = f"ZeRO-0 loads only ZeRO-0 checkpoints of its own precision, and this one is ZeRO-{old.zero_stage}"
        raise ConfigError(f"{what}: {why}; {again}")
    if (old.zero_stage == 3) != (new.zero_stage == 3):
        raise ConfigError(f"{stage}: DeepSpeed loads ZeRO-3 checkpoints at ZeRO-3 only, and ZeRO-1/2 ones at "
                          f"ZeRO-1/2 only; {again}")  # fmt: skip
    return old.zero_stage > 0 and (old_world != new_world or old.precision != new.precision)


def compare_for_resume(old: RunConfig, new: RunConfig, old_world: int, new_world: int, warn,
                       step: int | None = None) -> dict:
    """Refuse a different model shape; warn about what changes meaning on resume.

    Returns which saved states still apply and how the checkpoint loads: {"data": bool,
    "universal": bool} (see loads_universal).
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
    keep = {"data": True, "universal": loads_universal(old.deepspeed, new.deepspeed, old_world, new_world)}
    if old.deepspeed.precision != new.deepspeed.precision:
        warn(f"deepspeed.precision changed {old.deepspeed.precision} -> {new.deepspeed.precision}: the weights and "
             "AdamW moments continue from the checkpoint's fp32 values, through DeepSpeed's universal form")
    if old.data.seq_len != new.data.seq_len:
        warn(f"data.seq_len changed {old.data.seq_len} -> {new.data.seq_len}: the saved data position counts "
             f"sequences of the old length, so the data stream starts again from its beginning")  # fmt: skip
        keep["data"] = False
    schedule = ("lr", "warmup_steps", "max_steps", "decay", "min_lr_ratio")
    moved = [k for k in schedule if getattr(old.train, k) != getattr(new.train, k)]
    if moved and step is not None:
        from pretrain.engine import lr_lambda

        was, now = old.train.lr * lr_lambda(old.train)(step), new.train.lr * lr_lambda(new.train)(step)
        diff = ", ".join(f"train.{k}: {getattr(old.train, k)} -> {getattr(new.train, k)}" for k in moved)
        warn(f"the learning-rate schedule changed ({diff}): from step {step + 1} it follows the new one, so the "
             f"lr goes from {was:.3g} to {now:.3g}; to stop early without changing the schedule, keep it and set "
             f"train.stop_at_step")  # fmt: skip
    old_global = old.train.global_batch_size or old.train.micro_batch_size * old_world
    new_global = new.train.global_batch_size or new.train.micro_batch_size * new_world
    if old_global != new_global:
        warn(f"global batch changed {old_global} -> {new_global} sequences: the data continues from the same "
             f"sample; each step from here on takes {new_global}")  # fmt: skip
    return keep

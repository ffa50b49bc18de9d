"""One pretraining run, in every process of it: setup -> resume -> fit.

Rank 0 prepares what is shared on disk (resolved config, tokenizer, packed data) while the others
wait at a barrier, then every rank builds the same model and engine and trains.
"""

from __future__ import annotations

import os
import shutil
import warnings

import torch
import torch.distributed as dist

from pretrain import checkpoint as ckpt
from pretrain.config import ConfigError, RunConfig, save_config, to_dict
from pretrain.engine import deepspeed_config, init_distributed, initialize, repair_loaded_optimizer


def find_resume(cfg: RunConfig):
    """The checkpoint folder this run continues from, or None for a fresh start."""
    if cfg.train.resume == "never":
        existing = ckpt.newest_complete(ckpt.checkpoints_dir(cfg.run_dir))
        if existing is not None:
            raise ConfigError(
                f"train.resume=never but {cfg.run_dir} already has checkpoint {existing.name}; "
                "choose another name= or output_dir=, or resume with train.resume=auto"
            )
        return None
    if cfg.train.resume == "auto":
        return ckpt.newest_complete(ckpt.checkpoints_dir(cfg.run_dir))
    return ckpt.resolve(cfg.train.resume)


def run(cfg: RunConfig) -> None:
    from pretrain.data.pipeline import batches, run_tokenizer
    from pretrain.model import Transformer, count_parameters, flops_per_token
    from pretrain.monitor import Monitor
    from pretrain.trainer import Trainer

    grad_accum = cfg.check_world_size(int(os.environ.get("WORLD_SIZE", "1")))  # before DeepSpeed starts
    rank, world = init_distributed()
    say = print if rank == 0 else (lambda *a, **k: None)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True)
    run_dir = cfg.run_dir
    resume = find_resume(cfg)
    keep = {"data": True}
    if resume is not None:
        keep = ckpt.compare_for_resume(
            ckpt.saved_config(resume), cfg, ckpt.saved_info(resume)["world_size"], world, lambda m: say(f"warning: {m}")
        )
    arch = cfg.model.arch

    # Shared preparation on rank 0: config, tokenizer, packed data. The others then read it.
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        if resume is not None and not (run_dir / "tokenizer").exists():
            shutil.copytree(resume / "tokenizer", run_dir / "tokenizer")
    for turn in ((0,), tuple(range(1, world))):
        if rank in turn:
            tok = run_tokenizer(cfg.data, arch, cfg.model.vocab_size, run_dir, log=say)
            seed = cfg.train.seed
            micro = cfg.train.micro_batch_size
            train_b = batches(cfg.data, tok, arch, "train", micro, rank, world, seed, log=say)
            val_b = batches(cfg.data, tok, arch, "validation", micro, rank, world, seed, log=say) \
                if cfg.train.eval_every else None  # fmt: skip
        if world > 1:
            dist.barrier()

    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
    model = Transformer(cfg.model)
    model.activation_checkpointing = cfg.train.activation_checkpointing
    saved_world = ckpt.saved_info(resume)["world_size"] if resume is not None else world
    ds_config = deepspeed_config(cfg.deepspeed, cfg.train, world, grad_accum)
    if saved_world != world:
        ds_config["checkpoint"] = {"load_universal": True}
    engine = initialize(model, ds_config, cfg.train)
    if cfg.train.compile:
        if torch.cuda.is_available():
            engine.compile()
        else:
            warnings.warn("train.compile=true has no effect on CPU; the model runs uncompiled", stacklevel=1)
    torch.manual_seed(cfg.train.seed + rank)  # dropout differs across ranks

    fpt = flops_per_token(model, cfg.data.seq_len)
    start_step = 0
    state = None
    if resume is not None:
        tag = resume.name if saved_world == world else ckpt.universal_tag(resume)
        say(f"resuming from {resume} (saved by {saved_world} process(es), now {world})")
        _, client = engine.load_checkpoint(str(resume.parent), tag=tag, load_module_strict=True)
        repair_loaded_optimizer(engine, cfg.train)
        state = client["pretrain"]
        start_step = state["trainer"]["step"]
        if keep["data"]:
            train_b.load_state_dict(state["data"])
        rank_file = resume / f"rank_state_{rank:05d}.pt"
        if saved_world == world and rank_file.exists():
            ckpt.set_rng_state(torch.load(rank_file, weights_only=False))

    say(f"training {cfg.model.arch} ({count_parameters(model):,} parameters) on {world} "
        f"process(es), ZeRO-{cfg.deepspeed.zero_stage}, {cfg.deepspeed.precision}, {grad_accum} accumulation "
        f"step(s), from step {start_step} to {cfg.train.max_steps}")  # fmt: skip
    monitor = Monitor(cfg.log, run_dir, rank, world, fpt, to_dict(cfg), cfg.train.max_steps, start_step)
    saver = ckpt.Checkpointer(cfg.checkpoint, run_dir, rank, world)

    def checkpoint(step: int, last: bool) -> bool:
        if not saver.due(step, last):
            return False
        saver.save(engine, step, {"trainer": trainer.state_dict(), "data": train_b.state_dict()}, cfg, tok)
        return True

    trainer = Trainer(cfg.train, engine, train_b, val_b, monitor, checkpoint, grad_accum, cfg.data.seq_len,
                      cfg.train.eval_every, cfg.log.every_steps)  # fmt: skip
    if state is not None:
        trainer.load_state_dict(state["trainer"])
    try:
        trainer.fit()
    finally:
        lines = monitor.close()
    if rank == 0:
        newest = ckpt.newest_complete(ckpt.checkpoints_dir(run_dir))
        last = trainer.last_eval
        shown = f"val_loss {last['val_loss']:.3f}, val_ppl {last['val_ppl']:.1f}" if last else "no evaluation"
        print(f"\ndone: step {trainer.step}; {shown}")
        print(f"run directory: {run_dir}")
        print(f"checkpoints: {ckpt.checkpoints_dir(run_dir)} (newest: {newest.name if newest else 'none'})")
        for line in lines:
            print(line)

"""One training run, in every process of it: setup -> resume -> fit.

What differs between pretraining and fine-tuning is a *task*: it prepares the data (rank 0 first,
the others after a barrier, so shared files are written once), builds the model, and says how to
compute the loss and the evaluation metrics. Everything else — the DeepSpeed engine, resume,
checkpoints, monitoring and the loop — is this one function.

A task has: ``check_data()`` (its local files readable, before any process group);
``prepare(rank, world, run_dir, say)`` setting ``train_batches``, ``val_batches`` and
``tokenizer``; ``build_model()``; ``loss_fn``; ``eval_metrics(sums)``; ``select_metric`` (a
(name, max|min) pair or None) for keeping the best checkpoint; ``lr_scale(param_name)``;
and ``extra_files()``.
"""

from __future__ import annotations

import faulthandler
import os
import shutil
import signal
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from pretrain import checkpoint as ckpt
from pretrain.config import ConfigError, RunConfig, TrainConfig, save_config, to_dict
from pretrain.data.config import DataConfig
from pretrain.engine import (
    check_precision,
    deepspeed_config,
    init_distributed,
    initialize,
    leave_process_group,
    param_groups,
    partitioned_construction,
    repair_loaded_optimizer,
)
from pretrain.files import writable_folder
from pretrain.hostmem import keep_freed_memory
from pretrain.model.config import ModelConfig
from pretrain.status import running_here, write_heartbeat, write_status
from pretrain.stops import STOPPED_EXIT, Stopped, stops_raise


class LanguageModelTask:
    """Pretraining on packed token shards: causal LM for decoders, masked LM for encoders, T5's span
    corruption for encoder-decoders.

    A task gets the sections it reads. What run() asks of one: ``model_cfg`` (the shape it trains),
    check_data, prepare, build_model, loss_fn, eval_metrics, select_metric, lr_scale, extra_files,
    and after prepare ``tokenizer``, ``train_batches``, ``val_batches``."""

    select_metric = None

    def __init__(self, model: ModelConfig, data: DataConfig, train: TrainConfig, run_dir: Path | None = None):
        from pretrain.trainer import lm_loss, seq2seq_loss

        self.model_cfg, self.data, self.train, self.run_dir = model, data, train, run_dir
        self.loss_fn = seq2seq_loss if model.arch == "encoder-decoder" else lm_loss

    @classmethod
    def for_run(cls, cfg: RunConfig) -> LanguageModelTask:
        return cls(cfg.model, cfg.data, cfg.train, Path(cfg.run_dir))

    def prepare(self, rank: int, world: int, run_dir, say) -> None:
        from pretrain.data.pipeline import batches, run_tokenizer

        data, arch = self.data, self.model_cfg.arch
        self.tokenizer = run_tokenizer(data, arch, self.model_cfg.vocab_size, run_dir, log=say)
        micro, seed = self.train.micro_batch_size, self.train.seed
        self.train_batches = batches(data, self.tokenizer, arch, "train", micro, rank, world, seed, log=say)
        self.val_batches = None
        if self.train.eval_every and not data.has_validation():
            say("warning: no validation data (data.validation_fraction=0 and no source gives validation_files or "
                "validation_split): evaluation is off")  # fmt: skip
        elif self.train.eval_every:
            self.val_batches = batches(data, self.tokenizer, arch, "validation", micro, rank, world, seed, log=say)

    def check_data(self) -> None:
        from pretrain.data.sources import check_local_sources

        check_local_sources(self.data)
        if self._takes_configured_tokenizer():  # a trained tokenizer is checked as it is made
            from pretrain.data.pipeline import configured_tokenizer

            configured_tokenizer(self.data, self.model_cfg.arch, self.model_cfg.vocab_size)

    def _takes_configured_tokenizer(self) -> bool:
        """Whether this start loads data.tokenizer.path: a new run does; a resume takes the tokenizer
        its run or checkpoint saved, even where the configured file has gone since."""
        if not self.data.tokenizer.path or self.run_dir is None or self.train.resume not in ("auto", "never"):
            return False
        return not (self.run_dir / "tokenizer").exists() and not ckpt.complete_tags(ckpt.checkpoints_dir(self.run_dir))

    def build_model(self, gather=None):
        """The model, initialised; ``gather`` (ZeRO-3) when it is built partitioned, see
        pretrain.engine.partitioned_construction."""
        from pretrain.model import build_model

        return build_model(self.model_cfg, gather)

    @staticmethod
    def eval_metrics(sums: dict) -> dict:
        import math

        val = sums["loss_sum"] / max(sums["count"], 1)
        return {"val_loss": val, "val_ppl": math.exp(min(val, 50.0)),
                "val_accuracy": sums["correct"] / max(sums["count"], 1)}  # fmt: skip

    def lr_scale(self, name: str) -> float:
        return 1.0

    def extra_files(self) -> dict[str, str]:
        return {}

    def check_resume(self, resume: Path) -> None:
        """A ConfigError where checkpoint ``resume`` holds a model other than this task builds."""


def find_resume(cfg: RunConfig, rank: int = 0, world: int = 1):
    """The checkpoint folder this run continues from, or None for a fresh start. Rank 0 chooses
    (skipping damaged checkpoints) and tells the others, so every rank loads the same one or raises
    the same error."""
    choice: list = [None]
    if rank == 0:
        try:
            choice[0] = ("ok", choose_resume(cfg))
        except ConfigError as e:
            choice[0] = ("error", str(e))
    if world > 1:
        dist.broadcast_object_list(choice, src=0)
    status, value = choice[0]
    if status == "error":
        raise ConfigError(value)
    return value


def refuse_if_running(cfg: RunConfig) -> None:
    """A ConfigError when another run of this directory is still training on this host: two writers
    would interleave their metrics and prune each other's checkpoints."""
    other = running_here(cfg.run_dir)
    if other is not None:
        raise ConfigError(
            f"{cfg.run_dir} is in use: its run is still training on this host (pid {other['pid']}, started "
            f"{time.time() - other.get('started', time.time()):.0f}s ago); stop it first (kill -TERM {other['pid']} "
            "saves a checkpoint of its step) or choose another name="
        )


def check_run_folders(cfg: RunConfig) -> None:
    """A ConfigError when the run's folders (the run directory, the data cache) cannot be made
    where they are asked for."""
    for field, folder in (("output_dir", cfg.output_dir), ("data.cache_dir", cfg.data.cache_dir)):
        writable_folder(field, folder)


def _resumes_here(cfg: RunConfig, resume) -> bool:
    """Whether ``resume`` is a checkpoint of this run (not one given from elsewhere)."""
    return resume is not None and resume.parent.resolve() == ckpt.checkpoints_dir(cfg.run_dir).resolve()


def choose_resume(cfg: RunConfig, files: bool = True, warn=print):
    """The checkpoint train.resume names (auto: the run's newest intact one; never: none, and a
    refusal if one exists), or None; ``files=False`` (the launcher's preflight) reads each
    checkpoint's record but not its files through."""
    check_run_folders(cfg)
    refuse_if_running(cfg)
    root = ckpt.checkpoints_dir(cfg.run_dir)
    if cfg.train.resume == "never":
        existing = ckpt.newest_complete(root)
        if existing is not None:
            raise ConfigError(
                f"train.resume=never but {cfg.run_dir} already has checkpoint {existing.name}; "
                "choose another name= or output_dir=, or resume with train.resume=auto"
            )
        return None
    if cfg.train.resume == "auto":
        if not ckpt.complete_tags(root):
            return None
        resume = ckpt.newest_intact(root, warn, files)
        if resume is None:
            raise ConfigError(f"every checkpoint in {root} is damaged (see the warnings above); "
                              "set train.resume=never with another name= to start over")  # fmt: skip
        ckpt.check_format(resume)
    else:
        resume = ckpt.resolve(cfg.train.resume, warn, files=files)
    return resume


PEER_GONE = ("Connection closed by peer", "Connection reset by peer")
"""What gloo says when another rank's process is gone: not this rank's story to tell at length."""


class _Unfailing:
    """A standard stream whose writes that fail are dropped: when the terminal a run prints to goes
    away (an ssh session dropped), each print raised EIO and ended training with the output lost
    anyway; the run now goes on to its next checkpoint, or to the stop that SIGHUP asks for."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError:
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError:
            pass

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def run(cfg: RunConfig, make_task=LanguageModelTask.for_run) -> None:
    try:
        _run_process(cfg, make_task)
    except Stopped as e:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"stopped on {e} before training began: nothing to save; the same command starts it again",
                  file=sys.stderr)  # fmt: skip
        sys.exit(STOPPED_EXIT)


def _run_process(cfg: RunConfig, make_task) -> None:
    # Python stacks of every thread on a fatal signal (NCCL's watchdog aborts on a collective
    # timeout) and on SIGUSR1, which the launcher sends to every rank before it stops a failed job.
    faulthandler.enable()
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    if not isinstance(sys.stdout, _Unfailing):  # wrapped once, however often a process calls run
        sys.stdout, sys.stderr = _Unfailing(sys.stdout), _Unfailing(sys.stderr)
    grad_accum = cfg.check_world_size(int(os.environ.get("WORLD_SIZE", "1")))  # before DeepSpeed starts
    if not torch.cuda.is_available():
        keep_freed_memory()  # steps on CPU reuse freed blocks instead of faulting in new pages
    with stops_raise():
        task = make_task(cfg)
        cfg = cfg.with_model(task.model_cfg)  # fine-tuning trains init_from's shape: checked against it
        task.check_data()  # a bad file is one line from here, before any process group ties the ranks together
        check_precision(cfg.deepspeed.precision, torch.cuda.is_available())
        rank, world = init_distributed(cfg.train.dist_timeout_s)
        resume = find_resume(cfg, rank, world)  # a refusal here leaves the run directory as it was
    if rank != 0:
        try:
            _, stopped = _run(cfg, task, rank, world, grad_accum, resume)
        except Exception as e:
            if any(s in str(e) for s in PEER_GONE):  # rank 0 (or another) ended first and said why
                print(f"rank {rank}: stopped, another process of the job ended ({str(e).splitlines()[0][:200]})",
                      file=sys.stderr)  # fmt: skip
                sys.exit(1)
            raise
        leave_process_group()
        if stopped:
            sys.exit(STOPPED_EXIT)
        return
    started = False

    def ready() -> None:
        """Rank 0, once the data is prepared: only from here on does the run directory change, so a
        command that fails earlier (bad data, a refused checkpoint) leaves an existing run as it was."""
        nonlocal started
        if _resumes_here(cfg, resume):
            ckpt.set_aside_newer(resume)  # resuming from an older tag: the newer timeline goes aside
        save_config(cfg, cfg.run_dir / "config.yaml")
        write_status(cfg.run_dir, "running", world_size=world)  # for `python -m launch runs`
        started = True

    try:
        step, stopped = _run(cfg, task, rank, world, grad_accum, resume, ready)
    except BaseException as e:
        if started:
            state, error = ("stopped", f"stopped on {e} before training began") if isinstance(e, Stopped) else (
                "failed", f"{type(e).__name__}: {e}"[:2000])  # fmt: skip
            try:
                write_status(cfg.run_dir, state, error=error)
            except OSError as status_error:  # a full disk, say: report it, but raise the cause
                print(f"warning: could not record the failure in status.json ({status_error})", file=sys.stderr)
        raise
    if stopped:  # status.json says so already
        leave_process_group()
        sys.exit(STOPPED_EXIT)
    write_status(cfg.run_dir, "finished", step=step)
    leave_process_group()


def _run(cfg: RunConfig, task, rank: int, world: int, grad_accum: int, resume, ready=None) -> tuple[int, str]:
    """Setup, resume and fit in one process; returns the last step and, for a run stopped on a
    signal, why (else ""). ``ready`` (rank 0) is called once the data is prepared."""
    say = print if rank == 0 else (lambda *a, **k: None)
    with stops_raise():
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True)
        keep = _prepare_data(cfg, task, rank, world, resume, ready, say)
        saved_world = ckpt.saved_info(resume)["world_size"] if resume is not None else world
        # ZeRO-1-3 shards are per rank and per precision: another world size or precision loads their
        # universal form (ckpt.loads_universal). A ZeRO-0 checkpoint holds the whole model and optimizer
        # in one file, which any world size loads as it is.
        universal = keep["universal"]
        engine, weight_decays = _build_engine(cfg, task, world, grad_accum, universal, say)
        torch.manual_seed(cfg.train.seed + rank)  # dropout differs across ranks
        state = None
        if resume is not None:
            how = "; loading its universal form" if universal else ""
            say(f"resuming from {resume} (saved by {saved_world} process(es), now {world}{how})")
            state = _load_checkpoint(engine, resume, universal, weight_decays)
            if keep["data"]:
                task.train_batches.load_state_dict(state["data"])
            rng = ckpt.load_rng_state(resume, rank) if saved_world == world else None
            if rng is not None:
                ckpt.set_rng_state(rng)
    saved_step = state["trainer"]["step"] if _resumes_here(cfg, resume) else None
    return _fit(cfg, task, engine, rank, world, grad_accum, state, say, saved_step)


def _prepare_data(cfg: RunConfig, task, rank: int, world: int, resume, ready, say) -> dict:
    """Tokenizer and data on rank 0 first, then the others read what it made; rank 0 then marks the
    run started (``ready``). Returns what ckpt.compare_for_resume says of the checkpoint: whether
    the resume keeps its data position, and whether it loads through the universal form."""
    run_dir = cfg.run_dir
    keep = {"data": True, "universal": False}
    if resume is not None:
        info = ckpt.saved_info(resume)
        keep = ckpt.compare_for_resume(ckpt.saved_config(resume), cfg, info["world_size"], world,
                                       lambda m: say(f"warning: {m}"), step=info["step"])  # fmt: skip
        task.check_resume(resume)
    if rank == 0 and resume is not None and (resume / "tokenizer").exists():
        from pretrain.data.pipeline import load_saved_tokenizer

        if load_saved_tokenizer(run_dir / "tokenizer", say, f"restored from {resume}") is None:  # the checkpoint's
            shutil.copytree(resume / "tokenizer", run_dir / "tokenizer")  # appears only with what goes in it
    for turn in ((0,), tuple(range(1, world))):
        if rank in turn:
            task.prepare(rank, world, run_dir, say)
        if world > 1:
            dist.barrier()
    if resume is not None and keep["data"] and ckpt.saved_info(resume).get("data_samples") is not None:
        # before anything of the run is rewritten: the data must be the checkpoint's
        task.train_batches.check_resumable(ckpt.saved_info(resume)["data_samples"])
    if rank == 0:
        ready()
        for name, text in task.extra_files().items():
            (run_dir / name).write_text(text)
    return keep


def _build_engine(cfg: RunConfig, task, world: int, grad_accum: int, universal: bool, say):
    """The model (partitioned as it is built under ZeRO-3) inside a DeepSpeed engine; also each
    parameter group's weight decay, which a loaded checkpoint's optimizer state may not keep."""
    from pretrain.model.flops import numel

    ds_config = deepspeed_config(cfg.deepspeed, cfg.train, world, grad_accum)
    if universal:
        ds_config["checkpoint"] = {"load_universal": True}
    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
    construction, gather = partitioned_construction(ds_config)
    with construction:
        model = task.build_model(gather)
    if gather is not None:
        say("built the model partitioned across the ranks (ZeRO-3, deepspeed.zero.Init)")
    trainable = sum(numel(p) for p in model.parameters() if p.requires_grad)
    total = sum(numel(p) for p in model.parameters())
    if trainable < total:  # a frozen body, or LoRA adapters
        say(f"{trainable:,} of {total:,} parameters train; the rest are frozen")
    getattr(model, "body", model).activation_checkpointing = cfg.train.activation_checkpointing
    groups = param_groups(model, cfg.train.weight_decay, cfg.train.lr, task.lr_scale)
    weight_decays = [g["weight_decay"] for g in groups]  # before DeepSpeed holds (and may rewrite) them
    engine = initialize(model, ds_config, cfg.train, groups)
    if cfg.train.compile:
        if torch.cuda.is_available():
            engine.compile()
        else:
            warnings.warn("train.compile=true has no effect on CPU; the model runs uncompiled", stacklevel=1)
    return engine, weight_decays


def _load_checkpoint(engine, resume, universal: bool, weight_decays: list[float]) -> dict:
    """Weights, optimizer and scheduler from ``resume`` into the engine; returns what the run saved
    beside them (trainer and data state)."""
    from pretrain import safe_load

    safe_load.install(engine)
    tag = ckpt.universal_tag(resume) if universal else resume.name
    with safe_load.restricted_torch_load():  # also DeepSpeed's universal loaders, which bypass the engine's
        _, client = engine.load_checkpoint(str(resume.parent), tag=tag, load_module_strict=True)
    repair_loaded_optimizer(engine, weight_decays)
    return client["pretrain"]


def _fit(cfg: RunConfig, task, engine, rank: int, world: int, grad_accum: int, state, say,
         saved_step: int | None) -> tuple[int, str]:  # fmt: skip
    """Train from the resumed state (or step 0) to the end, saving as configured; rank 0 prints
    where everything is. ``saved_step``: the step resumed from, when its checkpoint is this run's."""
    from pretrain.model import count_parameters, flops_per_token
    from pretrain.monitor import Monitor
    from pretrain.trainer import Trainer

    run_dir = cfg.run_dir
    body = getattr(engine.module, "body", engine.module)
    start_step = state["trainer"]["step"] if state is not None else 0
    say(f"training {cfg.model.arch} ({count_parameters(body):,} parameters) on {world} "
        f"process(es), ZeRO-{cfg.deepspeed.zero_stage}, {cfg.deepspeed.precision}, {grad_accum} accumulation "
        f"step(s), from step {start_step} to {cfg.train.max_steps}")  # fmt: skip
    fpt = lambda predicted_fraction: flops_per_token(body, cfg.data.seq_len, predicted_fraction)  # for MFU
    monitor = Monitor(cfg.log, run_dir, rank, world, fpt, to_dict(cfg), cfg.train.max_steps, start_step,
                      precision=cfg.deepspeed.precision, wandb_timeout_s=min(30.0, cfg.train.dist_timeout_s / 3))
    saver = ckpt.Checkpointer(cfg.checkpoint, run_dir, rank, world)

    def checkpoint(trainer, last: bool, best: bool = False) -> bool:
        if not (saver.due(trainer.step, last) or best):
            return False
        if trainer.step == saved_step:  # the checkpoint resumed from, evaluated again (Trainer._fit): kept
            if best:
                saver.mark_best(trainer.step)
            return False
        client = {"trainer": trainer.state_dict(), "data": task.train_batches.state_dict()}
        saver.save(engine, trainer.step, client, cfg, task.tokenizer, task.extra_files(), best=best)
        return True

    trainer = Trainer(cfg.train, engine, task.train_batches, task.val_batches, monitor, checkpoint, grad_accum,
                      cfg.train.eval_every, cfg.log.every_steps, task.loss_fn, task.eval_metrics, task.select_metric,
                      heartbeat=lambda step: write_heartbeat(run_dir, rank, step),
                      inspect_every=cfg.log.inspect_every if cfg.log.tensorboard else 0)  # fmt: skip
    if state is not None:
        trainer.load_state_dict(state["trainer"])
    # SIGTERM (torchrun passes it on from Slurm's time-limit trap, a preempting scheduler or a
    # Kubernetes pod's deletion): finish the step, save it on every rank together, end with 143.
    # SIGHUP (its terminal went away; torchrun passes it on) and Ctrl-C (SIGINT) do the same; a
    # second Ctrl-C stops at once, without saving.
    def interrupted(*_) -> None:
        if trainer.stopped:  # saved: it ends by itself
            return
        if trainer.stop_requested:
            raise KeyboardInterrupt
        trainer.request_stop("SIGINT (Ctrl-C)")
        say("Ctrl-C: finishing this step and saving a checkpoint of it (Ctrl-C again stops at once, without saving)")

    handlers = {signal.SIGTERM: lambda *_: trainer.request_stop("SIGTERM"),
                signal.SIGHUP: lambda *_: trainer.request_stop("SIGHUP"), signal.SIGINT: interrupted}  # fmt: skip
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()
                if signal.getsignal(sig) is not signal.SIG_IGN}  # started ignoring it (nohup): it stays ignored
    try:
        trainer.fit()
    except BaseException:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        raise
    finally:
        lines = monitor.close()
    if not trainer.stopped:  # a stopped run ends by itself, whatever more SIGTERMs come (torchrun sends them)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if rank == 0:
        _print_summary(run_dir, trainer, lines)
    if trainer.stopped:
        if rank == 0:
            why = f"{trainer.stopped}; the same command resumes from it"
            write_status(run_dir, "stopped", step=trainer.step, error=why)
        if world > 1:  # no rank ends (and has torchrun stop the rest) before the status says stopped
            dist.barrier()
    return trainer.step, trainer.stopped


def _print_summary(run_dir, trainer, lines: list[str]) -> None:
    root = ckpt.checkpoints_dir(run_dir)
    newest = ckpt.newest_complete(root)
    shown = ", ".join(f"{k} {v:.4g}" for k, v in trainer.last_eval.items() if isinstance(v, float)) or "no evaluation"
    print(f"\ndone: step {trainer.step}; {shown}")
    if trainer.stopped_early:
        print(trainer.stopped_early + " (train.early_stopping_patience)")
    if trainer.stopped:
        print(f"{trainer.stopped}: run the same command again to resume from its checkpoint")
    print(f"run directory: {run_dir}")
    print(f"checkpoints: {root} (newest: {newest.name if newest else 'none'})")
    if (root / "best").exists():
        best = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in trainer.best.items())
        print(f"best checkpoint: {root / (root / 'best').read_text().strip()} ({best})")  # (step 20, val_loss 5.502)
    for line in lines:
        print(line)

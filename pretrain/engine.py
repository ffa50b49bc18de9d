"""The DeepSpeed engine: its config built from the run config, AdamW parameter groups, the
learning-rate schedule, and initialize().

DeepSpeed owns ZeRO partitioning, precision, loss scaling, gradient accumulation and clipping,
and checkpoint sharding; this module only says what to ask of it.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys

import torch
from torch import nn

from pretrain.config import ConfigError, DeepSpeedSection, TrainConfig, deep_merge, read_deepspeed_json
from pretrain.files import free_port


def deepspeed_config(ds: DeepSpeedSection, train: TrainConfig, world_size: int, grad_accum: int) -> dict:
    """The DeepSpeed JSON for this run (a user's config_file overrides it section by section)."""
    zero: dict = {"stage": ds.zero_stage}
    if ds.zero_stage > 0:
        zero.update(
            overlap_comm=ds.overlap_comm,
            contiguous_gradients=ds.contiguous_gradients,
            reduce_bucket_size=ds.reduce_bucket_size,
            allgather_bucket_size=ds.allgather_bucket_size,
        )
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    torch_adam = not (ds.offload_optimizer and torch.cuda.is_available())
    config = {
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": train.micro_batch_size * grad_accum * world_size,
        "gradient_clipping": train.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": ds.precision == "bf16"},
        "fp16": {
            "enabled": ds.precision == "fp16",
            "loss_scale": 0,  # dynamic
            "initial_scale_power": ds.initial_scale_power,
            "loss_scale_window": 1000,
            "hysteresis": 2,
            "min_loss_scale": 1,
        },
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": train.lr,
                "betas": list(train.betas),
                "eps": train.eps,
                "weight_decay": train.weight_decay,
                # torch's fused AdamW (one kernel per step, CPU or CUDA, nothing to build at run time),
                # except for an optimizer offloaded from GPUs, where DeepSpeed's vectorised CPU Adam runs.
                **({"torch_adam": True, "fused": True} if torch_adam else {}),
            },
        },
        "steps_per_print": 1 << 30,  # the monitor reports; keep DeepSpeed quiet
        "wall_clock_breakdown": False,
    }
    if ds.config_file:
        config = deep_merge(config, read_deepspeed_json(ds.config_file))
    return config


def check_precision(precision: str, gpus: bool) -> None:
    """A ConfigError unless DeepSpeed trains in ``precision`` on this machine's devices: its CUDA GPUs,
    or without GPUs its CPU (bf16 everywhere; fp16 only where oneDNN has fp16 kernels). DeepSpeed
    asks the same of its accelerator, but only once every process has started, with a traceback."""
    if precision == "fp32":
        return
    from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator
    from deepspeed.accelerator.cuda_accelerator import CUDA_Accelerator

    device = CUDA_Accelerator() if gpus else CPU_Accelerator()
    if not (device.is_bf16_supported() if precision == "bf16" else device.is_fp16_supported()):
        where = torch.cuda.get_device_name() if gpus else "this machine's CPU (no GPUs)"
        other = "bf16 or fp32" if precision == "fp16" else "fp16 or fp32"
        raise ConfigError(f"deepspeed.precision={precision}: DeepSpeed cannot train in {precision} on {where}; "
                          f"use {other}")  # fmt: skip


def param_groups(model: nn.Module, weight_decay: float, lr: float, lr_scale=lambda name: 1.0) -> list[dict]:
    """AdamW groups: decay for weight matrices, none for norms, biases and embeddings; each group at
    lr * lr_scale(name) (layer-wise rates for fine-tuning). Frozen parameters are left out."""
    from pretrain.model.flops import whole_shape

    no_decay_modules = (nn.LayerNorm, nn.RMSNorm, nn.Embedding)
    skip = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if isinstance(module, no_decay_modules) or name == "bias" or len(whole_shape(p)) < 2:
                skip.add(id(p))
    groups: dict[tuple[float, bool], list] = {}
    seen = set()
    for name, p in model.named_parameters():  # a tied matrix is listed once, as the embedding
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        groups.setdefault((lr_scale(name), id(p) not in skip), []).append(p)
    return [
        {"params": params, "weight_decay": weight_decay if decays else 0.0, "lr": lr * scale}
        for (scale, decays), params in sorted(groups.items(), key=lambda kv: (-kv[0][0], not kv[0][1]))
    ]


def lr_lambda(train: TrainConfig):
    """Multiplier of the peak lr at optimizer step s: linear warmup, then cosine or linear decay
    to min_lr_ratio at max_steps (or constant)."""

    def f(step: int) -> float:
        if step < train.warmup_steps:
            return (step + 1) / (train.warmup_steps + 1)
        if train.decay == "constant":
            return 1.0
        progress = min(1.0, (step - train.warmup_steps) / max(1, train.max_steps - train.warmup_steps))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if train.decay == "cosine" else 1 - progress
        return train.min_lr_ratio + (1 - train.min_lr_ratio) * shape

    return f


def repair_loaded_optimizer(engine, weight_decays: list[float]) -> None:
    """Undo two side effects of DeepSpeed's ZeRO-3 universal-checkpoint loader (deepspeed 0.19.8,
    stage3.load_hp_checkpoint_state_from_checkpoint_dir_stage3) before the next step:

    - it copies the first AdamW group's hyperparameters into every group, which would start
      decaying norms, biases and embeddings and give every group the first one's learning rate:
      put back each group's weight decay (``weight_decays``, noted before the engine was built:
      the optimizer's groups are the very dicts param_groups() returned, so the copy reaches them
      too) and the learning rate the loaded scheduler last set;
    - it gives every parameter group's state the same ``step`` tensor, which torch's AdamW then
      increments in place once per group per step, skewing Adam's bias correction: give each
      state its own copy.
    """
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    lrs = engine.lr_scheduler.get_last_lr() if engine.lr_scheduler is not None else None
    for i, (group, decay) in enumerate(zip(inner.param_groups, weight_decays, strict=True)):
        group["weight_decay"] = decay
        if lrs is not None:
            group["lr"] = lrs[i]
    for state in inner.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()


def init_distributed(timeout_s: float = 1800.0) -> tuple[int, int]:
    """Join (or, alone, create) the process group: nccl on GPUs, gloo on CPU. Rank and world size
    come from the usual variables (torchrun, the deepspeed launcher, python -m launch). A collective
    that waits longer than ``timeout_s`` (a peer died, a link went down) raises instead of hanging."""
    from datetime import timedelta

    import deepspeed

    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(free_port())
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    timeout = timedelta(seconds=timeout_s)
    # DeepSpeed makes its ZeRO process groups with torch's default timeout (30 minutes), not the
    # world group's: make ours the default, so that a collective on any group fails in time.
    from torch.distributed import distributed_c10d

    distributed_c10d.default_pg_timeout = distributed_c10d.default_pg_nccl_timeout = timeout
    if backend == "gloo":
        _without_shm_inference_op()
    deepspeed.init_distributed(dist_backend=backend, verbose=False, timeout=timeout)
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def _without_shm_inference_op() -> None:
    """On CPU, DeepSpeed's communication backend compiles and loads a C++ shared-memory all-reduce
    as it starts (24 s the first time in each new environment, here; a C++ compiler needed). Only
    its inference all-reduce uses it, never training's collectives (gloo through torch.distributed),
    so it is not built."""
    import importlib

    # by name: `import deepspeed.comm.torch as m` binds torch itself (deepspeed.comm has `torch` in it)
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def leave_process_group() -> None:
    """Every rank done: free the engine and take the process groups down while the interpreter is
    whole. The DeepSpeed engine (and deepspeed.zero.Init's parameters) live in reference cycles that
    hold process groups and gloo work; left to the interpreter's final collection, their C++ threads
    die mid-teardown and the rank aborts ("terminate called without an active exception"), failing
    a finished job. Every process that called init_distributed ends with this."""
    import gc

    gc.collect()
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    gc.collect()


def partitioned_construction(config: dict):
    """(context, gather) for building the model. Under ZeRO-3 the context is deepspeed.zero.Init:
    each parameter is partitioned across the ranks as its module is created, so no rank ever holds
    the whole model (a 7B model is ~28 GB in fp32 per rank otherwise). ``gather(params)`` then makes
    a few parameters whole for initialising or loading them, keeping what rank 0 writes. Otherwise
    a plain context and None: parameters are whole from the start."""
    if config["zero_optimization"].get("stage", 0) != 3:
        return contextlib.nullcontext(), None
    import deepspeed

    def gather(params):
        return deepspeed.zero.GatheredParameters(params, modifier_rank=0)

    stack = contextlib.ExitStack()
    on_host = not torch.cuda.is_available() or "offload_param" in config["zero_optimization"]
    if on_host:
        from pretrain.model.init import torch_defaults_drawn_not_written

        stack.enter_context(_freed_memory_returned())
        stack.enter_context(torch_defaults_drawn_not_written())  # the whole embedding never resident
    stack.enter_context((_init_drawn_later() if on_host else deepspeed.zero.Init)(config_dict_or_path=config))
    return stack, gather


def _init_drawn_later() -> type:
    """deepspeed.zero.Init, except that a parameter marked DRAWN_LATER (torch's default init of it
    skipped, see torch_defaults_drawn_not_written) is partitioned without first broadcasting rank
    0's values of it: it has none yet, and init_weights draws it afterwards, the same on every rank.
    That broadcast would write the whole matrix (the embedding) into every other rank's memory
    (gpt2-medium at 2 processes: rank 1 peaked at 1,231 MiB with it, rank 0 at 1,044; both at
    1,046 without). Every other parameter is broadcast as DeepSpeed does. Relies on every rank
    seeding the generator alike before construction, as pretrain.run does."""
    import deepspeed

    from pretrain.model.init import DRAWN_LATER

    class InitDrawnLater(deepspeed.zero.Init):
        def _zero_init_param(self, param):
            if not getattr(param, DRAWN_LATER, False):
                return super()._zero_init_param(param)
            self._convert_to_deepspeed_param(param)
            param.partition()

    return InitDrawnLater


@contextlib.contextmanager
def _freed_memory_returned():
    """While a partitioned model is built and loaded in host memory, every module is first whole,
    then partitioned, and gathered again to be initialised: many short-lived buffers of a few MB.
    glibc's malloc keeps such freed buffers in its heap (the resident size grew to 2.3 GB for a
    ~1.0 GB working set, gpt2-medium at 2 processes); serving buffers over 1 MiB with mmap hands
    them back when freed. Afterwards the threshold is 32 MiB, glibc's own upper bound."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt, trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to tune
        yield
        return
    M_MMAP_THRESHOLD = -3
    mallopt(M_MMAP_THRESHOLD, 1 << 20)
    try:
        yield
    finally:
        mallopt(M_MMAP_THRESHOLD, 32 << 20)
        trim(0)


def buckets_fitted(config: dict, params: int) -> dict:
    """``config`` with ZeRO's reduce and all-gather buckets no larger than the model's ``params``
    elements. ZeRO-1/2 allocate the reduce bucket anew every micro step, whole (x2 with overlap_comm):
    the default 50M elements is 400 MB per step for a model of any size, written in full where
    deterministic algorithms fill new memory (a 30K-parameter model spent 0.26 s per step there).
    A bucket never needs to hold more than every gradient; the reductions are the same. Rounded up
    to a multiple of 1,024 elements (DeepSpeed wants bucket sizes aligned for its collectives)."""
    zero = config.get("zero_optimization", {})
    cap = max(1, -(-params // 1024)) * 1024
    fitted = {k: min(zero[k], cap) for k in ("reduce_bucket_size", "allgather_bucket_size") if k in zero}
    return {**config, "zero_optimization": {**zero, **fitted}} if fitted else config


def initialize(model: nn.Module, config: dict, train: TrainConfig, groups: list[dict]):
    """Wrap the model in a DeepSpeed engine with AdamW over ``groups`` and the warmup/decay schedule."""
    import deepspeed

    from pretrain.model.flops import numel

    _muon_imported_uncompiled(config)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=groups,
        config=buckets_fitted(config, sum(numel(p) for p in model.parameters())),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(train)),
    )
    if engine.zero_optimization_stage() == 0 and engine.dp_world_size == 1:
        # One data-parallel process: averaging gradients over it changes nothing, yet DeepSpeed
        # would still flatten every gradient, all-reduce it over the group of one and copy it back
        # (0.6 ms of a 7.4 ms debug step on a CPU). ZeRO 1-3's reductions also move gradients into
        # the optimizer's partitions, so they stay.
        engine.enable_backward_allreduce = False
    return engine


def _muon_imported_uncompiled(config: dict) -> None:
    """DeepSpeed's ZeRO optimizers import its Muon optimizer (in the optimizer check, and again in
    every gradient reduction) to ask whether it is the one in use; the module compiles three
    functions with torch.compile as it loads: 3 s per process here, every run (torch's inductor
    imported for them). Unless the config asks for Muon, import it first with torch.compile as the
    identity, so those functions stay plain Python and nothing is compiled."""
    name = "deepspeed.runtime.zero.muon.muon_optimizer"
    if name in sys.modules or "muon" in str(config.get("optimizer", {}).get("type", "")).lower():
        return
    import importlib

    compile_ = torch.compile

    def identity(fn=None, **_):
        return fn if fn is not None else (lambda f: f)

    torch.compile = identity
    try:
        importlib.import_module(name)
    finally:
        torch.compile = compile_

"""One training step of a model size, ours beside HF transformers' class of the same shape.

    python -m pretrain.bench step configs/model/gpt2-small.yaml [--batch 4 --seq-len 256]
        [--dtype fp32|bf16] [--compile] [--engine] [--no-hf] [--no-nanogpt] [--out DIR] [model.key=value ...]

The models hold the same weights (``to_hf``; an encoder-decoder's ``t5_to_hf`` or ``bart_to_hf``),
see the same random batch and train with the same optimizer (torch AdamW, fused, our weight-decay
groups), dtype (bf16 = autocast over fp32 weights) and threads. Ours computes its loss as training
does (``pretrain.trainer.lm_loss``, ``seq2seq_loss``); HF's is its own ``labels=`` loss. An
encoder-decoder gets the shapes its objective makes of --seq-len tokens (span corruption; text
infilling for a learned-position, BART-shaped model): 256 give T5 232 source tokens and 52
targets; tokens/s and MFU count source tokens. A GPT-2-shaped model also runs beside a GPT written
the way nanoGPT writes one (``pretrain.bench.reference``: every position's logits, then ``F.cross_entropy``). After
warm-up the candidates run in interleaved rounds, each round starting with the next candidate;
each row is the median step time over the rounds. ``--engine`` adds our full DeepSpeed step (one
process, ZeRO-0 and 1, bf16 as DeepSpeed does it: bf16 weights, fp32 master copy), so the
engine's overhead is a number.
"""

from __future__ import annotations

import argparse
import copy
import gc
from contextlib import nullcontext
from pathlib import Path

import torch

from pretrain.bench import (
    device_peak_tflops,
    loss_fn,
    machine,
    median,
    print_table,
    random_batch,
    saved_bytes,
    timed,
    write_json,
)

COLUMNS = [("name", "step"), ("step_ms", "ms/step"), ("tokens_per_s", "tokens/s"), ("vs_hf", "x HF"),
           ("vs_nanogpt", "x nanoGPT-style"), ("mfu", "MFU"),
           ("peak_gib", "peak GiB"), ("saved_gib", "saved for bwd GiB"), ("loss", "first loss")]  # fmt: skip


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("config", help="a model size (configs/model/*.yaml) or any run config")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.attention=eager")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per candidate")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds")
    ap.add_argument("--steps", type=int, default=1, help="steps per candidate per round")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (CPU); default: torch's")
    ap.add_argument("--compile", action="store_true", help="torch.compile both models")
    ap.add_argument("--no-hf", action="store_true", help="no HF row")
    ap.add_argument("--no-nanogpt", action="store_true", help="no nanoGPT-style row (GPT-2-shaped models have one)")
    ap.add_argument("--engine", action="store_true", help="also our DeepSpeed step, ZeRO-0 and ZeRO-1")
    ap.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (CPU has none)")
    ap.add_argument("--device", default=None, help="cuda or cpu; default: cuda when there is one")
    ap.add_argument("--out", type=Path, default=None, help="write step-NAME.json here")


PLAIN = ("ours", "hf", "nanogpt-style")
"""The candidates that are a model and torch's optimizer alone (no DeepSpeed engine)."""


class Candidate:
    """A model with its optimizer and the function that runs one training step."""

    def __init__(self, name: str, model, step_fn, optimizer=None):
        self.name, self.model, self.step_fn, self.optimizer = name, model, step_fn, optimizer
        self.times: list[float] = []
        self.peak = 0
        self.loss = None

    def step(self):
        loss = self.step_fn()
        if self.loss is None:
            self.loss = float(loss)
        return loss

    def state_bytes(self) -> int:
        """Weights and optimizer state this candidate keeps between steps."""
        tensors = {id(p): p for p in self.model.parameters()}
        if self.optimizer is not None:
            for state in self.optimizer.state.values():
                tensors.update({id(v): v for v in state.values() if torch.is_tensor(v)})
        return sum(t.numel() * t.element_size() for t in tensors.values())


def run(args) -> dict:
    from pretrain.config import load_config
    from pretrain.engine import param_groups
    from pretrain.hostmem import keep_freed_memory
    from pretrain.model import build_model, flops_per_token
    from pretrain.model.loss import IGNORE

    from .reference import nanogpt_twin, unsupported

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        keep_freed_memory()  # as a training run does on CPU; every candidate alike
    cfg = load_config(args.config, args.overrides).model
    cfg.dropout = cfg.attention_dropout = 0.0  # same work every step, and HF's dropout would differ
    if cfg.position == "learned" and args.seq_len > cfg.max_seq_len:
        raise SystemExit(f"--seq-len {args.seq_len} is longer than the model's {cfg.max_seq_len} positions")
    autocast = (
        (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.dtype == "bf16" else (lambda: nullcontext())
    )
    torch.manual_seed(0)
    ours = build_model(cfg)
    hf = None if args.no_hf else _hf_twin(ours)
    why = None if args.no_nanogpt else unsupported(cfg)
    nano = None if args.no_nanogpt or why else nanogpt_twin(ours)
    if why:
        print(f"no nanoGPT-style row: {why}")
    ours.train()

    gen = torch.Generator().manual_seed(0)
    batch, hf_batch = random_batch(cfg, args.batch, args.seq_len, gen)
    batch = {k: v.to(device) for k, v in batch.items()}
    hf_batch = {k: v.to(device) for k, v in hf_batch.items()}
    inputs, labels = batch["input_ids"], batch["labels"]
    loss_of = loss_fn(cfg)

    def plain_step(model, loss_fn, optimizer):
        def step():
            with autocast():
                loss = loss_fn(model)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss.detach()

        return step

    def adamw(model):
        fused = device.type in ("cuda", "cpu")
        return torch.optim.AdamW(param_groups(model, 0.1, 1e-4), lr=1e-4, fused=fused)

    candidates = []
    ours = ours.to(device)
    ours_fn = torch.compile(ours) if args.compile else ours
    opt = adamw(ours)
    candidates.append(Candidate("ours", ours, plain_step(ours_fn, lambda m: loss_of(m, batch)[0], opt), opt))
    if hf is not None:
        hf = hf.to(device).train()
        hf_fn = torch.compile(hf) if args.compile else hf
        opt = adamw(hf)
        hf_loss = lambda m: m(**hf_batch).loss
        candidates.append(Candidate("hf", hf, plain_step(hf_fn, hf_loss, opt), opt))
    if nano is not None:
        nano = nano.to(device).train()
        nano_fn = torch.compile(nano) if args.compile else nano
        opt = adamw(nano)
        nano_loss = lambda m: m(inputs, labels)
        candidates.append(Candidate("nanogpt-style", nano, plain_step(nano_fn, nano_loss, opt), opt))
    if args.engine:
        candidates += _engine_candidates(cfg, ours, batch, args, device, loss_of)

    for c in candidates:  # warm-up (compilation, allocator, autotuning)
        for _ in range(args.warmup):
            c.step()
    for r in range(args.rounds):  # each round starts with the next candidate: no one always follows another
        for c in candidates[r % len(candidates) :] + candidates[: r % len(candidates)]:
            c.times.append(timed(lambda c=c: [c.step() for _ in range(args.steps)], device) / args.steps)
    for c in candidates:  # memory, one candidate at a time
        if device.type == "cuda" and c.name in PLAIN:
            gc.collect()
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            c.step()
            torch.cuda.synchronize()
            c.peak = torch.cuda.max_memory_allocated() - base + c.state_bytes()

    predicted = float((labels != IGNORE).sum()) / inputs.numel()  # per input token (an encoder's: per source)
    fpt = flops_per_token(ours, inputs.shape[1], predicted)
    precision = "bf16" if args.dtype == "bf16" else "fp32"
    peak = device_peak_tflops(precision, args.peak_tflops)
    tokens = inputs.numel()
    rows = []
    for c in candidates:
        t = median(c.times)
        row = {"name": c.name, "step_ms": 1e3 * t, "tokens_per_s": tokens / t, "loss": c.loss,
               "peak_gib": c.peak / 2**30 if c.peak else None}  # fmt: skip
        if peak:
            row["mfu"] = fpt * tokens / t / (peak * 1e12)
        rows.append(row)
    for key, base in (("vs_hf", "hf"), ("vs_nanogpt", "nanogpt-style")):
        base_row = next((r for r in rows if r["name"] == base), None)
        for r in rows:
            r[key] = base_row["step_ms"] / r["step_ms"] if base_row else None
    # Activation memory each model keeps for backward (one more forward, not timed).
    for c, r in zip(candidates, rows, strict=True):
        if c.name in PLAIN:
            model = ours_fn if c.name == "ours" and not args.compile else c.model
            fn = {"ours": lambda m=model: loss_of(m, batch)[0], "hf": lambda m=model: hf_loss(m),
                  "nanogpt-style": lambda m=model: nano_loss(m)}[c.name]  # fmt: skip
            with autocast():
                r["saved_gib"] = saved_bytes(fn) / 2**30
            c.model.zero_grad(set_to_none=True)
    name = Path(args.config).stem
    print(f"\n{name}: batch {args.batch} x {args.seq_len}, {args.dtype}, {device.type}"
          f"{', compiled' if args.compile else ''}, attention={cfg.attention}, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} rounds; {fpt / 1e9:.3f} GFLOP/token"
          f"{f', peak {peak:g} TFLOP/s' if peak else ''}")  # fmt: skip
    table = print_table(rows, COLUMNS)
    record = {"benchmark": "step", "config": args.config, "overrides": args.overrides, "batch": args.batch,
              "seq_len": args.seq_len, "dtype": args.dtype, "compile": args.compile, "device": device.type,
              "attention": cfg.attention, "flops_per_token": fpt, "peak_tflops": peak, "rows": rows,
              "times": {c.name: c.times for c in candidates}, "machine": machine(), "table": table}  # fmt: skip
    suffix = f"{name}-{args.dtype}-{cfg.attention}{'-compiled' if args.compile else ''}"
    write_json(args.out, f"step-{suffix}.json", record)
    return record


def _hf_twin(ours):
    """HF's model of our shape with our weights, using torch's SDPA attention as ours does where
    the class takes it (DeBERTa's has its own eager attention only)."""
    if ours.cfg.arch == "encoder-decoder":
        from pretrain.model.hf_bart import bart_to_hf
        from pretrain.model.hf_t5 import t5_to_hf

        hf = (bart_to_hf if ours.cfg.position == "learned" else t5_to_hf)(ours)
    else:
        from pretrain.model.hf import family_of, to_hf

        try:
            family_of(ours.cfg)
        except ValueError as e:
            print(f"no HF row: {e}")
            return None
        hf = to_hf(ours)
    if not getattr(hf, "_supports_sdpa", False):
        return hf
    if hasattr(hf, "set_attn_implementation"):
        hf.set_attn_implementation("sdpa")
    else:
        hf.config._attn_implementation = "sdpa"
    return hf


def _engine_candidates(cfg, ours, batch, args, device, loss_of) -> list[Candidate]:
    """Our full DeepSpeed step (one process) at ZeRO-0 and ZeRO-1, on copies of our model."""
    from pretrain.config import DeepSpeedSection, TrainConfig
    from pretrain.engine import deepspeed_config, init_distributed, initialize, param_groups

    init_distributed(600)
    train = TrainConfig(lr=1e-4, warmup_steps=0, max_steps=10**6, micro_batch_size=args.batch, weight_decay=0.1)
    out = []
    for stage in (0, 1):
        model = copy.deepcopy(ours)
        ds = DeepSpeedSection(zero_stage=stage, precision=args.dtype)
        engine = initialize(model, deepspeed_config(ds, train, 1, 1), train, param_groups(model, 0.1, 1e-4))
        if args.compile:
            engine.compile()

        def step(engine=engine):
            loss = loss_of(engine, batch)[0]
            engine.backward(loss)
            engine.step()
            return loss.detach()

        out.append(Candidate(f"ours+deepspeed zero{stage}", model, step, engine.optimizer))
    return out

"""Memory per process and tokens/s for each ZeRO stage (and offload) at 2 processes, and tokens/s
at 1 vs 2 processes (weak scaling: the same micro-batch per process).

    python -m pretrain.bench zero configs/model/debug.yaml [--batch 4 --seq-len 128 --steps 5]
        [--nproc 2] [--out DIR] [model.key=value ...]

Each setting is a real ``torchrun`` job of our DeepSpeed engine (gloo on CPU, NCCL on GPUs) on
random tokens. Memory is each process's peak: allocated GPU memory on a GPU, resident set size
(which includes the Python and torch runtime, ``base`` in the table) on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SETTINGS = [  # (label, processes from --nproc or 1, zero stage, offload optimizer, offload params)
    ("zero0", None, 0, False, False),
    ("zero1", None, 1, False, False),
    ("zero2", None, 2, False, False),
    ("zero3", None, 3, False, False),
    ("zero2+offload", None, 2, True, False),
    ("zero3+offload", None, 3, True, True),
    ("zero2, 1 process", 1, 2, False, False),
]


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("config", help="a model size (configs/model/*.yaml) or any run config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--batch", type=int, default=4, help="micro-batch per process")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5, help="timed steps after 2 warm-up steps")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="default: bf16 on GPU, fp32 on CPU")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process on CPU")
    ap.add_argument("--only", nargs="+", default=None, help="labels of the settings to run")
    ap.add_argument("--timeout-s", type=float, default=600)
    ap.add_argument("--out", type=Path, default=None, help="write zero.json here")


def run(args) -> dict:
    from pretrain.bench import machine, print_table, write_json

    dtype = args.dtype or ("bf16" if torch.cuda.is_available() else "fp32")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, nproc, stage, off_opt, off_params in SETTINGS:
            if args.only and label not in args.only:
                continue
            nproc = nproc or args.nproc
            out = Path(tmp) / f"{label}.json".replace(" ", "_").replace(",", "")
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                   "-m", "pretrain.bench.zero", "--worker", str(out), args.config, *args.overrides,
                   f"--batch={args.batch}", f"--seq-len={args.seq_len}", f"--steps={args.steps}", f"--dtype={dtype}",
                   f"--stage={stage}", *(["--offload-optimizer"] if off_opt else []),
                   *(["--offload-params"] if off_params else [])]  # fmt: skip
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
            t0 = time.time()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout_s)
            row = {"setting": label, "processes": nproc, "stage": stage, "wall_s": round(time.time() - t0, 1)}
            if out.exists() and proc.returncode != 0:  # measured; a process failed on its way out
                row["note"] = f"exit {proc.returncode} after the measurement (shutdown)"
            if not out.exists():
                errors = [ln for ln in proc.stderr.splitlines() if "Error" in ln] or proc.stderr.splitlines() or ["?"]
                row["note"] = "failed: " + errors[-1][:160]
                row["log"] = proc.stderr[-4000:]
            if out.exists():
                ranks = json.loads(out.read_text())
                row["tokens_per_s"] = ranks[0]["tokens_per_s"]
                row["peak_mib"] = max(r["peak_mib"] for r in ranks)
                row["base_mib"] = max(r["base_mib"] for r in ranks)
            rows.append(row)
            print(f"{label}: {row}", flush=True)
    one = next((r for r in rows if r["processes"] == 1 and "tokens_per_s" in r), None)
    many = next((r for r in rows if r["setting"] == "zero2" and "tokens_per_s" in r), None)
    scaling = many["tokens_per_s"] / (many["processes"] * one["tokens_per_s"]) if one and many else None
    print(f"\nZeRO settings: {args.config}, micro-batch {args.batch} x {args.seq_len} per process, {dtype}, "
          f"{'GPU' if torch.cuda.is_available() else f'CPU, {args.threads} thread(s) per process'}")  # fmt: skip
    columns = [("setting", "setting"), ("processes", "processes"), ("tokens_per_s", "tokens/s (all)"),
               ("peak_mib", "peak MiB/process"), ("base_mib", "base MiB"), ("note", "note")]  # fmt: skip
    table = print_table(rows, columns)
    if scaling is not None:
        print(f"weak scaling, ZeRO-2, {many['processes']} processes vs 1: {scaling:.2f}")
    record = {"benchmark": "zero", "config": args.config, "overrides": args.overrides, "batch": args.batch,
              "seq_len": args.seq_len, "dtype": dtype, "rows": rows, "weak_scaling": scaling,
              "machine": machine(), "table": table}  # fmt: skip
    write_json(args.out, "zero.json", record)
    return record


def worker(argv: list[str]) -> None:
    """One rank of one setting: build, train ``steps`` steps, report tokens/s and peak memory."""
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    for name in ("batch", "seq-len", "steps", "stage"):
        ap.add_argument(f"--{name}", type=int)
    ap.add_argument("--dtype")
    ap.add_argument("--offload-optimizer", action="store_true")
    ap.add_argument("--offload-params", action="store_true")
    args = ap.parse_args(argv)

    import torch.distributed as dist

    from pretrain.engine import init_distributed, leave_process_group
    from pretrain.hostmem import keep_freed_memory

    if not torch.cuda.is_available():
        keep_freed_memory()  # as a training run does on CPU
    base = _peak_mib()
    rank, world = init_distributed(300)
    report = {"rank": rank, **_train(args, rank, world), "base_mib": base}  # the engine is freed on return
    if torch.cuda.is_available():
        report["base_mib"] = 0.0
    reports = [None] * world
    dist.all_gather_object(reports, report)
    if rank == 0:
        args.out.write_text(json.dumps(reports))
    leave_process_group()


def _train(args, rank: int, world: int) -> dict:
    import torch.distributed as dist

    from pretrain.bench import loss_fn, random_batch, sync
    from pretrain.config import DeepSpeedSection, TrainConfig, load_config
    from pretrain.engine import deepspeed_config, initialize, param_groups, partitioned_construction
    from pretrain.model import build_model

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = load_config(args.config, args.overrides).model
    train = TrainConfig(lr=1e-4, warmup_steps=0, max_steps=10**6, micro_batch_size=args.batch)
    ds = DeepSpeedSection(zero_stage=args.stage, precision=args.dtype, offload_optimizer=args.offload_optimizer,
                          offload_params=args.offload_params)  # fmt: skip
    ds_config = deepspeed_config(ds, train, world, 1)
    construction, gather = partitioned_construction(ds_config)  # ZeRO-3 builds it partitioned, as a run does
    torch.manual_seed(0)
    with construction:
        model = build_model(cfg, gather)
    engine = initialize(model, ds_config, train, param_groups(model, 0.1, 1e-4))
    batch, _ = random_batch(cfg, args.batch, args.seq_len, torch.Generator().manual_seed(rank))
    batch = {k: v.to(device) for k, v in batch.items()}
    loss_of = loss_fn(cfg)

    def step():
        loss = loss_of(engine, batch)[0]
        engine.backward(loss)
        engine.step()

    for _ in range(2):
        step()
    sync(device)
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    dist.barrier()
    elapsed = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _peak_mib()
    tokens = batch["input_ids"].numel()  # an encoder-decoder's: its source tokens
    return {"tokens_per_s": world * tokens * args.steps / elapsed, "peak_mib": peak}


def _peak_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    worker(sys.argv[2:])

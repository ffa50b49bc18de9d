"""Host memory per process (peak resident set size) while a job builds its model, loads weights for
fine-tuning, and exports a checkpoint: ZeRO-3 (the model built partitioned with deepspeed.zero.Init,
weights streamed in one tensor at a time) against ZeRO-2 (every rank builds the whole model and, as
before streaming, reads the whole state dict).

    python -m pretrain.bench host configs/model/gpt2-medium.yaml [--nproc 2] [--out DIR] [model.key=value ...]

Each phase is its own ``torchrun`` job (a peak is a process's lifetime maximum); ``base`` is a
process's resident size after importing torch and DeepSpeed. The export rows are one process
reading a ZeRO-3 checkpoint of the same model: streamed into 256 MiB shards, or gathered whole first.
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


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("config", help="a model size (configs/model/*.yaml) or any run config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--timeout-s", type=float, default=1200)
    ap.add_argument("--out", type=Path, default=None, help="write host.json here")


def _job(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:8])} ... failed:\n{proc.stderr[-3000:]}")
    return proc


def run(args) -> dict:
    from pretrain.bench import machine, print_table, write_json
    from pretrain.config import load_config
    from pretrain.memory import model_sizes

    cfg = load_config(args.config, args.overrides)
    params, largest = model_sizes(cfg.model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spec = [args.config, *args.overrides]
        _job([sys.executable, "-m", "pretrain.bench.host", "--worker", "source", "-", str(tmp), "-", *spec],
             args.timeout_s)  # the weights the load rows read  # fmt: skip
        for phase in ("build", "load", "save"):
            for stage in (2, 3) if phase != "save" else (3,):
                out = tmp / f"{phase}{stage}.json"
                t0 = time.time()
                _job([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
                      "-m", "pretrain.bench.host", "--worker", phase, str(stage), str(tmp), str(out), *spec],
                     args.timeout_s)  # fmt: skip
                if phase == "save":
                    continue
                ranks = json.loads(out.read_text())
                peak, base = max(r["peak_mib"] for r in ranks), max(r["base_mib"] for r in ranks)
                rows.append({"phase": phase, "setting": f"ZeRO-{stage}", "processes": args.nproc, "peak_mib": peak,
                             "base_mib": base, "wall_s": round(time.time() - t0, 1)})  # fmt: skip
                print(rows[-1], flush=True)
        for how in ("streamed", "whole"):
            out = tmp / f"export-{how}.json"
            t0 = time.time()
            _job([sys.executable, "-m", "pretrain.bench.host", "--worker", "export", how, str(tmp), str(out), *spec],
                 args.timeout_s)  # fmt: skip
            report = json.loads(out.read_text())
            rows.append({"phase": "export", "setting": f"ZeRO-3 checkpoint, {how}", "processes": 1,
                         "peak_mib": report["peak_mib"], "base_mib": report["base_mib"],
                         "wall_s": round(time.time() - t0, 1)})  # fmt: skip
            print(rows[-1], flush=True)
    for r in rows:
        r["above_base_mib"] = r["peak_mib"] - r["base_mib"]
    print(f"\nHost memory: {args.config} {' '.join(args.overrides)} ({params / 1e6:,.1f}M parameters, "
          f"largest layer {largest / 1e6:,.1f}M), {args.nproc} processes, CPU")  # fmt: skip
    columns = [("phase", "phase"), ("setting", "setting"), ("peak_mib", "peak MiB/process"), ("base_mib", "base MiB"),
               ("above_base_mib", "above base"), ("wall_s", "wall s")]  # fmt: skip
    table = print_table(rows, columns)
    record = {"benchmark": "host", "config": args.config, "overrides": args.overrides, "parameters": params,
              "largest_layer": largest, "nproc": args.nproc, "rows": rows, "machine": machine(),
              "table": table}  # fmt: skip
    write_json(args.out, "host.json", record)
    return record


def worker(argv: list[str]) -> None:
    phase, arg, tmp, out, config, *overrides = argv
    tmp, out = Path(tmp), Path(out)
    import deepspeed  # noqa: F401 - in the base, as in a training process

    from pretrain.config import load_config

    base = _peak_mib()
    cfg = load_config(config, overrides)
    if phase == "export":
        _export(arg, tmp, cfg, out, base)
        return
    if phase == "source":
        from pretrain.model import build_model
        from pretrain.shards import write_sharded

        model = build_model(cfg.model)
        tied = cfg.model.tied_output_keys
        weights = ((k, lambda v=v: v) for k, v in model.state_dict().items() if k not in tied)
        write_sharded(weights, tmp / "consolidated")
        return
    import torch.distributed as dist

    from pretrain.engine import init_distributed, leave_process_group

    rank, world = init_distributed(600)
    _build(phase, int(arg), tmp, cfg, rank, world)  # what it built is freed on return
    reports = [None] * world
    dist.all_gather_object(reports, {"rank": rank, "peak_mib": _peak_mib(), "base_mib": base})
    if rank == 0:
        out.write_text(json.dumps(reports))
    leave_process_group()


def _build(phase: str, stage: int, tmp: Path, cfg, rank: int, world: int) -> None:
    """Build the model at a ZeRO stage as a run does (pretrain.run): construction, init and loading
    inside the partitioned context; ``save`` then writes a ZeRO-3 checkpoint for the export rows."""
    from pretrain.config import DeepSpeedSection, RunConfig, TrainConfig, save_config
    from pretrain.engine import deepspeed_config, initialize, param_groups, partitioned_construction
    from pretrain.export import load_weights, materialize
    from pretrain.model import build_model
    from pretrain.shards import ShardedWeights

    source = tmp / "consolidated"
    train = TrainConfig(lr=1e-4, warmup_steps=0, max_steps=10, micro_batch_size=1)
    ds_config = deepspeed_config(DeepSpeedSection(zero_stage=stage, precision="fp32"), train, world, 1)
    construction, gather = partitioned_construction(ds_config)
    torch.manual_seed(0)
    with construction:
        model = build_model(cfg.model, gather)
        if phase == "load" and gather is None:  # as before streaming: every rank reads the whole state dict
            whole = {k: materialize(v) for k, v in ShardedWeights(source).items()}
            load_weights(model, whole)
            del whole
        elif phase == "load":
            load_weights(model, ShardedWeights(source), gather)
    if phase == "save":  # a ZeRO-3 checkpoint with AdamW states
        engine = initialize(model, ds_config, train, param_groups(model, 0.1, 1e-4))
        engine.save_checkpoint(str(tmp / "checkpoints"), tag="step_00000001")
        if rank == 0:
            save_config(RunConfig(model=cfg.model, deepspeed=DeepSpeedSection(zero_stage=3)),
                        tmp / "checkpoints" / "step_00000001" / "config.yaml")  # fmt: skip


def _export(how: str, tmp: Path, cfg, out: Path, base: float) -> None:
    from pretrain.export import consolidated_tensors, materialize
    from pretrain.shards import write_sharded

    tag = tmp / "checkpoints" / "step_00000001"
    folder = tmp / f"export-{how}"
    if how == "streamed":
        tensors = consolidated_tensors(tag)
        write_sharded(((k, lambda t=t: materialize(t)) for k, t in tensors.items()), folder, 256 * 2**20)
    else:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        from safetensors.torch import save_file

        from pretrain import safe_load

        with safe_load.restricted_torch_load():
            whole = get_fp32_state_dict_from_zero_checkpoint(str(tag.parent), tag=tag.name)
        folder.mkdir()
        save_file({k: v.contiguous().clone() for k, v in whole.items()}, str(folder / "model.safetensors"))
    out.write_text(json.dumps({"peak_mib": _peak_mib(), "base_mib": base}))


def _peak_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    worker(sys.argv[2:])

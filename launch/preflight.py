"""Preflight memory check, run by ``python -m launch`` in a process of its own (it needs torch and
DeepSpeed, which the launcher itself never imports):

    python -m launch.preflight [--gpu-gib G] [--cpu-gib C] [--nodes N] [--nproc-per-node P]
        [--program pretrain|finetune] [--no-gpus] [--data] [--here] CONFIG.yaml [overrides]

Compares the memory the job needs at its ZeRO stage and offload settings (DeepSpeed's estimators,
see pretrain.memory) with G GiB per GPU and C GiB of host memory per node: model states per GPU,
and on the host each rank's share of the model while it is built plus what is offloaded (without
GPUs, the model states themselves). Prints the estimate; when it does not fit, says so with the
numbers and the settings that would fit, and exits with status 3.

With ``--data`` (the launcher's machine sees the job's files) it also reads every local data file
and compares the checkpoint a resume would load with the config; with ``--here`` (the processes
run on this machine) it checks that DeepSpeed trains in the configured precision on its devices.
Either refusal is one ``config error:`` line and exit status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pretrain.checkpoint_layout import checkpoints_dir, is_complete, newest_complete
from pretrain.config import ConfigError, exit_on_config_error, load_config

DOES_NOT_FIT = 3


def setting_name(stage: int, offload_optimizer: bool, offload_params: bool) -> str:
    """The row of pretrain.memory.estimates for these settings."""
    if stage in (0, 1):
        return "ZeRO-0 (data parallel)" if stage == 0 else "ZeRO-1"  # no offload without a partitioned optimizer
    if offload_params:
        return "ZeRO-3 + offload optimizer and parameters"
    return f"ZeRO-{stage}" + (" + offload optimizer" if offload_optimizer else "")


OVERRIDES = {
    "ZeRO-0 (data parallel)": "deepspeed.zero_stage=0",
    "ZeRO-1": "deepspeed.zero_stage=1",
    "ZeRO-2": "deepspeed.zero_stage=2",
    "ZeRO-2 + offload optimizer": "deepspeed.zero_stage=2 deepspeed.offload_optimizer=true",
    "ZeRO-3": "deepspeed.zero_stage=3",
    "ZeRO-3 + offload optimizer": "deepspeed.zero_stage=3 deepspeed.offload_optimizer=true",
    "ZeRO-3 + offload optimizer and parameters":
        "deepspeed.zero_stage=3 deepspeed.offload_optimizer=true deepspeed.offload_params=true",
}  # fmt: skip


def run_config(program: str, config: str, overrides: list[str]):
    if program == "pretrain":
        return load_config(config, overrides)
    from finetune.config import load_finetune_config

    return load_finetune_config(config, overrides)


def newest_tag(path: Path) -> Path | None:
    """A tag folder, a checkpoints folder or a run directory -> its tag (the newest complete one),
    without reading the files through (the processes verify them)."""
    return path if is_complete(path) else newest_complete(path) or newest_complete(checkpoints_dir(path))


def model_config(program: str, cfg):
    """The model that will be trained: the config's, or (fine-tuning) the one init_from holds."""
    if program == "pretrain":
        return cfg.model
    source = Path(cfg.init_from)
    if not source.exists():
        raise ConfigError(f"init_from={cfg.init_from!r}: no such file or directory")
    newest = newest_tag(source)
    for candidate in (source / "config.yaml", newest / "config.yaml" if newest else None):
        if candidate is not None and candidate.is_file():
            return load_config(candidate).model
    return None  # an HF directory: the shape is only known once transformers reads it


def check_data(program: str, cfg) -> None:
    """The job's local data files read in their formats with the columns the job needs (a
    DataError, so one line and exit 2, naming the first that does not); for fine-tuning, its
    examples made from them as every rank will make them (labels, target lengths, answers) and cached
    for the ranks (finetune.examples)."""
    if program == "pretrain":  # the checks every rank makes before its process group, made once here
        from pretrain.run import LanguageModelTask

        LanguageModelTask.for_run(cfg).check_data()
        print("preflight: data files read and their columns found")
    elif cfg.task.builtin or all(src.files for src in cfg.data.sources):  # every rank's checks, made once here
        from finetune.tasks import FinetuneTask

        task = FinetuneTask(cfg)
        task.check_data()
        print(f"preflight: {task.examples_status}")
    else:  # hub data is read by the processes
        from finetune.data import check_task_sources

        check_task_sources(cfg)
        print("preflight: local data files read and their columns found")


def check_resume(program: str, cfg, world: int) -> None:
    """The checkpoint the job would resume from, compared with its config as the processes will
    (pretrain.checkpoint.compare_for_resume): a new model shape, or a ZeRO stage or precision that
    checkpoint cannot be loaded at, or the run still training on this host, is one line here instead
    of once every process has started. The tag is chosen as the processes choose it
    (pretrain.run.choose_resume), reading each checkpoint's record but not its files through (the
    processes verify those and may fall back to an older tag of the same run, whose config is the same)."""
    from pretrain import checkpoint as ckpt
    from pretrain.run import choose_resume

    resume = choose_resume(cfg, files=False, warn=lambda m: print(f"preflight: {m}"))
    if resume is None:
        return
    if program == "finetune":
        cfg.check_resume(resume)
        model = model_config(program, cfg)
        cfg = cfg if model is None else cfg.with_model(model)
    info = ckpt.saved_info(resume)
    ckpt.compare_for_resume(ckpt.saved_config(resume), cfg, info["world_size"], world, lambda m: None, info["step"])
    print(f"preflight: resumes from {resume.name}, saved by {info['world_size']} process(es)")


def cpu_device_bytes(params: int, largest: int, stage: int, world: int) -> float:
    """Bytes per process of fp32 AdamW model states on CPU devices (no GPUs): weights 4, gradients 4,
    moments 8 per parameter; ZeRO-1 partitions the moments, ZeRO-2 the gradients too, ZeRO-3 all of
    it (plus one layer gathered whole)."""
    if stage == 3:
        return 16 * params / world + 4 * largest
    return 4 * params + 4 * params / (world if stage >= 2 else 1) + 8 * params / (world if stage >= 1 else 1)


def check(gpu_gib: float | None, cpu_gib: float | None, nodes: int, nproc: int, program: str, config: str,
          overrides: list[str], gpus: bool = True) -> int:  # fmt: skip
    from pretrain.memory import GIB, model_sizes

    cfg = run_config(program, config, overrides)
    ds = cfg.deepspeed
    model = model_config(program, cfg)
    if model is None:
        print("preflight: the model's size is not known before it is loaded (an HF directory); memory not checked")
        return 0
    if program == "finetune":
        cfg.with_model(model)  # data.seq_len and the kernel against the checkpoint's shape
    params, largest = model_sizes(model)
    chosen = setting_name(ds.zero_stage, ds.offload_optimizer, ds.offload_params)
    if gpus:
        from pretrain.memory import estimates

        rows = estimates(params, largest, nproc, nodes)
    else:  # the model states live in host memory: the node holds nproc processes' worth
        rows = [(name, 0.0, nproc * cpu_device_bytes(params, largest, stage, nproc * nodes) / GIB)
                for name, stage in (("ZeRO-0 (data parallel)", 0), ("ZeRO-1", 1), ("ZeRO-2", 2), ("ZeRO-3", 3))]
        chosen = setting_name(ds.zero_stage, False, False)
    need_gpu, need_cpu = {name: (g, c) for name, g, c in rows}[chosen]
    where = f"{chosen} on {nodes} node(s) x {nproc} {'GPU' if gpus else 'process'}(es)".replace("GPU(es)", "GPU(s)")
    said = [f"preflight: {params / 1e6:,.1f}M parameters, {where}:"]
    if gpus and gpu_gib is not None:
        said.append(f"model states need {need_gpu:.2f} GiB per GPU of {gpu_gib:.1f} GiB (activations come on top)")
    if cpu_gib is not None:
        said.append(f"host memory {need_cpu:.2f} GiB per node of {cpu_gib:.2f} GiB")
    print(" ".join(said[:1]) + " " + "; ".join(said[1:]))
    short = []
    if gpus and gpu_gib is not None and need_gpu > gpu_gib:
        short.append(f"model states need {need_gpu:.2f} GiB per GPU at {chosen}, the GPUs have {gpu_gib:.1f} GiB")
    if cpu_gib is not None and need_cpu > cpu_gib:
        if not gpus:
            what = f"the model states of its {nproc} processes: weights, gradients, AdamW moments"
        else:
            built = "each rank's share of the model" if ds.zero_stage == 3 else "every rank's whole fp32 model"
            what = built + " while it is built" + (", and what is offloaded" if "offload" in chosen else "")
        short.append(f"{need_cpu:.2f} GiB of host memory per node at {chosen} ({what}), "
                     f"the nodes have {cpu_gib:.2f} GiB")  # fmt: skip
    if not short:
        return 0
    fitting = [(n, g, c) for n, g, c in rows
               if (not gpus or gpu_gib is None or g <= gpu_gib) and (cpu_gib is None or c <= cpu_gib)]  # fmt: skip
    lines = ["the job does not fit: " + "; and ".join(short)]
    if fitting:
        lines.append("settings that fit (model states per GPU, CPU memory per node):" if gpus
                     else "settings that fit (host memory per node):")  # fmt: skip
        width = max(len(OVERRIDES[n]) for n, _, _ in fitting)
        lines += [f"  {OVERRIDES[n]:{width}s} " + (f"{g:7.2f} GiB GPU " if gpus else "") + f"{c:7.2f} GiB CPU"
                  for n, g, c in fitting]  # fmt: skip
    else:
        lines.append("no ZeRO stage or offload fits on this many nodes: add nodes, or choose a smaller model")
    print("\n".join(lines), file=sys.stderr)
    return DOES_NOT_FIT


@exit_on_config_error
def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m launch.preflight")
    ap.add_argument("--gpu-gib", type=float)
    ap.add_argument("--cpu-gib", type=float)
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--nproc-per-node", type=int, default=1)
    ap.add_argument("--program", choices=("pretrain", "finetune"), default="pretrain")
    ap.add_argument("--no-gpus", action="store_true", help="the model states live in host memory")
    ap.add_argument("--data", action="store_true",
                    help="also read every local data file (format, columns) and the checkpoint a resume would load")
    ap.add_argument("--here", action="store_true", help="the processes run on this machine: check its precision")
    ap.add_argument("--no-memory", action="store_true", help="do not check memory")
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ns = ap.parse_args(sys.argv[1:] if argv is None else argv)
    if ns.here or ns.data:
        cfg = run_config(ns.program, ns.config, ns.overrides)
    if ns.here:
        from pretrain.engine import check_precision

        check_precision(cfg.deepspeed.precision, not ns.no_gpus)
    if ns.data:
        check_data(ns.program, cfg)
        check_resume(ns.program, cfg, ns.nodes * ns.nproc_per_node)
    if ns.no_memory:
        return
    sys.exit(check(ns.gpu_gib, ns.cpu_gib, ns.nodes, ns.nproc_per_node, ns.program, ns.config, ns.overrides,
                   gpus=not ns.no_gpus))  # fmt: skip


if __name__ == "__main__":
    main()

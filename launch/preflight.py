"""Preflight memory check, run by ``python -m launch`` in a process of its own (it needs torch and
DeepSpeed, which the launcher itself never imports):

    python -m launch.preflight GPU_GIB NODES NPROC_PER_NODE PROGRAM CONFIG.yaml [overrides]

Compares the memory that model states need per GPU at the job's ZeRO stage and offload settings
(DeepSpeed's estimators, see pretrain.memory) with GPU_GIB. Prints the estimate; when it does not
fit, says so with the numbers and the settings that would fit, and exits with status 3.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pretrain.checkpoint_layout import checkpoints_dir, newest_complete
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


def model_config(program: str, cfg):
    """The model that will be trained: the config's, or (fine-tuning) the one init_from holds."""
    if program == "pretrain":
        return cfg.model
    source = Path(cfg.init_from)
    newest = newest_complete(source) or newest_complete(checkpoints_dir(source))
    for candidate in (source / "config.yaml", newest / "config.yaml" if newest else None):
        if candidate is not None and candidate.is_file():
            return load_config(candidate).model
    return None  # an HF directory: the shape is only known once transformers reads it


def check(gpu_gib: float, nodes: int, nproc: int, program: str, config: str, overrides: list[str]) -> int:
    from pretrain.memory import estimates, model_sizes

    cfg = run_config(program, config, overrides)
    ds = cfg.deepspeed
    model = model_config(program, cfg)
    if model is None:
        print("preflight: the model's size is not known before it is loaded (an HF directory); memory not checked")
        return 0
    params, largest = model_sizes(model)
    rows = estimates(params, largest, nproc, nodes)
    chosen = setting_name(ds.zero_stage, ds.offload_optimizer, ds.offload_params)
    need = dict((name, gpu) for name, gpu, _ in rows)[chosen]
    print(f"preflight: {params / 1e6:,.1f}M parameters, {chosen} on {nodes} node(s) x {nproc} GPU(s): "
          f"model states need {need:.2f} GiB per GPU of {gpu_gib:.1f} GiB (activations come on top)")  # fmt: skip
    if need <= gpu_gib:
        return 0
    fitting = [(name, gpu, cpu) for name, gpu, cpu in rows if gpu <= gpu_gib]
    lines = [f"the job does not fit: model states need {need:.2f} GiB per GPU at {chosen}, "
             f"the GPUs have {gpu_gib:.1f} GiB"]  # fmt: skip
    if fitting:
        lines.append("settings that fit (model states per GPU, CPU memory per node):")
        width = max(len(OVERRIDES[n]) for n, _, _ in fitting)
        lines += [f"  {OVERRIDES[n]:{width}s} {g:7.2f} GiB GPU {c:7.1f} GiB CPU" for n, g, c in fitting]
    else:
        lines.append("no ZeRO stage or offload fits on this many GPUs: add nodes, or choose a smaller model")
    print("\n".join(lines), file=sys.stderr)
    return DOES_NOT_FIT


@exit_on_config_error
def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    try:
        gpu_gib, nodes, nproc, program, config, *overrides = args
        gpu, n, p = float(gpu_gib), int(nodes), int(nproc)
    except ValueError:
        raise ConfigError(f"usage: {__doc__.splitlines()[3].strip()}") from None
    sys.exit(check(gpu, n, p, program, config, overrides))


if __name__ == "__main__":
    main()

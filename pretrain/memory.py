"""python -m pretrain.memory CONFIG.yaml [overrides] [--gpus-per-node 8] [--nodes 1]

Memory that model states (parameters, gradients, optimizer states) need per GPU at each ZeRO
stage, for mixed-precision AdamW. Stages 2 and 3, with and without offload, come from DeepSpeed's
own estimators; stages 0 and 1 (which DeepSpeed does not estimate) from the ZeRO paper's byte
counts: 2 (16-bit weights) + 2 (16-bit gradients) + 12 (fp32 master weights, momentum, variance)
bytes per parameter, the 12 divided over the GPUs at stage 1. Activations come on top and depend
on micro batch, sequence length and activation checkpointing.

CPU memory per node is what the ranks of a node hold on the host: at stages 0-2 every rank builds
the whole model in fp32 (4 bytes per parameter) before DeepSpeed takes it, at stage 3 the model is
built partitioned (deepspeed.zero.Init: each rank holds 4 x parameters / world size; one layer
is whole on the GPU while it is created, and in the forward pass), and offloaded optimizer states
and parameters live there; DeepSpeed's estimators count it so, with their 1.5x buffer factor, and
so do stages 0 and 1 here.
"""

from __future__ import annotations

import argparse
import sys

GIB = 2**30


def model_sizes(model_cfg) -> tuple[int, int]:
    """(parameters, parameters of the largest single layer), counted on the meta device."""
    import torch

    from pretrain.model import build_model, count_parameters

    with torch.device("meta"):
        model = build_model(model_cfg)
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return count_parameters(model), largest


def estimates(params: int, largest: int, gpus_per_node: int, nodes: int) -> list[tuple[str, float, float]]:
    """Rows of (setting, GiB per GPU, GiB of CPU memory per node)."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    gpus = gpus_per_node * nodes
    built_whole = 4 * params * gpus_per_node * 1.5  # every rank's fp32 model, as DeepSpeed counts ZeRO-2's
    rows = [
        ("ZeRO-0 (data parallel)", 16 * params, built_whole),
        ("ZeRO-1", 4 * params + 12 * params / gpus, built_whole),
    ]
    for offload in (False, True):
        cpu, gpu = estimate_zero2_model_states_mem_needs(params, gpus_per_node, nodes, cpu_offload=offload)
        rows.append((f"ZeRO-2{' + offload optimizer' if offload else ''}", gpu, cpu))
    for offload, offload_params in ((False, False), (True, False), (True, True)):
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            params, largest, gpus_per_node, nodes, cpu_offload=offload, cpu_offload_params=offload_params
        )
        what = " + offload optimizer and parameters" if offload_params else " + offload optimizer" if offload else ""
        rows.append((f"ZeRO-3{what}", gpu, cpu))
    return [(name, gpu / GIB, cpu / GIB) for name, gpu, cpu in rows]


def main(argv: list[str] | None = None) -> None:
    from pretrain.config import exit_on_config_error, parse_cli

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("args", nargs="+", help="CONFIG.yaml and dotted overrides")
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--nodes", type=int, default=1)
    ns = ap.parse_args(sys.argv[1:] if argv is None else argv)

    @exit_on_config_error
    def report() -> None:
        cfg = parse_cli(ns.args)
        params, largest = model_sizes(cfg.model)
        print(f"{params / 1e6:,.1f}M parameters (largest layer {largest / 1e6:,.1f}M) on "
              f"{ns.nodes} node(s) x {ns.gpus_per_node} GPU(s): model states per GPU")  # fmt: skip
        print(f"{'setting':42s} {'GPU GiB':>9s} {'CPU GiB/node':>13s}")
        for name, gpu, cpu in estimates(params, largest, ns.gpus_per_node, ns.nodes):
            print(f"{name:42s} {gpu:9.2f} {cpu:13.1f}")

    report()


if __name__ == "__main__":
    main()

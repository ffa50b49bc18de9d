"""python -m pretrain.bench {step,attention,zero,gpu} ... (see pretrain/bench/__init__.py)."""

from __future__ import annotations

import argparse
import importlib

COMMANDS = {
    "step": "one training step, ours beside HF transformers' model of the same shape",
    "attention": "each attention kernel's time and memory over sequence lengths",
    "zero": "memory and tokens/s per ZeRO stage at 2 processes; 1 vs 2 processes",
    "host": "host memory per process building, loading and exporting: ZeRO-3 (partitioned) vs ZeRO-2",
    "gpu": "the GPU checks in one command (wheels, pytest -m gpu, the benchmarks in bf16)",
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pretrain.bench", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"pretrain.bench.{name}")
        module.add_arguments(sub.add_parser(name, help=help_text, description=module.__doc__,
                                            formatter_class=argparse.RawDescriptionHelpFormatter))  # fmt: skip
    args = ap.parse_args(argv)
    importlib.import_module(f"pretrain.bench.{args.command}").run(args)
    from pretrain.engine import leave_process_group

    leave_process_group()  # `step --engine` joined a process group of one; its engines are freed here


if __name__ == "__main__":
    main()

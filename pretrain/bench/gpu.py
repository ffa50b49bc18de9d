"""The GPU checks in one command, for a bare GPU machine lent for a few minutes.

    python -m pretrain.bench gpu --out DIR [--wheels .whl] [--budget-s 450]
    python -m pretrain.bench gpu --out DIR --dry-run      # CPU, tiny sizes: the same plan, in seconds

In order, each a child process with its own time limit, its output in ``DIR/NAME.log``:
1. install the packages the image lacks (deepspeed, datasets, wandb, ...) from the wheels carried
   along (``../shared/hooks/device-wheels.sh`` builds them) into a private folder;
2. ``pytest -m gpu`` (the tests marked for a GPU);
3. the ``step`` benchmark in bf16: LLaMA-style 1B and GPT-2 small (with our DeepSpeed step and the
   nanoGPT-shaped row), sdpa, then flash_attn where the package is installed, then compiled (ours
   and HF's only: a third compilation would not fit the step's time);
4. the ``attention`` sweep to 16K tokens.
A step that would not fit in what is left of ``--budget-s`` is skipped and listed as skipped.
``DIR/summary.md`` collects every table; the JSON and PNG files sit beside it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--wheels", type=Path, default=ROOT / ".whl", help="folder of wheels to install first")
    ap.add_argument("--site", type=Path, default=Path("/tmp/pretrain-site"), help="where the wheels go")
    ap.add_argument("--budget-s", type=float, default=450.0, help="the whole plan's time limit")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, no pytest: checks the plan runs")


def plan(dry: bool) -> list[tuple[str, list[str], float]]:
    """(name, command, time limit in s) in the order they run."""
    bench = [sys.executable, "-m", "pretrain.bench"]
    if dry:
        tiny = ["configs/model/debug.yaml", "--batch", "2", "--seq-len", "32", "--warmup", "1", "--rounds", "2"]
        return [
            ("step-debug", [*bench, "step", *tiny, "--engine"], 120),
            ("step-debug-compiled", [*bench, "step", *tiny, "--no-hf", "--no-nanogpt", "--compile"], 120),
            (
                "attention",
                [
                    *bench,
                    "attention",
                    "--lengths",
                    "64",
                    "128",
                    "--kernels",
                    "eager",
                    "sdpa",
                    "flex",
                    "--cases",
                    "causal",
                    "--budget-s",
                    "30",
                ],
                60,
            ),  # fmt: skip
        ]
    timing = ["--dtype", "bf16", "--rounds", "5", "--steps", "2", "--warmup", "3"]
    llama = ["configs/model/llama-1b.yaml", "--batch", "4", "--seq-len", "2048", *timing]
    gpt2 = ["configs/model/gpt2-small.yaml", "model.vocab_size=50304", "--batch", "16", "--seq-len", "1024", *timing]
    steps = [
        (
            "pytest-gpu",
            [
                sys.executable,
                "-m",
                "pytest",
                "-m",
                "gpu",
                "-q",
                "-p",
                "no:cacheprovider",
                "tests/model",
                "tests/training/test_gpu_engine.py",
            ],
            150,
        ),
        ("step-llama-1b-sdpa", [*bench, "step", *llama], 150),
        ("step-gpt2-small-sdpa", [*bench, "step", *gpt2, "--engine"], 120),
        (
            "attention",
            [*bench, "attention", "--lengths", "512", "1024", "2048", "4096", "8192", "16384", "--budget-s", "70",
             "--cases", "causal", "alibi", "window", "bidirectional"],  # the exact kernels' cases first
            100,
        ),  # fmt: skip
    ]
    if _has("flash_attn"):
        flash = [*bench, "step", llama[0], "model.attention=flash_attn", *llama[1:]]
        steps.append(("step-llama-1b-flash_attn", flash, 150))
    steps += [
        ("step-gpt2-small-compiled", [*bench, "step", *gpt2, "--no-nanogpt", "--compile"], 180),
        ("step-llama-1b-compiled", [*bench, "step", *llama, "--compile"], 240),
    ]
    return steps


def run(args) -> None:
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    paths = [str(ROOT)]
    summary = [f"# GPU checks ({'dry run' if args.dry_run else 'full'})", ""]
    if args.wheels.is_dir() and any(args.wheels.glob("*.whl")) and not _has("deepspeed"):
        wheels = sorted(str(w) for w in args.wheels.glob("*.whl"))
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
               "--no-cache-dir", "--upgrade", "--target", str(args.site), *wheels]  # fmt: skip
        ok = _child("install-wheels", cmd, env, 120, out, summary)
        if ok:
            paths.append(str(args.site))
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [os.environ.get("PYTHONPATH")] if p])
    env.setdefault("MPLBACKEND", "Agg")
    summary.append(f"python {sys.version.split()[0]}; {_gpu_line(env)}")
    summary.append("")
    for name, cmd, limit in plan(args.dry_run):
        left = args.budget_s - (time.time() - start)
        if left < min(limit, 60):
            summary += [f"## {name}: skipped ({left:.0f} s left of the {args.budget_s:g} s budget)", ""]
            continue
        if cmd[1:3] == ["-m", "pretrain.bench"] and cmd[3] in ("step", "attention"):
            cmd = [*cmd, "--out", str(out)]
        _child(name, cmd, env, min(limit, left), out, summary)
    summary.append(f"total {time.time() - start:.0f} s")
    (out / "summary.md").write_text("\n".join(summary) + "\n")
    print("\n".join(summary))


def _child(name: str, cmd: list[str], env: dict, limit: float, out: Path, summary: list[str]) -> bool:
    """Run one step of the plan; its output goes to NAME.log and its last lines to the summary."""
    t0 = time.time()
    print(f"== {name} (limit {limit:.0f} s): {' '.join(cmd[1:])}", flush=True)
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
        text, status = proc.stdout + proc.stderr, f"exit {proc.returncode}"
        ok = proc.returncode == 0
    except subprocess.TimeoutExpired as e:
        text = (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace")
        status, ok = f"stopped after {limit:.0f} s", False
    (out / f"{name}.log").write_text(text)
    lines = [ln for ln in text.splitlines() if "Warning" not in ln and "[WARNING]" not in ln]
    tail = lines[-14:] if ok else lines[-25:]
    summary += [f"## {name}: {status}, {time.time() - t0:.0f} s", "", "```", *tail, "```", ""]
    print("\n".join(summary[-len(tail) - 4 :]), flush=True)
    return ok


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _gpu_line(env: dict) -> str:
    code = ("import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() "
            "else 'no GPU'); import deepspeed; print('deepspeed', deepspeed.__version__)")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "WARNING" not in ln]
    return "; ".join(lines[-3:])

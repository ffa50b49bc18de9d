"""Every attention kernel's forward + backward time and memory over sequence lengths.

    python -m pretrain.bench attention [--lengths 512 1024 2048 4096 8192]
        [--cases causal bidirectional alibi window] [--budget-s 240] [--out DIR]
        [--kernels eager sdpa flash flex flash_attn performer linformer] [--linear-dim 64]

One attention layer's kernel alone (q, k, v of batch x heads x T x head size), with the masks and
biases built as the model builds them (``build_context``). performer and linformer are the linear
attentions (``model.linear_attention``) with ``--linear-dim`` features or projected length; their
TFLOP/s column is left empty (they do not do the T^2 work it counts). Memory is what autograd keeps for the
backward pass (measurable on CPU too) and, on a GPU, the peak allocated during the step. A kernel
that cannot express a case, or has no backward on this device (flex on CPU), is listed as such.
Lengths run shortest first and a kernel stops at the first length that would pass the time budget.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from pretrain.bench import machine, median, print_table, saved_bytes, timed, write_json

LINEAR = ["performer", "linformer"]
KERNELS = ["eager", "sdpa", "flash", "flex", "flash_attn", *LINEAR]
CASES = {"causal": {}, "bidirectional": {"arch": "encoder"}, "alibi": {"position": "alibi"},
         "window": {"sliding_window": 1024}}  # fmt: skip


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    ap.add_argument("--kernels", nargs="+", default=KERNELS, choices=KERNELS)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--linear-dim", type=int, default=64, help="performer's features, linformer's projected length")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="default: bf16 on GPU, fp32 on CPU")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=240.0, help="whole sweep's time budget")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", type=Path, default=None, help="write attention.json and attention-*.png here")


def run(args) -> dict:
    from pretrain.model import ModelConfig
    from pretrain.model.attention import KERNELS as FUNCS
    from pretrain.model.attention import build_context
    from pretrain.model.position import build_position

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    d_model = args.heads * args.head_dim
    start = time.perf_counter()
    rows = []
    for case in args.cases:
        for kernel in args.kernels:
            for T in sorted(args.lengths):
                row = {"case": case, "kernel": kernel, "seq_len": T}
                rows.append(row)
                linear = kernel if kernel in LINEAR else None
                cfg = ModelConfig(d_model=d_model, num_heads=args.heads, max_seq_len=max(args.lengths),
                                  attention="sdpa" if linear else kernel, linear_attention=linear,
                                  linear_attention_dim=args.linear_dim, **CASES[case])  # fmt: skip
                why = _unsupported(cfg, kernel, device, dtype)
                if why:
                    row["note"] = why
                    break
                elapsed = time.perf_counter() - start
                if elapsed > args.budget_s:
                    row["note"] = f"over the {args.budget_s:g} s budget"
                    break
                position = build_position(cfg)
                position = position.to(device) if position is not None else None
                ctx = build_context(cfg, position, q_len=T, device=device)
                shape = (args.batch, args.heads, T, args.head_dim)
                q, k, v = (torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
                fn = _linear(cfg, device, dtype) if linear else FUNCS[kernel]
                try:
                    row.update(_measure(fn, q, k, v, ctx, device, args.repeats))
                except (RuntimeError, torch.OutOfMemoryError) as e:  # out of memory, a kernel refusing a shape
                    row["note"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
                    q = k = v = None
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    break
                flops = 4 * args.batch * args.heads * T * T * args.head_dim * 3  # QK^T and AV, fwd + bwd (x3)
                row["tflops"] = None if linear else flops / (row["fwd_bwd_ms"] / 1e3) / 1e12
    rows = [r for r in rows if "fwd_bwd_ms" in r or "note" in r]
    print(f"\nattention kernels: batch {args.batch}, {args.heads} heads x {args.head_dim}, {dtype}, {device.type}")
    table = print_table(rows, [("case", "case"), ("kernel", "kernel"), ("seq_len", "T"), ("fwd_bwd_ms", "fwd+bwd ms"),
                               ("tflops", "TFLOP/s (full T^2)"), ("saved_mib", "saved MiB"), ("peak_mib", "peak MiB"),
                               ("note", "note")])  # fmt: skip
    record = {"benchmark": "attention", "device": device.type, "dtype": str(dtype), "batch": args.batch,
              "heads": args.heads, "head_dim": args.head_dim, "rows": rows, "machine": machine(),
              "table": table}  # fmt: skip
    write_json(args.out, "attention.json", record)
    if args.out is not None:
        plot(rows, args.out, f"{device.type}, {dtype}, batch {args.batch}, {args.heads} heads x {args.head_dim}")
    return record


def _measure(fn, q, k, v, ctx, device, repeats: int) -> dict:
    """Time and memory of forward + backward of one kernel call."""

    def step():
        out, _ = fn(q, k, v, ctx, 0.0)
        out.sum().backward()

    first = timed(step, device)  # warm-up (and compilation, for flex on GPU)
    times = [timed(step, device) for _ in range(repeats)]
    row = {"fwd_bwd_ms": 1e3 * median(times), "first_ms": 1e3 * first,
           "saved_mib": saved_bytes(lambda: fn(q, k, v, ctx, 0.0)) / 2**20}  # fmt: skip
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        row["peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    return row


def _linear(cfg, device, dtype):
    """One layer's linear attention as a kernel-shaped function (q, k, v, ctx, dropout) -> (out, None)."""
    from pretrain.model.attention import Attention

    layer = Attention(cfg).to(device=device, dtype=dtype)
    if cfg.linear_attention == "performer":
        from pretrain.model.linear_attention import performer

        return lambda q, k, v, ctx, p: (performer(q, k, v, ctx.causal, 0, None, layer.features(q)), None)
    from pretrain.model.linear_attention import linformer

    return lambda q, k, v, ctx, p: (linformer(q, k, v, layer.sequence, None, p), None)


def _unsupported(cfg, kernel: str, device: torch.device, dtype) -> str | None:
    """Why ``kernel`` cannot run this case here, or None."""
    try:
        cfg.validate()
    except ValueError as e:
        return f"cannot express it: {e}"
    if kernel == "flex" and device.type != "cuda":
        return "no backward on CPU (torch's FlexAttention)"
    if kernel == "flash" and device.type == "cuda" and dtype == torch.float32:
        return "needs fp16/bf16 on CUDA"
    if kernel == "flash_attn":
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            return "flash-attn package not installed"
        if device.type != "cuda":
            return "GPU only"
    return None


def plot(rows: list[dict], out: Path, title: str) -> list[Path]:
    """attention-time.png and attention-memory.png: one panel per case, one line per kernel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(r["case"] for r in rows))
    paths = []
    for key, label, name in (("fwd_bwd_ms", "forward + backward (ms)", "time"),
                             ("saved_mib", "kept for backward (MiB)", "memory")):  # fmt: skip
        fig, axes = plt.subplots(1, len(cases), figsize=(5 * len(cases), 4), squeeze=False)
        for ax, case in zip(axes[0], cases, strict=True):
            for kernel in dict.fromkeys(r["kernel"] for r in rows if r["case"] == case):
                pts = [(r["seq_len"], r[key]) for r in rows if r["case"] == case and r["kernel"] == kernel and key in r]
                if pts:
                    ax.plot(*zip(*pts, strict=True), marker="o", label=kernel)
            ax.set(title=case, xlabel="sequence length", ylabel=label, xscale="log", yscale="log")
            ax.set_xticks(sorted({r["seq_len"] for r in rows}), [str(x) for x in sorted({r["seq_len"] for r in rows})])
            ax.grid(True, alpha=0.3)
            ax.legend()
        fig.suptitle(f"attention kernels: {title}")
        fig.tight_layout()
        path = out / f"attention-{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths

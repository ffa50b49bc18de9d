"""Benchmarks: ``python -m pretrain.bench {step,attention,zero,host,gpu}``.

- ``step``: one training step of a model size, ours side by side with HF transformers' class of the
  same shape (and, with ``--engine``, our full DeepSpeed step), interleaved in one process.
- ``attention``: every attention kernel's forward + backward time and memory over sequence lengths.
- ``zero``: memory per process and tokens/s for ZeRO stages 0-3 (and offload), 1 vs 2 processes.
- ``gpu``: the GPU checks in one command (wheels, ``pytest -m gpu``, the benchmarks above in bf16).

Each prints a table, writes JSON (and PNGs where there is a picture to draw) under ``--out``.
Numbers go into ``docs/benchmarks.md`` with the command that produced them; no test asserts a time.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from pretrain.monitor import device_peak_tflops  # noqa: F401 - re-exported for the benchmarks


def random_batch(cfg, batch: int, seq_len: int, gen: torch.Generator) -> tuple[dict, dict]:
    """(our batch, HF's) of random tokens: next tokens for a decoder (HF shifts its labels itself),
    15% masked positions for an encoder, and for an encoder-decoder the shapes its objective gives
    ``seq_len`` tokens (HF given our decoder inputs, so both decode the same)."""
    from pretrain.model.loss import IGNORE as ignore

    if cfg.arch == "encoder-decoder":
        from pretrain.data.span_corruption import lengths

        source, target = lengths(seq_len, 0.15, 3.0, infilling=cfg.position == "learned")
        src = torch.randint(0, cfg.vocab_size, (batch, source), generator=gen)
        labels = torch.randint(0, cfg.vocab_size, (batch, target), generator=gen)
        dec = torch.cat([torch.zeros_like(labels[:, :1]), labels[:, :-1]], dim=1)
        ours = {"input_ids": src, "decoder_input_ids": dec, "labels": labels}
        return ours, dict(ours)
    inputs = torch.randint(0, cfg.vocab_size, (batch, seq_len), generator=gen)
    if cfg.causal:
        labels = torch.cat([inputs[:, 1:], torch.full_like(inputs[:, :1], ignore)], dim=1)
        return {"input_ids": inputs, "labels": labels}, {"input_ids": inputs, "labels": inputs}
    pick = torch.rand(inputs.shape, generator=gen) < 0.15
    labels = torch.where(pick, inputs, torch.full_like(inputs, ignore))
    return {"input_ids": inputs, "labels": labels}, {"input_ids": inputs, "labels": labels}


def loss_fn(cfg):
    """The loss training computes for this model: seq2seq_loss for an encoder-decoder, else lm_loss."""
    from pretrain.trainer import lm_loss, seq2seq_loss

    return seq2seq_loss if cfg.arch == "encoder-decoder" else lm_loss


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds that ``fn`` takes, device work included."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def saved_bytes(fn: Callable[[], object], exclude: tuple[torch.Tensor, ...] = ()) -> int:
    """Bytes that autograd keeps for the backward pass while ``fn`` runs its forward (each storage
    once; storages of ``exclude``, such as inputs and weights that exist anyway, left out): the
    activation memory a training step holds at its peak, measurable on CPU too."""
    seen: dict[int, int] = {}
    skip = {t.untyped_storage().data_ptr() for t in exclude}

    def pack(t: torch.Tensor):
        s = t.untyped_storage()
        if s.data_ptr() not in skip:
            seen[s.data_ptr()] = max(seen.get(s.data_ptr(), 0), s.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def machine() -> dict:
    """What ran the benchmark, for the JSON record."""
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu": _cpu_name(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # AVX2 / AVX512: kernels differ
            "threads": torch.get_num_threads()}  # fmt: skip
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _cpu_name() -> str:
    """The CPU's model name (platform.processor() is empty on most Linux machines)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def print_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A plain text table of ``rows`` under (key, heading) ``columns``; returned and printed."""

    def cell(v):
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
        return "" if v is None else str(v)

    grid = [[h for _, h in columns]] + [[cell(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(line[i]) for line in grid) for i in range(len(columns))]
    text = "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in grid)
    print(text, flush=True)
    return text


def write_json(out: Path | None, name: str, record: dict) -> None:
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(json.dumps(record, indent=1, default=str) + "\n")

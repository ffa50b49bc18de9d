"""Training metrics and where they go.

Every rank computes the same numbers; rank 0 writes them: ``metrics.jsonl`` in the run directory
(one JSON object per log step or eval), a progress bar on the console, TensorBoard event files
under ``RUN/tensorboard``, and wandb (online when logged in, offline otherwise). A failing
dashboard is switched off with one warning: it never stops the run.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from pretrain.config import LogConfig
from pretrain.files import write_atomic
from pretrain.status import parse_record

# Dense peak TFLOP/s per device and precision, by a substring of torch.cuda.get_device_name();
# first match wins. fp32 is the plain (non-tensor-core) rate; tf32 applies when torch allows it.
PEAK_TFLOPS = [
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    ("H100 NVL", {"bf16": 835.0, "fp16": 835.0, "tf32": 417.5, "fp32": 60.0}),
    ("GH200", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("H100", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("H200", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("B200", {"bf16": 2250.0, "fp16": 2250.0, "tf32": 1100.0, "fp32": 80.0}),
    ("A100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.0, "fp16": 362.0, "tf32": 183.0, "fp32": 91.6}),
    ("A10G", {"bf16": 70.0, "fp16": 70.0, "tf32": 35.0, "fp32": 31.2}),
    ("L4", {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    ("V100", {"fp16": 125.0, "fp32": 15.7}),
]


def device_peak_tflops(precision: str, override: float | None = None) -> float | None:
    """Peak dense TFLOP/s of this device at ``precision`` (bf16, fp16 or fp32; fp32 counts as tf32
    where torch lets matmuls use it); ``override`` (log.peak_tflops) wins; None when unknown (CPU)."""
    if override:
        return override
    if not torch.cuda.is_available():
        return None
    if precision == "fp32" and torch.backends.cuda.matmul.allow_tf32:
        precision = "tf32"
    name = torch.cuda.get_device_name()
    return next((peaks.get(precision) for key, peaks in PEAK_TFLOPS if key in name), None)


def peak_memory_gib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB, CPU resident set


class Monitor:
    def __init__(self, cfg: LogConfig, run_dir: Path, rank: int, world_size: int, flops_per_token: Callable,
                 config: dict, max_steps: int, start_step: int = 0, precision: str = "fp32",
                 wandb_timeout_s: float = 30.0):  # fmt: skip
        self.cfg, self.run_dir, self.rank, self.world = cfg, Path(run_dir), rank, world_size
        self.flops_per_token, self.max_steps = flops_per_token, max_steps
        self.peak = device_peak_tflops(precision, cfg.peak_tflops)
        self.wandb_timeout_s = wandb_timeout_s
        self._last = time.perf_counter()
        self._tb = self._wandb = self._bar = None
        self.wandb_note = ""
        if rank != 0:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        _drop_records_after(self.run_dir / "metrics.jsonl", start_step)  # a resume replays later steps
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a")
        if cfg.progress_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=max_steps, initial=start_step, desc="train", dynamic_ncols=True, file=sys.stdout)
        if cfg.tensorboard:
            self._tb = self._guard("tensorboard", lambda: self._open_tensorboard(config))
        if cfg.wandb != "off":
            self._wandb = self._guard("wandb", lambda: self._open_wandb(config))

    # -- sinks

    def _open_tensorboard(self, config: dict):
        import yaml
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        writer.add_text("config", "```\n" + yaml.safe_dump(config, sort_keys=False) + "\n```")
        return writer

    def _open_wandb(self, config: dict):
        """online/offline as asked (auto: WANDB_MODE if set, else online when logged in); an online
        start that fails or takes longer than ``wandb_timeout_s`` falls back to offline with one
        warning, so that a slow or absent network never holds rank 0 past the collective timeout."""
        import wandb

        mode = self.cfg.wandb
        if mode == "auto":
            env = os.environ.get("WANDB_MODE", "").lower()
            mode = env if env in ("online", "offline", "disabled") else "online" if _wandb_logged_in() else "offline"
        if mode == "disabled":
            return None
        id_file = self.run_dir / "wandb_id"
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id)

        def start(mode):
            settings = wandb.Settings(init_timeout=self.wandb_timeout_s, silent=True, console="off")
            return wandb.init(project=self.cfg.wandb_project, name=self.run_dir.name, id=run_id, resume="allow",
                              dir=str(self.run_dir), config=config, mode=mode, settings=settings)  # fmt: skip

        try:
            run = start(mode)
        except Exception as e:  # noqa: BLE001 - no network, a bad key, a slow server
            if mode != "online":
                raise
            warnings.warn(f"wandb online failed ({type(e).__name__}: {str(e)[:200]}); logging offline instead",
                          stacklevel=2)  # fmt: skip
            mode = "offline"
            wandb.teardown()  # forget the failed attempt, whose run id would otherwise count as in use
            run = start(mode)
        if mode == "offline":
            self.wandb_note = f"wandb (offline): sync with `wandb sync {Path(run.dir).parent}`"
        else:
            self.wandb_note = f"wandb: {run.url}"
        return run

    def _guard(self, name: str, fn):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - a dashboard must never stop training
            warnings.warn(f"{name} switched off: {type(e).__name__}: {e}", stacklevel=2)
            return None

    # -- reporting

    def step(self, step: int, metrics: dict, tokens: int, steps_since_last: int = 1,
             predicted: int | None = None) -> dict:
        """Record an optimizer step's metrics; ``tokens`` processed by all ranks since the last call,
        ``predicted`` of them with a token label (the output layer runs there; None: all of them)."""
        now = time.perf_counter()
        elapsed, self._last = now - self._last, now
        tokens_per_s = tokens / max(elapsed, 1e-9)
        out = {"step": step, **metrics, "tokens_per_s": tokens_per_s, "step_time_s": elapsed / max(1, steps_since_last),
               "peak_memory_gib": peak_memory_gib()}  # fmt: skip
        if self.peak:
            fraction = 1.0 if predicted is None else predicted / max(tokens, 1)
            out["mfu"] = self.flops_per_token(fraction) * tokens_per_s / (self.peak * 1e12 * self.world)
        self._emit("train", out)
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix(loss=f"{out['loss']:.3f}", lr=f"{out['lr']:.2e}", tok_s=f"{tokens_per_s:,.0f}")
        return out

    def progress(self, step: int) -> None:
        if self._bar is not None:
            self._bar.update(step - self._bar.n)

    def eval(self, step: int, metrics: dict) -> None:
        self._emit("eval", {"step": step, **metrics})
        if self._bar is not None:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)))
            self._bar.write(f"step {step}: {shown}")

    def attention(self, step: int, stats: dict) -> None:
        """Per-head attention summaries ((L, H) tensors by name) as TensorBoard heatmaps."""
        if self.rank != 0 or self._tb is None:
            return
        from pretrain import pictures

        units = {"entropy": "nats", "distance": "tokens"}
        for name, values in stats.items():
            if self._tb is None:  # switched off by a failed write: no figure drawn for nothing
                return
            unit = units.get(name.rsplit("_", 1)[-1], "")  # an encoder-decoder's: encoder_entropy, cross_entropy, ...
            figure = pictures.matrix(values.cpu(), f"attention {name.replace('_', ' ')} at step {step}", unit)
            self._to_tensorboard(lambda n=name, f=figure: self._tb.add_figure(f"attention/{n}", f, step))  # closes it
        self._to_tensorboard(lambda: self._tb.flush())

    def note(self, text: str) -> None:
        if self.rank == 0:
            (self._bar.write if self._bar is not None else print)(text)

    def _emit(self, kind: str, record: dict) -> None:
        self.restart_clock()
        if self.rank != 0:
            return
        self._jsonl.write(json.dumps({"kind": kind, "time": time.time(), **record}) + "\n")
        self._jsonl.flush()
        step = record["step"]
        scalars = {f"{kind}/{k}": v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}

        def to_tensorboard() -> None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()

        self._to_tensorboard(to_tensorboard)
        if self._wandb is not None:
            try:
                self._wandb.log(scalars, step=step)
            except Exception as e:  # noqa: BLE001
                warnings.warn(f"wandb switched off: {e}", stacklevel=2)
                self._wandb = None

    def _to_tensorboard(self, write: Callable) -> None:
        """One write to TensorBoard; one that fails (its folder removed, a full disk: the writer's
        thread raises at the next flush) switches TensorBoard off with one warning, as a failing
        wandb does: a dashboard never stops training. metrics.jsonl is written as before."""
        if self._tb is None:
            return
        try:
            write()
        except Exception as e:  # noqa: BLE001 - the event writer's thread re-raises whatever it met
            warnings.warn(f"TensorBoard switched off ({type(e).__name__}: {str(e)[:200]}); training goes on and "
                          "metrics.jsonl is still written", stacklevel=2)  # fmt: skip
            self._tb = None

    def restart_clock(self) -> None:
        """Time spent outside training steps (sinks, eval, checkpoints) stays out of tokens/s."""
        self._last = time.perf_counter()

    def close(self) -> list[str]:
        """Flush everything; return lines that say where the results are."""
        if self.rank != 0:
            return []
        if self._bar is not None:
            self._bar.close()
        lines = [f"metrics: {self.run_dir / 'metrics.jsonl'}"]
        self._to_tensorboard(lambda: self._tb.close())
        if self._tb is not None:
            lines.append(
                f"TensorBoard: {self.run_dir / 'tensorboard'} (open with: python -m launch dashboard "
                f"{self.run_dir.parent}, or tensorboard --logdir {self.run_dir})"
            )
        if self._wandb is not None:
            self._guard("wandb", self._wandb.finish)
            lines.append(self.wandb_note)
        self._jsonl.close()
        return lines


def _drop_records_after(path: Path, step: int) -> None:
    """Keep only the records up to ``step``: those after it were logged by a run that died before
    its next checkpoint, and the resumed run logs those steps again. A torn line (a process killed
    mid-write, a full disk) goes too, so that the next record starts a line of its own."""
    if not path.exists():
        return
    text = path.read_text(errors="replace")
    lines = text.splitlines()
    kept = [ln for ln in lines if (rec := parse_record(ln)) is not None and rec.get("step", 0) <= step]
    if len(kept) != len(lines) or (text and not text.endswith("\n")):
        write_atomic(path, "".join(ln + "\n" for ln in kept))


def _wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import netrc

        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False

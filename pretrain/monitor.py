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
from pathlib import Path

import torch

from pretrain.config import LogConfig

# Peak dense bf16 TFLOP/s per device, by a substring of torch.cuda.get_device_name(); first match wins.
PEAK_TFLOPS = [
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("GH200", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("A10G", 70.0),
    ("L4", 121.0),
    ("V100", 125.0),
]


def peak_tflops(cfg: LogConfig) -> float | None:
    if cfg.peak_tflops:
        return cfg.peak_tflops
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_TFLOPS if k in name), None)


def peak_memory_gib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB, CPU resident set


class Monitor:
    def __init__(self, cfg: LogConfig, run_dir: Path, rank: int, world_size: int, flops_per_token: float,
                 config: dict, max_steps: int, start_step: int = 0):  # fmt: skip
        self.cfg, self.run_dir, self.rank, self.world = cfg, Path(run_dir), rank, world_size
        self.flops_per_token, self.max_steps = flops_per_token, max_steps
        self.peak = peak_tflops(cfg)
        self._last = time.perf_counter()
        self._tb = self._wandb = self._bar = None
        self.wandb_note = ""
        if rank != 0:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
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
        import wandb

        mode = self.cfg.wandb
        if mode == "auto":
            mode = "online" if _wandb_logged_in() else "offline"
        id_file = self.run_dir / "wandb_id"
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id)
        run = wandb.init(
            project=self.cfg.wandb_project, name=self.run_dir.name, id=run_id, resume="allow", dir=str(self.run_dir),
            config=config, mode=mode, settings=wandb.Settings(init_timeout=60, silent=True, console="off"),
        )  # fmt: skip
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

    def step(self, step: int, metrics: dict, tokens: int, steps_since_last: int = 1) -> dict:
        """Record an optimizer step's metrics; ``tokens`` processed by all ranks since the last call."""
        now = time.perf_counter()
        elapsed, self._last = now - self._last, now
        tokens_per_s = tokens / max(elapsed, 1e-9)
        out = {"step": step, **metrics, "tokens_per_s": tokens_per_s, "step_time_s": elapsed / max(1, steps_since_last),
               "peak_memory_gib": peak_memory_gib()}  # fmt: skip
        if self.peak:
            out["mfu"] = self.flops_per_token * tokens_per_s / (self.peak * 1e12 * self.world)
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
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            try:
                self._wandb.log(scalars, step=step)
            except Exception as e:  # noqa: BLE001
                warnings.warn(f"wandb switched off: {e}", stacklevel=2)
                self._wandb = None

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
        if self._tb is not None:
            self._tb.close()
            lines.append(
                f"TensorBoard: {self.run_dir / 'tensorboard'} (open with: python -m launch dashboard "
                f"{self.run_dir.parent}, or tensorboard --logdir {self.run_dir})"
            )
        if self._wandb is not None:
            self._guard("wandb", self._wandb.finish)
            lines.append(self.wandb_note)
        self._jsonl.close()
        return lines


def _wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import netrc

        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False

"""python -m launch dashboard [RUNS_DIR]: TensorBoard over every run in RUNS_DIR (loss, learning
rate, tokens/s, MFU, memory, eval metrics), on localhost. wandb stays the dashboard for users with
an account (log.wandb). The address is recorded in RUNS_DIR/.dashboard.json for ``launch runs``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from pretrain.config import ConfigError
from pretrain.status import pid_alive

RECORD = ".dashboard.json"


def free_port(host: str, start: int) -> int:
    for port in range(start, start + 100):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise ConfigError(f"no free port in {start}-{start + 99} on {host}; choose one with --port")


def serve(runs_dir: str, host: str = "127.0.0.1", port: int | None = None, ready_timeout: float = 120.0) -> None:
    root = Path(runs_dir)
    if not root.is_dir():
        raise ConfigError(
            f"RUNS_DIR={runs_dir!r}: no such directory (runs are written to output_dir, 'runs' by default)"
        )
    port = port or free_port(host, 6006)
    url = f"http://{host}:{port}/"
    proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(root), "--host", host,
                             "--port", str(port), "--reload_interval", "5"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + ready_timeout
    while True:
        if proc.poll() is not None:
            raise ConfigError(f"TensorBoard did not start: {proc.stderr.read().strip()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise ConfigError(f"TensorBoard did not answer at {url} within {ready_timeout:.0f}s") from None
            time.sleep(0.5)
    record = root / RECORD
    record.write_text(json.dumps({"url": url, "pid": os.getpid(), "host": socket.gethostname()}))
    print(f"dashboard: {url} (TensorBoard over {root.resolve()}; Ctrl-C stops it)", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
        record.unlink(missing_ok=True)


def address(runs_dir: str | Path) -> str | None:
    """The dashboard serving RUNS_DIR now, if one is."""
    try:
        rec = json.loads((Path(runs_dir) / RECORD).read_text())
    except (OSError, ValueError):
        return None
    if rec.get("host") == socket.gethostname() and not pid_alive(rec.get("pid", -1)):
        return None
    return rec.get("url")

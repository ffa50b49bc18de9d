"""A run's state on disk: ``RUN/status.json``, written by rank 0, read by ``python -m launch runs``.

    {"state": "running" | "finished" | "failed", "step": 120, "host": "node1", "pid": 4242,
     "world_size": 16, "started": 1764150000.0, "updated": 1764150600.0, "error": "..."}

A process killed outright (SIGKILL, a lost node) cannot say that it failed: its file still says
"running". ``read_status`` then reports it failed when its pid is gone from this host, or when
nothing in the run directory changed for ``stale_s`` seconds on another host. Imports no torch.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

FILE = "status.json"
STATES = ("running", "finished", "failed")


def write_status(run_dir: str | Path, state: str, **fields) -> None:
    assert state in STATES, state
    path = Path(run_dir) / FILE
    old = _load(path) or {}
    now = time.time()
    record = {**old, **fields, "state": state, "host": socket.gethostname(), "pid": os.getpid(), "updated": now}
    if state == "running" and old.get("state") != "running":
        record["started"] = now
        record.pop("error", None)
    tmp = path.with_name(FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)


def read_status(run_dir: str | Path, stale_s: float = 1800.0) -> dict | None:
    """The recorded status, with ``state`` corrected for a process that died without a word."""
    run_dir = Path(run_dir)
    record = _load(run_dir / FILE)
    if record is None or record.get("state") != "running":
        return record
    if record.get("host") == socket.gethostname():
        if not pid_alive(record.get("pid", -1)):
            return {**record, "state": "failed", "error": "the process ended without recording why (killed?)"}
    else:
        last = max((p.stat().st_mtime for p in (run_dir / FILE, run_dir / "metrics.jsonl") if p.exists()), default=0)
        if time.time() - last > stale_s:
            return {**record, "state": "failed", "error": f"no sign of life for {time.time() - last:.0f}s"}
    return record


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

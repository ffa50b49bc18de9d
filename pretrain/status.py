"""A run's state on disk: ``RUN/status.json``, written by rank 0, read by ``python -m launch runs``.

    {"state": "running" | "finished" | "failed" | "stopped", "step": 120, "host": "node1", "pid": 4242,
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

from pretrain.files import write_atomic

METRICS = "metrics.jsonl"


def metric_records(run_dir: str | Path, kind: str | None = None) -> list[dict]:
    """The records of ``RUN/metrics.jsonl`` in order (those of one ``kind``: train, eval, ...);
    none when there is no file yet. One record per step: a resume drops the replayed ones first."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    records = [r for r in map(parse_record, path.read_text(errors="replace").splitlines()) if r is not None]
    return [r for r in records if kind is None or r.get("kind") == kind]


def parse_record(line: str) -> dict | None:
    """One line of metrics.jsonl as its record; None for a blank line or one that is not a whole
    record (the tail written by a process killed mid-write, or when the disk filled up) or not one
    of ours (its step not a whole number: a line edited by hand or another program's)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("step", 0), int) else None

FILE = "status.json"
STATES = ("running", "finished", "failed", "stopped")
"""stopped: on a signal (preemption, a time limit), after saving a checkpoint of its last step."""


def write_status(run_dir: str | Path, state: str, **fields) -> None:
    assert state in STATES, state
    path = Path(run_dir) / FILE
    old = _load(path) or {}
    now = time.time()
    record = {**old, **fields, "state": state, "host": socket.gethostname(), "pid": os.getpid(), "updated": now}
    if state == "running" and old.get("state") != "running":
        record["started"] = now
        record.pop("error", None)
    write_atomic(path, json.dumps(record, indent=1))  # a full disk leaves no half-written file behind


HEARTBEATS = "heartbeat"


def write_heartbeat(run_dir: str | Path, rank: int, step: int) -> None:
    """Each rank's last step reached, so that a launcher can name the rank that stopped progressing."""
    folder = Path(run_dir) / HEARTBEATS
    folder.mkdir(parents=True, exist_ok=True)
    record = {"rank": rank, "step": step, "host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
    try:
        write_atomic(folder / f"rank_{rank:05d}.json", json.dumps(record), durable=False)
    except OSError:
        pass  # a heartbeat is best effort: never the reason a run stops


def stalled_rank(run_dir: str | Path, quiet_s: float = 5.0) -> str | None:
    """Which rank stopped, from the heartbeats: every rank writes one every few seconds and a last
    one when it fails (a collective timing out, say), so the rank that went silent is the one
    heard from longest before the others; None when no rank was silent for ``quiet_s`` more."""
    beats = [b for b in (_load(p, BEAT_FIELDS) for p in sorted((Path(run_dir) / HEARTBEATS).glob("rank_*.json"))) if b]
    if len(beats) < 2:
        return None
    beats.sort(key=lambda b: b["time"])
    worst, second = beats[0], beats[1]
    if second["time"] - worst["time"] < quiet_s:
        return None
    return (f"rank {worst['rank']} on {worst['host']} stopped making progress after step {worst['step']} "
            f"(silent {second['time'] - worst['time']:.0f}s longer than any other rank)")


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


def running_here(run_dir: str | Path) -> dict | None:
    """The status of a run of this directory that is still training on this host (its rank 0 alive,
    a pretrain or finetune process, not this one), else None. Runs on other hosts are not judged:
    a requeued job must be able to take over from one that was killed without a word."""
    record = load_status(run_dir)
    if not record or record.get("state") != "running" or record.get("host") != socket.gethostname():
        return None
    pid = record.get("pid", -1)
    if pid == os.getpid() or not pid_alive(pid):
        return None
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return record  # no /proc: the pid is alive, trust it
    return record if ("pretrain" in command or "finetune" in command) else None  # else a reused pid


def load_status(run_dir: str | Path) -> dict | None:
    """status.json as written (``read_status`` corrects it for processes that died silently)."""
    return _load(Path(run_dir) / FILE)


NUMBER = (int, float)
STATUS_FIELDS = {"state": str, "host": str, "pid": int, "step": int, "error": str, "started": NUMBER,
                 "updated": NUMBER}  # fmt: skip
BEAT_FIELDS = {"rank": int, "step": int, "host": str, "pid": int, "time": NUMBER}


def _load(path: Path, fields: dict = STATUS_FIELDS) -> dict | None:
    """The JSON object in ``path`` with its ``fields`` of the types given, else None: a file that is
    torn, edited by hand or another program's reads as no record, and a field of another type as
    absent (a status's state must be one of STATES; a heartbeat needs every field)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    record = {k: v for k, v in record.items() if k not in fields or isinstance(v, fields[k])}
    if fields is STATUS_FIELDS and record.get("state") not in STATES:
        return None
    if fields is BEAT_FIELDS and not all(k in record for k in fields):
        return None
    return record


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

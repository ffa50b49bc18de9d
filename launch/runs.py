"""python -m launch runs [RUNS_DIR]: one line per run: state (running, finished, failed, stopped), step,
last loss, newest complete checkpoint; and the dashboard's address."""

from __future__ import annotations

from pathlib import Path

from launch.dashboard import address
from pretrain.checkpoint_layout import checkpoints_dir, newest_complete
from pretrain.status import parse_record, read_status


def last_train_record(run_dir: Path) -> dict | None:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - 65536))
        lines = f.read().decode(errors="replace").splitlines()
    for line in reversed(lines):  # the first may be cut by the seek, the last torn by a kill
        rec = parse_record(line)
        if rec is not None and rec.get("kind") == "train" and "step" in rec:
            loss = rec.get("loss")
            return {**rec, "loss": loss if isinstance(loss, (int, float)) else None}  # "nan" as text is no loss
    return None


def newest_checkpoint(run_dir: Path) -> str | None:
    """The tag that resume would take."""
    found = newest_complete(checkpoints_dir(run_dir))
    return found.name if found is not None else None


def list_runs(runs_dir: str | Path) -> list[dict]:
    rows = []
    for run_dir in sorted(p for p in Path(runs_dir).iterdir() if p.is_dir()):
        status = read_status(run_dir)
        rec = last_train_record(run_dir)
        if status is None and rec is None and not (run_dir / "config.yaml").exists():
            continue  # not a run (a data cache, an export...)
        rows.append({
            "name": run_dir.name,
            "state": status["state"] if status else "unknown",
            "step": rec["step"] if rec else (status or {}).get("step", 0),
            "loss": rec.get("loss") if rec else None,
            "checkpoint": newest_checkpoint(run_dir),
            "error": (status or {}).get("error"),
        })  # fmt: skip
    return rows


def show(runs_dir: str) -> str:
    rows = list_runs(runs_dir)
    if not rows:
        return f"no runs in {runs_dir}"
    lines = [f"{'run':24s} {'state':9s} {'step':>8s} {'loss':>8s}  newest checkpoint"]
    for r in rows:
        loss = f"{r['loss']:.4f}" if r["loss"] is not None else "-"
        lines.append(f"{r['name']:24s} {r['state']:9s} {r['step']:8d} {loss:>8s}  {r['checkpoint'] or '-'}")
        if r["state"] in ("failed", "stopped") and r["error"]:
            lines.append(f"{'':24s} {r['error'].splitlines()[0][:150]}")
    url = address(runs_dir)
    lines.append(
        f"dashboard: {url}" if url else f"dashboard: not running (start it: python -m launch dashboard {runs_dir})"
    )
    return "\n".join(lines)

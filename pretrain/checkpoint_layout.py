"""Where checkpoints lie and which one counts, without torch (the launcher reads it too); the
layout itself is described in pretrain.checkpoint."""

from __future__ import annotations

from pathlib import Path

COMPLETE = "complete.json"


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def is_complete(tag_dir: Path) -> bool:
    return (tag_dir / COMPLETE).is_file()


def complete_tags(root: Path) -> list[str]:
    """Complete tags, oldest first."""
    if not root.is_dir():
        return []
    tags = [p.name for p in root.iterdir() if p.name.startswith("step_") and not p.name.endswith("_universal")]
    return sorted(t for t in tags if is_complete(root / t))


def newest_complete(root: Path) -> Path | None:
    """The tag folder to resume from: the one ``latest`` names if complete, else the newest complete."""
    latest = root / "latest"
    if latest.is_file():
        tag = latest.read_text().strip()
        if is_complete(root / tag):
            return root / tag
    tags = complete_tags(root)
    return root / tags[-1] if tags else None

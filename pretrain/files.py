"""Small helpers on files and ports shared by runs, checkpoints, status and tests: a write that
readers see whole or not at all, a damaged file kept aside, a standard output that holds a
command's results alone, and a free TCP port."""

from __future__ import annotations

import os
import socket
import sys
import uuid
from pathlib import Path


def write_atomic(path: str | Path, text: str, durable: bool = True) -> Path:
    """Write ``text`` to a hidden temporary file beside ``path`` and rename it over ``path``, so a
    reader never sees half a file. ``durable``: fsync the file and the folder, so the new content
    also survives a crash of the machine. A failure (a full disk) leaves no temporary file behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)
    return path


def set_aside(path: Path) -> Path | None:
    """Rename a damaged file or folder to ``NAME.damaged-XXXXXXXX`` beside it (kept for a look, out
    of the way of the one made again); None if another process moved it first."""
    aside = path.with_name(f"{path.name}.damaged-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return None
    return aside


def fsync_dir(path: str | Path) -> None:
    """Make a folder's entries (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def results_stdout():
    """A text stream to this process's standard output, which from now on holds only what is
    written to that stream: file descriptor 1 is pointed at standard error, so prints, C code and
    loggers bound to stdout (DeepSpeed's) say their piece there, and `COMMAND > out.jsonl` gets the
    results alone."""
    sys.stdout.flush()
    results = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    return results


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]

"""Small helpers on files and ports shared by runs, checkpoints, status and tests: a write that
readers see whole or not at all, a damaged file kept aside, a folder being filled that names its
process (so one left by a killed process can be told from one in progress), a standard output
that holds a command's results alone, and a free TCP port."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
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


OWNER = "owner.json"


def mark_owner(folder: Path) -> None:
    """Say in ``folder`` which process (on which host) is filling it, for abandoned()."""
    (folder / OWNER).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))


def abandoned(folder: Path) -> int | None:
    """The id of the process that began filling ``folder`` on this host and no longer runs (it was
    killed before it finished), else None: a folder of another host, of a running process, or
    without an owner file (being made this moment, or by an earlier release) is left to its owner."""
    try:
        owner = json.loads((folder / OWNER).read_text())
        pid = int(owner["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if owner.get("host") != socket.gethostname() or pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return pid
    except OSError:  # running, as another user
        return None
    return None


@contextlib.contextmanager
def write_folder(final: Path):
    """A hidden folder beside ``final``, marked with its owner, to fill in the block; renamed to
    ``final`` when the block ends, removed when it raises (a signal, a full disk). A reader sees
    ``final`` whole or not at all; when another process renamed the same folder into place first,
    theirs is as good and ours is removed."""
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        mark_owner(tmp)
        yield tmp
        (tmp / OWNER).unlink()
        try:
            os.rename(tmp, final)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_abandoned(folder: Path, log) -> None:
    """Folders begun under ``folder`` on this host (write_folder) by a process that was killed before
    it finished (SIGKILL, the OOM killer, a lost node) hold as much as a cache: removed, and said."""
    for tmp in folder.glob(".*.tmp-*"):
        pid = abandoned(tmp)
        if pid is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            log(f"removed {tmp}: filling it was begun by process {pid}, which ended before it finished")


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


def writable_folder(field: str, folder: str | Path, given: str | Path | None = None) -> None:
    """``folder`` is, or can be made, a folder this process may write in; else a ConfigError naming
    ``field`` (a config key or a command's flag) and the value ``given`` (default: the folder), before
    any work whose result would have nowhere to go."""
    from pretrain.config import ConfigError

    folder = Path(folder)
    here = folder
    while not here.exists() and here != here.parent:
        here = here.parent
    named = f"{field}={str(given or folder)!r}"
    if not here.is_dir():
        raise ConfigError(f"{named}: {here} is a file, not a folder; choose another {field}")
    if not os.access(here, os.W_OK | os.X_OK):
        raise ConfigError(f"{named}: {here} is not writable by this user; choose another {field}")


def writable_file(field: str, path: str | Path) -> None:
    """``path`` can be written as a file (its folder is, or can be made, writable; it is no folder)."""
    from pretrain.config import ConfigError

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{field}={str(path)!r} is a folder; give a file's name (in it, say)")
    writable_folder(field, path.parent, path)

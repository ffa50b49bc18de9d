"""local and hosts jobs: start one torchrun per node (here, or through ``cluster.remote`` such as
ssh), stream their output with the node's name in front, and end the job as a whole.

When a node's processes fail, the others get ``cluster.grace_s`` to notice (their collectives fail
after the run's ``train.dist_timeout_s``) and are then stopped, so a lost node ends the job with an
error instead of a hang. Started again, the run resumes from its newest complete checkpoint.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass


@dataclass
class Node:
    name: str
    argv: list[str]
    stdin: str | None = None
    """Written to the command's standard input, then closed: secrets travel here, never in argv."""
    secret_names: tuple[str, ...] = ()
    stop: list[str] | None = None
    """A command that stops this node's processes where they run (for remote nodes, whose local ssh
    client going away does not stop them)."""


class JobFailed(RuntimeError):
    def __init__(self, message: str, stopped: bool = False):
        super().__init__(message)
        self.stopped = stopped
        """The launcher was asked to stop (a signal, Ctrl-C) and stopped the job in turn."""


def run_nodes(nodes: list[Node], grace_s: float, env: dict[str, str] | None = None, out=sys.stdout) -> None:
    """Run every node's command to the end; JobFailed names the nodes that failed and how."""
    lock = threading.RLock()  # a signal handler in the main thread may say something while it holds it
    procs, tails = [], {node.name: deque(maxlen=300) for node in nodes}
    # One node writes straight to this terminal (progress bars intact); several get their name in front.
    piped = len(nodes) > 1
    for node in nodes:
        proc = subprocess.Popen(node.argv, stdout=subprocess.PIPE if piped else None,
                                stderr=subprocess.STDOUT if piped else None, text=True, start_new_session=True,
                                stdin=subprocess.PIPE if node.stdin is not None else None,
                                env={**os.environ, **(env or {})})  # fmt: skip
        if node.stdin is not None:
            proc.stdin.write(node.stdin)
            proc.stdin.close()
        procs.append(proc)
        if piped:
            threading.Thread(target=_pump, args=(proc, f"[{node.name}] ", out, lock, tails[node.name]),
                             daemon=True).start()  # fmt: skip

    def stop_all(sig=signal.SIGTERM, stacks=True):
        if sig == signal.SIGTERM and stacks:  # first every rank prints its Python stack (faulthandler): where it hung
            for node, proc in zip(nodes, procs, strict=True):
                if proc.poll() is None and not node.stop:
                    _signal_workers(proc.pid, signal.SIGUSR1)
            time.sleep(2)
        for node, proc in zip(nodes, procs, strict=True):
            if proc.poll() is None:
                if node.stop and sig != signal.SIGKILL:
                    _stop_remote(node, out, lock)
                _signal_tree(proc.pid, sig)

    def stop_saving(why: str):
        """The launcher itself was asked to stop (a scheduler, a user): SIGTERM to every node, whose
        ranks finish their step and save a checkpoint of it; SIGKILL after grace_s."""
        _say(out, lock, f"launch: stopping the job ({why}); ranks that are training save a checkpoint of their step, "
                        f"{grace_s:.0f}s at most")  # fmt: skip
        stop_all(stacks=False)
        _wait(procs, grace_s)
        stop_all(signal.SIGKILL)
        raise JobFailed(f"the launcher was stopped ({why.split(';')[0]}) and stopped the job", stopped=True)

    def terminated(sig, _):
        if sig == signal.SIGHUP:  # nothing more can be shown: what this process prints goes nowhere
            sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the rest of the process
        stop_saving("SIGHUP: its terminal closed" if sig == signal.SIGHUP else "SIGTERM")

    # SIGHUP (the terminal or ssh session went away) as SIGTERM: left alone, this process died and
    # the nodes, in sessions of their own, trained on unsupervised with status.json saying running.
    # A signal this process was started ignoring (nohup: SIGHUP) stays ignored.
    previous = {sig: signal.signal(sig, terminated) for sig in (signal.SIGTERM, signal.SIGHUP)
                if signal.getsignal(sig) is not signal.SIG_IGN}  # fmt: skip
    failed: dict[str, int] = {}
    deadline = None
    try:
        while True:
            codes = [p.poll() for p in procs]
            for node, code in zip(nodes, codes, strict=True):
                if code not in (None, 0) and node.name not in failed:
                    failed[node.name] = code
                    _say(out, lock, f"launch: node {node.name} exited with status {code}")
                    if deadline is None:
                        deadline = time.monotonic() + grace_s
                        if len(nodes) > 1:
                            _say(out, lock, f"launch: the other nodes get {grace_s:.0f}s to stop")
            if all(c is not None for c in codes):
                break
            if deadline is not None and time.monotonic() > deadline:
                left = [n.name for n, c in zip(nodes, codes, strict=True) if c is None]
                _say(out, lock, f"launch: stopping {', '.join(left)}")
                stop_all()
                _wait(procs, 10)
                stop_all(signal.SIGKILL)
                for n, p in zip(nodes, procs, strict=True):
                    if n.name in left:
                        failed.setdefault(n.name, p.wait())
                break
            time.sleep(0.2)
    except KeyboardInterrupt:  # Ctrl-C (the nodes, in sessions of their own, do not see it): as SIGTERM
        try:
            stop_saving("Ctrl-C; Ctrl-C again stops it at once, without saving")
        except KeyboardInterrupt:
            stop_all(signal.SIGKILL)
            raise JobFailed("the launcher was stopped at once by a second Ctrl-C; the step in progress was not "
                            "saved") from None  # fmt: skip
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _wait(procs, 5)
        time.sleep(0.2)  # let the output threads drain
    if failed:
        shown = "; ".join(f"{name} (status {code}{_cause(tails[name])})" for name, code in failed.items())
        raise JobFailed(f"the job failed on {len(failed)} of {len(nodes)} node(s): {shown}")


def _stop_remote(node: Node, out, lock) -> None:
    try:
        subprocess.run(node.stop, stdin=subprocess.DEVNULL, capture_output=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as e:
        _say(out, lock, f"launch: could not stop the processes on {node.name} ({e}); check that none is left")


def _cause(lines) -> str:
    """The last exception a node printed (its workers' own, not torchrun's summary of them)."""
    for line in reversed(lines):
        text = line.strip()
        if "Error: " in text and "ChildFailedError" not in text and not text.startswith(("File ", "raise ")):
            return ": " + text[:300]
    return ""


def _pump(proc, prefix: str, out, lock, tail) -> None:
    for line in proc.stdout:  # read to the end whatever happens to ``out``: a node must never block writing
        tail.append(line.rstrip())
        _say(out, lock, prefix + line.rstrip("\n"))


def _say(out, lock, text: str) -> None:
    """A line to ``out``; one that cannot be written (a terminal that closed: EIO) is dropped."""
    with lock:
        try:
            out.write(text + "\n")
            out.flush()
        except (OSError, ValueError):
            pass


def _wait(procs, timeout: float) -> None:
    end = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass


def _signal_workers(torchrun_pid: int, sig) -> None:
    """Signal torchrun's workers (its children), not torchrun, which would die of SIGUSR1."""
    for p in _children(torchrun_pid):
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def _signal_tree(pid: int, sig) -> None:
    """Signal a node's command and everything under it (torchrun puts workers in their own sessions,
    so the process group alone would miss them)."""
    for p in _descendants(pid) + [pid]:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def _children(pid: int) -> list[int]:
    return _process_tree().get(pid, [])


def _process_tree() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    return children


def _descendants(pid: int) -> list[int]:
    children = _process_tree()
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def describe(nodes: list[Node]) -> str:
    def one(n: Node) -> str:
        secrets = f"\n# on standard input: {', '.join(n.secret_names)} (values not shown)" if n.secret_names else ""
        return f"# {n.name}\n{shlex.join(n.argv)}{secrets}"

    return "\n".join(one(n) for n in nodes)

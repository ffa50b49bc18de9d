"""How the launcher explains a failed job: a stopped rank is named from the heartbeats; ranks still
running when a job is stopped print their Python stacks first (SIGUSR1, faulthandler); a rank 0
killed outright still leaves status.json saying "failed" with the cause, not "running" forever."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.launch.conftest import sigterm_to_sigkill_s
from tests.training.conftest import ENV, ROOT, kill_tree

pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.timeout(600)]


def start(cfg, *extra):
    return subprocess.Popen([sys.executable, "-m", "launch", "local", str(cfg), "--nproc-per-node", "2",
                             "cluster.gpus=false", "cluster.grace_s=3", *extra], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip


def worker(launcher_pid: int, rank: int) -> psutil.Process:
    """The training process of ``rank`` under the launcher (torchrun's child with that RANK)."""
    deadline = time.time() + 120
    while time.time() < deadline:
        for p in psutil.Process(launcher_pid).children(recursive=True):
            try:
                if "pretrain" in p.cmdline() and p.environ().get("RANK") == str(rank):
                    return p
            except psutil.Error:
                continue
        time.sleep(0.2)
    raise AssertionError(f"no rank-{rank} worker appeared")


def wait_for_step(run_dir, rank: int, step: int, proc) -> None:
    beat = run_dir / "heartbeat" / f"rank_{rank:05d}.json"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads(beat.read_text())["step"] >= step:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"rank {rank} never reached step {step}")


def fail_a_rank(make_config, name: str, rank: int, step: int, sig, dist_timeout_s: float):
    """Start a 2-process job, wait until ``rank`` reached ``step``, send it ``sig``; the launcher's
    exit status, output, the run's folder and the seconds from the signal to the launcher's end."""
    cfg = make_config(name=name, train={"max_steps": 100000, "dist_timeout_s": dist_timeout_s, "micro_batch_size": 1})
    run_dir = Path(yaml.safe_load(cfg.read_text())["output_dir"]) / name
    proc = start(cfg)
    try:
        wait_for_step(run_dir, rank, step, proc)
        time.sleep(3)  # a few more heartbeats from the others (every 2 s)
        worker(proc.pid, rank).send_signal(sig)
        sent = time.monotonic()
        out, _ = proc.communicate(timeout=300)
        took = time.monotonic() - sent
    finally:
        kill_tree(proc.pid)
    return proc.returncode, out, run_dir, took


def test_a_stopped_rank_is_named_from_the_heartbeats(make_config):
    code, out, run_dir, took = fail_a_rank(make_config, "stuck", 1, 3, signal.SIGSTOP, dist_timeout_s=12)
    assert code == 1, out[-3000:]
    # rank 0 gives up after 12 s, the stopped rank 1 is killed after grace_s=3 (torch alone waits 30 s)
    print(f"\na stopped rank: the job ended {took:.1f}s after the stop (timeout 12s, grace 3s)")
    assert sigterm_to_sigkill_s(out) < 3 + 2, out[-3000:]
    # ~18 s on a quiet machine; the bound catches a wait for gloo's 30-minute default, not a busy host
    assert took < 120, f"the job ended {took:.0f}s after rank 1 stopped"
    assert "rank 1 on " in out and "stopped making progress" in out, out[-3000:]
    assert "Timed out" in out  # rank 0 collective gave up after train.dist_timeout_s, with its stack
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed"


def test_a_killed_rank_0_leaves_the_run_marked_failed_with_the_cause(make_config):
    code, out, run_dir, _ = fail_a_rank(make_config, "killed0", 0, 2, signal.SIGKILL, dist_timeout_s=20)
    assert code == 1, out[-3000:]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed" and status["error"].startswith("launch: the job failed"), status
    assert "Start the same command again" not in out  # no checkpoint yet: nothing to resume from


def test_ranks_still_running_print_their_stacks_before_the_job_is_stopped(tmp_path):
    """Node a fails; node b's worker (a child of its command, as torchrun's workers are) gets
    SIGUSR1 and faulthandler prints where it was, before b is stopped."""
    from launch.processes import JobFailed, Node, run_nodes

    worker = "import faulthandler, signal, time; faulthandler.register(signal.SIGUSR1); time.sleep(120)"
    b = Node("b", [sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {worker!r}])"])
    a = Node("a", ["sh", "-c", "sleep 2; exit 7"])
    lines = []

    class Out:
        def write(self, text):
            lines.append(text)

        def flush(self):
            pass

    with pytest.raises(JobFailed, match="status 7"):
        run_nodes([a, b], grace_s=1, out=Out())
    text = "".join(lines)
    assert 'File "<string>", line 1' in text, text  # where the worker was: its one line, in time.sleep
    assert any(line.startswith("[b] ") and ("Current thread" in line or "Thread 0x" in line) for line in lines), text

"""A real two-node job on one machine: two network namespaces joined by a veth pair are the two
hosts, each with its own address and an interface named eth0. ``python -m launch hosts`` starts one
torchrun in each (``ip netns exec`` stands in for ssh); c10d rendezvous and gloo run over the
link; DeepSpeed ZeRO-2 trains and checkpoints. Then one host's link goes down: the job must end
with a clear error within the process-group timeout (plus the launcher's grace), not hang; the same
command, run again once the link is back, resumes from the newest checkpoint.

The namespaces are named by their addresses, so that a hostfile line names both the namespace
(for ``ip netns exec``) and the address the other host dials, as a hostname does on a cluster.
"""

import os
import random
import shutil
import subprocess
import sys
import threading
import time

import pytest

from tests.training.conftest import ENV, ROOT, kill_tree, losses

pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.timeout(900)]

TIMEOUT_S, GRACE_S = 15, 10


def ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True)


@pytest.fixture
def two_hosts():
    if shutil.which("ip") is None:
        pytest.skip("network namespaces cannot be made here: the ip command (iproute2) is missing")
    if os.geteuid() != 0:
        pytest.skip("network namespaces cannot be made here: making them needs root")
    net = f"10.{random.randint(64, 250)}.{os.getpid() % 250}"
    hosts = [f"{net}.1", f"{net}.2"]
    veth = [f"ptv{os.getpid() % 100000}{s}" for s in "ab"]
    made = []
    try:
        for host in hosts:
            ip("netns", "add", host)
            made.append(host)
        ip("link", "add", veth[0], "type", "veth", "peer", "name", veth[1])
        for host, dev in zip(hosts, veth, strict=True):
            ip("link", "set", dev, "netns", host)
            ip("-n", host, "link", "set", dev, "name", "eth0")
            ip("-n", host, "addr", "add", f"{host}/24", "dev", "eth0")
            ip("-n", host, "link", "set", "eth0", "up")
            ip("-n", host, "link", "set", "lo", "up")
    except subprocess.CalledProcessError as e:
        for host in made:
            subprocess.run(["ip", "netns", "del", host], capture_output=True)
        pytest.skip(f"network namespaces cannot be made here: {' '.join(e.cmd)}: {e.stderr.strip()}")
    yield hosts
    for host in made:  # deleting a namespace deletes its end of the veth pair, and so the pair
        subprocess.run(["ip", "netns", "del", host], capture_output=True)


class Job:
    """python -m launch hosts as a user runs it, output collected as it comes."""

    def __init__(self, args: list[str]):
        env = {**ENV, "GLOO_SOCKET_IFNAME": "eth0"}  # forwarded to both hosts (GLOO_* travels)
        argv = [sys.executable, "-m", "launch", "hosts", *args]
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self.reader.start()

    @property
    def out(self) -> str:
        return "".join(self.lines)

    def wait(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_tree(self.proc.pid)
            pytest.fail(f"the job hung for {timeout:.0f}s and was killed:\n{self.out[-5000:]}")
        self.reader.join(10)
        return code


def test_two_hosts_train_fail_when_a_link_is_cut_and_resume(make_config, tmp_path, two_hosts):
    a, b = two_hosts
    hostfile = tmp_path / "hostfile"
    hostfile.write_text(f"{a} slots=1\n{b} slots=1\n")
    cfg = make_config(name="twohosts", train={"max_steps": 60, "dist_timeout_s": TIMEOUT_S},
                      checkpoint={"every_steps": 10}, log={"every_steps": 5})  # fmt: skip
    args = [str(cfg), "--hostfile", str(hostfile), "cluster.remote=ip netns exec {host} sh -c",
            f"cluster.grace_s={GRACE_S}"]  # fmt: skip
    run_dir = tmp_path / "runs" / "twohosts"

    first = Job(args)
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoints" / "latest").exists():
        if first.proc.poll() is not None or time.monotonic() > deadline:
            kill_tree(first.proc.pid)
            pytest.fail(f"no checkpoint was written:\n{first.out[-5000:]}")
        time.sleep(0.05)
    cut = time.monotonic()
    ip("-n", b, "link", "set", "eth0", "down")
    code = first.wait(TIMEOUT_S + GRACE_S + 120)
    took = time.monotonic() - cut
    out = first.out
    assert f"rendezvous at {a}:29500" in out and f"[{a}]" in out and f"[{b}]" in out
    assert code == 1, out[-3000:]
    assert "launch: the job failed on" in out and "Timed out" in out, out[-3000:]
    assert "Start the same command again to resume" in out
    print(f"\ntwo hosts: the job ended {took:.1f}s after the link was cut (timeout {TIMEOUT_S}s, grace {GRACE_S}s)")
    assert took < TIMEOUT_S + GRACE_S + 45, f"failing took {took:.0f}s"
    done_before = max(losses(run_dir))
    assert 10 <= done_before < 60
    saved = (run_dir / "checkpoints" / "latest").read_text().strip()
    runs = subprocess.run([sys.executable, "-m", "launch", "runs", str(tmp_path / "runs")], capture_output=True,
                          text=True, cwd=ROOT, timeout=60).stdout  # fmt: skip
    assert "twohosts" in runs and " failed " in runs and "Timed out" in runs and saved in runs

    ip("-n", b, "link", "set", "eth0", "up")
    second = Job(args)
    assert second.wait(600) == 0, second.out[-5000:]
    assert f"resuming from {run_dir / 'checkpoints' / saved} (saved by 2 process(es), now 2)" in second.out
    assert sorted(losses(run_dir))[-1] == 60
    runs = subprocess.run([sys.executable, "-m", "launch", "runs", str(tmp_path / "runs")], capture_output=True,
                          text=True, cwd=ROOT, timeout=60).stdout  # fmt: skip
    row = next(line for line in runs.splitlines() if line.startswith("twohosts"))
    assert row.split()[1:3] == ["finished", "60"] and row.split()[-1] == "step_00000060"

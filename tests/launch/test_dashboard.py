"""The front door end to end: ``python -m launch local`` trains a short real run (2 CPU processes),
``launch runs`` lists it, ``launch dashboard`` serves TensorBoard over it, and headless Chromium
(Debian's package; ``make test`` installs it) shows the loss chart with the run's last loss. The
screenshot is saved to test-artifacts/dashboard.png."""

import re
import shutil
import subprocess
import sys
import threading
import time

import pytest

from pretrain.files import free_port
from pretrain.status import metric_records
from tests.training.conftest import ENV, ROOT, kill_tree

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = ROOT / "test-artifacts" / "dashboard.png"


def chromium(url: str, profile, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=20000", "--window-size=1400,1800"]  # fmt: skip
    return subprocess.run([CHROMIUM, *flags, *args, url], capture_output=True, text=True, timeout=180)


def launch(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch", *map(str, args)], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make test installs Debian's package as root)")
def test_local_run_listed_and_its_loss_chart_in_the_dashboard(make_config, tmp_path):
    runs = tmp_path / "runs"
    cfg = make_config(name="dash", train={"max_steps": 8}, checkpoint={"every_steps": 4},
                      log={"every_steps": 1, "tensorboard": True})  # fmt: skip
    trained = launch("local", cfg, "--nproc-per-node", "2", "cluster.gpus=false")
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    assert trained.stdout.count("done: step 8;") == 1
    last_loss = metric_records(runs / "dash", "train")[-1]["loss"]

    listed = launch("runs", runs).stdout
    row = next(line for line in listed.splitlines() if line.startswith("dash "))
    assert row.split() == ["dash", "finished", "8", f"{last_loss:.4f}", "step_00000008"]
    assert "dashboard: not running" in listed

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "launch", "dashboard", str(runs), "--port", str(port)], cwd=ROOT,
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)  # fmt: skip
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(server.stdout), daemon=True).start()
    try:
        deadline = time.monotonic() + 120
        while not any(line.startswith("dashboard: ") for line in lines):
            assert server.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        url = next(line for line in lines if line.startswith("dashboard: ")).split()[1]
        assert url == f"http://127.0.0.1:{port}/"
        assert f"dashboard: {url}" in launch("runs", runs).stdout

        page = url + "?darkMode=false#timeseries"
        dom = chromium(page, tmp_path / "profile1", "--dump-dom").stdout
        card = re.search(r'title="train/loss".*?(?=title="train/)', dom, re.S)
        assert card, f"no train/loss card on the page ({len(dom)} characters)"
        card = card.group(0)
        assert "<line-chart" in card and "<canvas" in card  # the chart itself
        assert "dash/tensorboard" in card and f"{last_loss:.4f}" in card  # this run, its last loss
        SCREENSHOT.parent.mkdir(exist_ok=True)
        SCREENSHOT.unlink(missing_ok=True)
        chromium(page, tmp_path / "profile2", f"--screenshot={SCREENSHOT}")
        assert SCREENSHOT.stat().st_size > 20_000
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            kill_tree(server.pid)
    assert not (runs / ".dashboard.json").exists()

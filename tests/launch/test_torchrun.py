"""python -m launch.torchrun: a failed job ends with one line naming the rank that stopped first and
the others, and exits with the first failed worker's status (2 is how a configuration error reads)."""

import subprocess
import sys
import time

from tests.launch.conftest import sigterm_to_sigkill_s
from tests.training.conftest import ENV, ROOT


def test_failed_workers_are_one_line_and_the_first_ones_exit_status(tmp_path):
    worker = tmp_path / "worker.py"
    # rank 0 refuses its input at once; rank 1 would still be working when torchrun stops it
    worker.write_text("import os, sys, time\n"
                      "if os.environ['RANK'] == '1':\n"
                      "    time.sleep(60)\n"
                      "sys.exit(2)\n")  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "launch.torchrun", "--standalone", "--nproc_per_node", "2",
                           str(worker)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "torchrun: rank 0 stopped first with exit status 2; then rank 1 (exit status " in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_workers_left_after_a_failure_get_the_shutdown_timeout_not_torchs_30_s(tmp_path):
    """torch waits a fixed 30 s for the workers left after a failure, whatever --shutdown-timeout
    says; a rank that does not end on SIGTERM (hung in a collective, or stopped) made every failed
    job 30 s longer than cluster.grace_s."""
    worker = tmp_path / "worker.py"
    worker.write_text("import os, signal, sys, time\n"
                      "if os.environ['RANK'] == '1':\n"
                      "    signal.signal(signal.SIGTERM, lambda *_: None)\n"
                      "    time.sleep(120)\n"
                      "time.sleep(1)\n"
                      "sys.exit(3)\n")  # fmt: skip
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "launch.torchrun", "--standalone", "--nproc_per_node", "2",
                           "--shutdown-timeout", "2", str(worker)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    took = time.monotonic() - start
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "torchrun: rank 0 stopped first with exit status 3; then rank 1 (exit status -9)" in proc.stderr
    assert sigterm_to_sigkill_s(proc.stderr) < 2 + 2, proc.stderr[-3000:]  # not torch's fixed 30 s
    assert took < 60, f"took {took:.0f}s"

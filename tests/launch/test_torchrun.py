"""python -m launch.torchrun: a failed job ends with one line naming the rank that stopped first and
the others, and exits with the first failed worker's status (2 is how a configuration error reads)."""

import subprocess
import sys

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

"""launch runs: the state it reports for runs that finished, failed, run, or died without a word."""

import json
import os
import socket
import subprocess
import sys
import time

from launch.runs import list_runs
from pretrain.status import read_status, write_status


def make_run(root, name, status=None, losses=(), tags=(), latest=None):
    run = root / name
    (run / "checkpoints").mkdir(parents=True)
    if status is not None:
        (run / "status.json").write_text(json.dumps(status))
    with open(run / "metrics.jsonl", "w") as f:
        for step, loss in enumerate(losses, 1):
            f.write(json.dumps({"kind": "train", "step": step, "loss": loss}) + "\n")
        f.write(json.dumps({"kind": "eval", "step": len(losses), "val_loss": 9.0}) + "\n")
    for tag in tags:
        (run / "checkpoints" / tag).mkdir()
        (run / "checkpoints" / tag / "complete.json").write_text("{}")
    if latest:
        (run / "checkpoints" / latest).mkdir(exist_ok=True)  # a save cut short: no complete.json
        (run / "checkpoints" / "latest").write_text(latest)
    return run


def test_states_steps_losses_and_checkpoints(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    here = socket.gethostname()
    make_run(tmp_path, "a-finished", {"state": "finished", "host": here, "pid": 1}, [3.0, 2.5], ["step_00000002"])
    make_run(tmp_path, "b-running", {"state": "running", "host": here, "pid": os.getpid()}, [4.0], ["step_00000001"])
    make_run(tmp_path, "c-killed", {"state": "running", "host": here, "pid": dead.pid}, [4.0, 3.9, 3.8],
             ["step_00000001", "step_00000002"], latest="step_00000003")  # fmt: skip
    make_run(tmp_path, "d-failed", {"state": "failed", "host": here, "pid": 1, "error": "RuntimeError: boom"}, [5.0])
    stale = make_run(tmp_path, "e-elsewhere", {"state": "running", "host": "node7", "pid": 1}, [6.0])
    old = time.time() - 7200
    for f in stale.iterdir():
        os.utime(f, (old, old))
    (tmp_path / "data_cache").mkdir()  # not a run
    rows = {r["name"]: r for r in list_runs(tmp_path)}
    assert sorted(rows) == ["a-finished", "b-running", "c-killed", "d-failed", "e-elsewhere"]
    assert (rows["a-finished"]["state"], rows["a-finished"]["step"], rows["a-finished"]["loss"]) == ("finished", 2, 2.5)
    assert rows["a-finished"]["checkpoint"] == "step_00000002"
    assert rows["b-running"]["state"] == "running"
    assert rows["c-killed"]["state"] == "failed" and "without recording why" in rows["c-killed"]["error"]
    assert rows["c-killed"]["checkpoint"] == "step_00000002"  # latest names a partial save: resume skips it
    assert rows["d-failed"]["error"] == "RuntimeError: boom"
    assert rows["e-elsewhere"]["state"] == "failed" and "no sign of life" in rows["e-elsewhere"]["error"]


def test_status_and_metrics_files_of_another_shape_read_as_no_record_not_a_traceback(tmp_path):
    """A status.json, heartbeat or metrics line edited by hand (or another program's file of that
    name) made `launch runs` raise (KeyError, TypeError on a format) and a resume's trim of the
    replayed records compare a text step with a number."""
    from pretrain.monitor import _drop_records_after
    from pretrain.status import HEARTBEATS, metric_records, stalled_rank

    runs = {"list": ("[1, 2]", ['{"kind": "train", "step": 3, "loss": 1.5}']),
            "state-number": ('{"state": 3}', ['{"kind": "train", "step": "7", "loss": 1.0}']),
            "error-number": ('{"state": "failed", "error": 5, "pid": "x"}', ['{"kind": "train", "loss": 2.0}']),
            "text-loss": ("garbage{", ['{"kind": "train", "step": 4, "loss": "nan"}'])}  # fmt: skip
    for name, (status, lines) in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "status.json").write_text(status)
        (tmp_path / name / "config.yaml").write_text(f"name: {name}\n")
        (tmp_path / name / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    rows = {r["name"]: r for r in list_runs(tmp_path)}
    assert {n: (r["state"], r["step"], r["loss"], r["error"]) for n, r in rows.items()} == {
        "list": ("unknown", 3, 1.5, None), "state-number": ("unknown", 0, None, None),
        "error-number": ("failed", 0, None, None), "text-loss": ("unknown", 4, None, None)}  # fmt: skip
    assert "failed" in subprocess.run([sys.executable, "-m", "launch", "runs", str(tmp_path)], capture_output=True,
                                      text=True, check=True).stdout  # fmt: skip
    run = tmp_path / "state-number"
    assert metric_records(run) == []
    _drop_records_after(run / "metrics.jsonl", 2)  # what a resume does first: the line not ours goes, no TypeError
    assert (run / "metrics.jsonl").read_text() == ""
    (run / HEARTBEATS).mkdir()
    for rank, beat in enumerate(['{"rank": 0, "step": 5, "host": "a", "pid": 1, "time": 100.0}',
                                 '{"rank": 1, "step": 2, "host": "b", "pid": 2, "time": "late"}', "[]"]):  # fmt: skip
        (run / HEARTBEATS / f"rank_{rank:05d}.json").write_text(beat)
    assert stalled_rank(run) is None  # one readable heartbeat names no rank


def test_write_status_keeps_the_start_and_clears_an_old_error(tmp_path):
    write_status(tmp_path, "failed", error="x")
    write_status(tmp_path, "running", world_size=2)
    first = read_status(tmp_path)
    assert first["state"] == "running" and "error" not in first and first["world_size"] == 2
    write_status(tmp_path, "finished", step=7)
    done = read_status(tmp_path)
    assert done["started"] == first["started"] and done["step"] == 7 and done["state"] == "finished"


def test_a_torn_metrics_line_is_left_out_and_a_resume_starts_the_next_record_on_a_line_of_its_own(tmp_path):
    """A process killed mid-write (or a full disk) leaves half a record at the end of metrics.jsonl:
    reading it stopped every resume (JSONDecodeError in the monitor) and the plots."""
    from pretrain.monitor import _drop_records_after
    from pretrain.status import metric_records

    run = make_run(tmp_path, "torn", losses=[3.0, 2.5, 2.0])
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "step": 4, "lo')
    assert [r["step"] for r in metric_records(run, "train")] == [1, 2, 3]
    assert list_runs(tmp_path)[0]["step"] == 3
    _drop_records_after(run / "metrics.jsonl", 2)  # what a resume from step 2 does first
    text = (run / "metrics.jsonl").read_text()
    assert text.endswith("\n") and '"step": 4' not in text
    assert [r["step"] for r in metric_records(run)] == [1, 2]
    with open(run / "metrics.jsonl", "a") as f:  # the resumed run's next record
        f.write(json.dumps({"kind": "train", "step": 3, "loss": 2.1}) + "\n")
    assert [r["loss"] for r in metric_records(run, "train")] == [3.0, 2.5, 2.1]
    (run / "metrics.jsonl").write_text(text + '{"kind": "train", "step": 3')  # torn, nothing after step 2 kept
    _drop_records_after(run / "metrics.jsonl", 2)
    assert (run / "metrics.jsonl").read_text() == text


def test_the_launchers_last_line_says_why_rank_0_failed_this_time_not_an_earlier_time(tmp_path, capsys):
    """A failure rank 0 records (a full disk at a checkpoint, losses no longer finite) ended the
    launcher with only 'the job failed on 1 of 1 node(s): local (status 1)'."""
    from launch.__main__ import _supervise
    from launch.processes import Node

    run = tmp_path / "run"
    run.mkdir()
    write_status(run, "failed", error="ValueError: an earlier attempt's failure")
    fails = ("import sys; from pretrain.status import write_status; "
             f"write_status({str(run)!r}, 'running'); "
             f"write_status({str(run)!r}, 'failed', error='CheckpointNotSaved: checkpoint step_00000002 not saved: "
             "the disk holding it is full\\nsecond line'); sys.exit(1)")  # fmt: skip
    assert _supervise([Node("local", [sys.executable, "-c", fails])], 1, {}, run) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    said = "CheckpointNotSaved: checkpoint step_00000002 not saved: the disk holding it is full"
    assert last == f"launch: the job failed on 1 of 1 node(s): local (status 1); rank 0 failed with {said}.", last
    assert _supervise([Node("local", [sys.executable, "-c", "import sys; sys.exit(1)"])], 1, {}, run) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == "launch: the job failed on 1 of 1 node(s): local (status 1).", last  # the error above is older

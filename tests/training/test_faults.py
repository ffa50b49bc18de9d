"""Fault drills (issue: nothing lost, nobody let in, every failure explained), each with real
processes: a planted pickle payload is refused everywhere a checkpoint is read; a damaged shard is
skipped for the intact checkpoint before it; resuming from an older tag keeps the newer timeline;
a failed command leaves a finished run as it was; the schedule and metrics stay honest on resume;
a dashboard that cannot reach its server does not stop the run."""

import json
import os
import subprocess
import sys

import pytest
import torch

from pretrain import checkpoint as ckpt
from pretrain.status import metric_records

from .conftest import ENV, ROOT, command, kill_tree, launch, losses, metrics

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


class Payload:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(tag_dir, name, marker):
    """Replace a checkpoint file by a pickle payload and vouch for it in complete.json, as an
    attacker handing over the folder would."""
    torch.save({"module": Payload(marker), "optimizer_state_dict": Payload(marker)}, tag_dir / name)
    info = ckpt.saved_info(tag_dir)
    info["files"].update(ckpt.manifest(tag_dir, [name]))
    (tag_dir / ckpt.COMPLETE).write_text(json.dumps(info))


def python(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", *map(str, args)], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


@pytest.mark.parametrize("stage, shard", [(0, "mp_rank_00_model_states.pt"),
                                          (2, "zero_pp_rank_0_mp_rank_00_optim_states.pt")])  # fmt: skip
def test_a_planted_pickle_payload_is_refused_by_export_finetune_and_resume(make_config, tmp_path, stage, shard):
    launch(1, make_config(name="src", train={"max_steps": 2}, deepspeed={"zero_stage": stage}))
    tag_dir = tmp_path / "runs" / "src" / "checkpoints" / "step_00000002"
    marker = tmp_path / "PWNED"
    plant(tag_dir, shard, marker)
    export = python("pretrain.export", tag_dir, tmp_path / "out")
    assert export.returncode == 2, export.stderr[-2000:]
    assert f"refusing to load {tag_dir / shard}" in export.stderr and "Traceback" not in export.stderr
    finetune = python("finetune", "configs/finetune/stdlib-packages.yaml", f"init_from={tag_dir}",
                      f"output_dir={tmp_path / 'ft'}")  # fmt: skip
    assert finetune.returncode == 2 and "refusing to load" in finetune.stderr, finetune.stderr[-2000:]
    resume = launch(1, make_config(name="again", train={"max_steps": 4, "resume": str(tag_dir)},
                                   deepspeed={"zero_stage": stage}), check=False)  # fmt: skip
    assert resume.returncode != 0 and "refusing to load" in resume.stdout, resume.stdout[-3000:]
    assert not marker.exists()


def test_a_legacy_pickled_rank_state_with_a_payload_is_refused(make_config, tmp_path):
    launch(1, make_config(name="src", train={"max_steps": 2}))
    tag_dir = tmp_path / "runs" / "src" / "checkpoints" / "step_00000002"
    (tag_dir / "rank_state_00000.json").unlink()
    marker = tmp_path / "PWNED"
    torch.save({"python": Payload(marker)}, tag_dir / "rank_state_00000.pt")
    from pretrain.config import ConfigError

    with pytest.raises(ConfigError, match="refusing to load .*rank_state_00000.pt"):
        ckpt.load_rng_state(tag_dir, 0)
    assert not marker.exists()


def test_a_damaged_newest_checkpoint_is_skipped_everywhere_for_the_intact_one(make_config, tmp_path):
    cfg = make_config(name="hurt", train={"max_steps": 12}, checkpoint={"every_steps": 5, "keep_last": 3})
    launch(2, cfg, "train.stop_at_step=10")  # checkpoints at steps 5 and 10
    run_dir = tmp_path / "runs" / "hurt"
    reference = losses(run_dir)
    root = run_dir / "checkpoints"
    shard = root / "step_00000010" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    shard.write_bytes(shard.read_bytes()[:1000])  # truncated
    problem = f"{shard} has 1000 bytes"

    export = python("pretrain.export", run_dir, tmp_path / "out")
    assert export.returncode == 0, export.stderr[-2000:]
    assert f"skipping checkpoint step_00000010: {problem}" in export.stdout
    assert f"checkpoint: {root / 'step_00000005'}" in export.stdout
    direct = python("pretrain.export", root / "step_00000010", tmp_path / "out2")
    assert direct.returncode == 2 and problem in direct.stderr and "step_00000005" in direct.stderr

    resumed = launch(2, cfg).stdout
    assert f"skipping checkpoint step_00000010: {problem}" in resumed
    assert f"resuming from {root / 'step_00000005'}" in resumed
    assert "were moved to" in resumed and "superseded-" in resumed
    assert ckpt.newest_complete(root).name == "step_00000012"
    aside = next(root.glob("superseded-*"))
    assert (aside / "step_00000010" / ckpt.COMPLETE).is_file()  # kept, not deleted
    got = losses(run_dir)
    for step in range(6, 11):  # the resumed run repeats steps 6-10 exactly
        assert got[step] == pytest.approx(reference[step], rel=1e-6), step
    steps = [r["step"] for r in metric_records(run_dir, "train")]
    assert steps == list(range(1, 13))  # one record per step: the replayed ones were dropped first


def test_a_failed_command_leaves_a_finished_run_as_it_was(make_config, tmp_path):
    cfg = make_config(name="done", train={"max_steps": 2})
    launch(1, cfg)
    run_dir = tmp_path / "runs" / "done"
    before = {name: (run_dir / name).read_text() for name in ("config.yaml", "status.json")}
    bad = launch(1, cfg, f"data.sources=[{{files: {tmp_path / 'nowhere.txt'}}}]", "train.max_steps=4", check=False)
    assert bad.returncode == 2, bad.stdout[-2000:]
    assert {name: (run_dir / name).read_text() for name in before} == before
    assert json.loads(before["status.json"])["state"] == "finished"


def test_stop_at_step_keeps_the_schedule_and_a_changed_max_steps_is_warned(make_config, tmp_path):
    """Also: what a run derives and keeps beside its checkpoints (its copy of the tokenizer, the
    packed data cache), damaged between the two pieces, is set aside and made again; the curve does
    not move. Read as they were, both ended the resume in a traceback."""
    common = dict(train={"max_steps": 8, "warmup_steps": 2}, checkpoint={"every_steps": 0})
    launch(1, make_config(name="whole", **common))
    whole = metrics(tmp_path / "runs" / "whole")
    cfg = make_config(name="pieces", **common)
    first = launch(1, cfg, "train.stop_at_step=4", f"data.cache_dir={tmp_path / 'cache'}").stdout
    assert "done: step 4" in first
    run_dir = tmp_path / "runs" / "pieces"
    (run_dir / "tokenizer" / "tokenizer.json").write_text("{")
    (shard,) = (tmp_path / "cache").glob("train-*/tokens-00000.bin")
    shard.write_bytes(shard.read_bytes()[:100])
    again = launch(1, cfg, f"data.cache_dir={tmp_path / 'cache'}").stdout  # continues to max_steps, same schedule
    assert f"warning: the run's tokenizer {run_dir / 'tokenizer'} does not load (JSONDecodeError: " in again, again
    assert f"and restored from {run_dir / 'checkpoints' / 'step_00000004'}" in again
    assert f"warning: the packed train cache {shard.parent} is damaged (tokens-00000.bin holds 50 tokens, " in again
    assert len(list(run_dir.glob("tokenizer.damaged-*"))) == 1  # kept aside, not deleted
    assert len(list((tmp_path / "cache").glob(f"{shard.parent.name}.damaged-*"))) == 1
    pieces = metrics(run_dir)
    assert sorted(pieces) == list(range(1, 9))
    for step in range(1, 9):
        assert pieces[step]["lr"] == pytest.approx(whole[step]["lr"], rel=1e-9), step
        assert pieces[step]["loss"] == pytest.approx(whole[step]["loss"], rel=1e-6), step
    longer = launch(1, cfg, "train.max_steps=12").stdout
    assert "the learning-rate schedule changed (train.max_steps: 8 -> 12): from step 9" in longer


@pytest.mark.serial
def test_wandb_online_without_a_server_falls_back_to_offline_and_wandb_mode_is_honoured(make_config, tmp_path):
    cfg = make_config(name="dash", train={"max_steps": 2, "dist_timeout_s": 30}, log={"wandb": "auto"})
    env = {"WANDB_API_KEY": "x" * 40, "WANDB_MODE": "offline"}
    out = launch(2, cfg, env_extra=env).stdout
    assert "wandb (offline)" in out and "switched off" not in out
    online = launch(2, cfg, "name=dash2", "log.wandb=online",
                    env_extra={"WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"}).stdout  # fmt: skip
    assert "logging offline instead" in online and "wandb (offline)" in online
    assert list((tmp_path / "runs" / "dash2" / "wandb").glob("offline-run-*"))


def test_a_changed_corpus_on_resume_is_one_line_and_leaves_the_run_alone(make_config, tmp_path):
    cfg = make_config(name="data", train={"max_steps": 2}, checkpoint={"every_steps": 2})
    launch(1, cfg)
    run_dir = tmp_path / "runs" / "data"
    before = {name: (run_dir / name).read_text() for name in ("config.yaml", "status.json")}
    other = tmp_path / "other.txt"
    other.write_text("".join(f"class C{i}:\n    pass\n\n" for i in range(30)))
    changed = launch(1, cfg, f"data.sources=[{{files: {other}}}]", "train.max_steps=4", check=False)
    assert changed.returncode == 2, changed.stdout[-2000:]
    assert "config error: the checkpoint's data has" in changed.stdout and "Traceback" not in changed.stdout
    assert {name: (run_dir / name).read_text() for name in before} == before
    # the same mistake under the launcher at 2 processes: rank 0's line, exit 2, no advice to resume
    # (a checkpoint exists, but starting again would meet the same error), no traceback from rank 1
    proc = subprocess.run([sys.executable, "-m", "launch", "local", str(cfg), "--nproc-per-node", "2",
                           "cluster.gpus=false", f"data.sources=[{{files: {other}}}]", "train.max_steps=4"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)  # fmt: skip
    said = proc.stdout + proc.stderr
    assert proc.returncode == 2, said[-3000:]
    assert said.count("config error: the checkpoint's data has") == 1, said[-3000:]
    assert "launch: the job stopped on a configuration error: the checkpoint's data has" in proc.stderr
    assert "Start the same command again" not in said, said[-3000:]
    assert "DistBackendError" not in said and "RuntimeError" not in said, said[-3000:]  # rank 1: one line at most
    assert {name: (run_dir / name).read_text() for name in before} == before


def test_a_second_start_of_a_run_still_training_on_this_host_is_refused(make_config, tmp_path):
    """Two writers would interleave metrics.jsonl and prune each other's checkpoints. The run that
    trains is stood in for by a process whose command names pretrain (its pid in status.json, as
    rank 0 writes it); once that process is gone, the same command starts."""
    from pretrain.status import write_status

    cfg = make_config(name="busy", train={"max_steps": 1})
    run_dir = tmp_path / "runs" / "busy"
    run_dir.mkdir(parents=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "pretrain"])
    try:
        write_status(run_dir, "running", world_size=2)
        status = json.loads((run_dir / "status.json").read_text())
        (run_dir / "status.json").write_text(json.dumps({**status, "pid": sleeper.pid}))
        before = (run_dir / "status.json").read_text()
        twice = python("pretrain", cfg)
        assert twice.returncode == 2, twice.stderr[-2000:]
        said = [line for line in twice.stderr.splitlines() if line.startswith("config error:")]
        assert len(said) == 1 and said[0].startswith(
            f"config error: {run_dir} is in use: its run is still training on this host (pid {sleeper.pid}, started "
        ), said
        assert said[0].endswith(f"stop it first (kill -TERM {sleeper.pid} saves a checkpoint of its step) or choose "
                                "another name=")  # fmt: skip
        assert (run_dir / "status.json").read_text() == before and sorted(p.name for p in run_dir.iterdir()) == [
            "status.json"
        ]
    finally:
        sleeper.kill()
        sleeper.wait()
    launch(1, cfg)  # rank 0 of that run is gone: a killed run's status no longer holds the directory
    assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"


def test_sigterm_saves_the_step_it_stops_at_on_every_rank_and_the_run_resumes_there(make_config, tmp_path):
    """A preempted or timed-out job gets SIGTERM (Slurm's trap, Kubernetes, a user). Every rank
    learns of it in the next step's all-reduce, finishes that step, saves it with the others and
    ends with 143; before, they died where they were and every step after the last periodic
    checkpoint was lost (here: all of them, as none is periodic). First only rank 1 is signalled (a
    node's pod deleted): rank 0 stops at the same step instead of waiting in its next all-reduce.
    Then the same command resumes there and its launcher is signalled (passed on to torchrun, then
    to both ranks); it stops again, later, with nothing lost in between. Ctrl-C does the same, to
    the launcher (which passes SIGTERM on) or to a rank; it used to end every process in a
    KeyboardInterrupt traceback, nothing saved and status.json left saying running."""
    import signal
    import time

    import psutil

    cfg = make_config(name="preempted", train={"max_steps": 3000}, checkpoint={"every_steps": 0})
    run_dir = tmp_path / "runs" / "preempted"
    command = [sys.executable, "-m", "launch", "local", str(cfg), "--nproc-per-node", "2", "cluster.gpus=false"]

    def stop(after: int, signalled, sig) -> tuple[int, str]:
        # as from a terminal: Ctrl-C is not ignored (a background job, as CI may run this in, ignores it)
        proc = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
        deadline = time.time() + 240
        while max(losses(run_dir), default=0) <= after and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        signalled(proc).send_signal(sig)
        out, _ = proc.communicate(timeout=240)
        return proc.returncode, out

    def rank(r):
        def worker(launcher):
            for p in psutil.Process(launcher.pid).children(recursive=True):
                if "pretrain" in p.cmdline() and p.environ().get("RANK") == str(r):
                    return p
            raise AssertionError(f"no rank-{r} worker")

        return worker

    def launcher(proc):
        return proc

    step = 0
    for signalled, sig, why in ((rank(1), signal.SIGTERM, "a stop request to another rank"),
                                (launcher, signal.SIGTERM, "SIGTERM"), (rank(0), signal.SIGINT, "SIGINT (Ctrl-C)"),
                                (launcher, signal.SIGINT, "SIGTERM")):  # fmt: skip
        before = step
        code, out = stop(before, signalled, sig)
        assert code == 143, out[-3000:]
        first = before == 0
        step = max(losses(run_dir))
        assert before < step < 3000, (before, step)
        assert f"stopped at step {step} on {why}" in out
        assert f"launch: the job stopped at step {step}" in out and "Traceback" not in out, out[-3000:]
        assert ckpt.newest_complete(run_dir / "checkpoints").name == f"step_{step:08d}"
        assert len(list((run_dir / "checkpoints" / f"step_{step:08d}").glob("*optim_states.pt"))) == 2  # both ranks
        status = json.loads((run_dir / "status.json").read_text())
        assert status["state"] == "stopped" and status["step"] == step, status
        if not first:
            assert f"resuming from {run_dir / 'checkpoints' / f'step_{before:08d}'}" in out
        if sig == signal.SIGINT and signalled is launcher:
            assert "launch: stopping the job (Ctrl-C; Ctrl-C again stops it at once, without saving)" in out
    assert sorted(losses(run_dir)) == list(range(1, step + 1))


def test_a_stop_during_an_evaluation_ends_it_and_saves_the_step(make_config, tmp_path):
    """A whole validation pass (fine-tuning's default) can take longer than the seconds a
    preempted job has to save; the ranks used to finish it first and were SIGKILLed unsaved, every
    step since the last checkpoint lost. Now a stop request on any rank (here rank 1 only) ends
    the evaluation between batches on every rank, and the step is saved. Resumed, the run makes
    that evaluation first: it was the final one, which a resumed run used to skip, ending "done"
    with no evaluation at all."""
    import signal
    import time

    import psutil

    model = {"d_model": 64, "num_layers": 4, "ffn_hidden_size": 256}  # an evaluation of seconds
    cfg = make_config(name="evalstop", model=model, data={"validation_fraction": 0.5, "seq_len": 16},
                      train={"max_steps": 2, "micro_batch_size": 1, "eval_every": 2, "eval_batches": None},
                      checkpoint={"every_steps": 0})  # fmt: skip
    run_dir = tmp_path / "runs" / "evalstop"
    proc = subprocess.Popen([*command(2), str(cfg)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    deadline = time.time() + 240
    while 2 not in losses(run_dir) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)  # step 2 is logged: its evaluation begins
    rank1 = next(p for p in psutil.Process(proc.pid).children(recursive=True)
                 if "pretrain" in p.cmdline() and p.environ().get("RANK") == "1")  # fmt: skip
    rank1.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=240)
    assert "stopped at step 2 on a stop request to another rank" in out or "stopped at step 2 on SIGTERM" in out, out
    assert 2 not in metrics(run_dir, "eval")  # the evaluation was left, not finished
    assert ckpt.newest_complete(run_dir / "checkpoints").name == "step_00000002"
    assert json.loads((run_dir / "status.json").read_text())["state"] == "stopped"

    out = launch(2, cfg).stdout
    assert "step 2: evaluating it, as the run stopped before its evaluation ended" in out, out[-3000:]
    val_loss = metrics(run_dir, "eval")[2]["val_loss"]
    assert f"done: step 2; val_loss {val_loss:.4g}" in out, out[-3000:]
    assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.is_dir()) == ["step_00000002"]


def test_a_stop_before_training_begins_ends_at_once_with_nothing_half_written(make_config, tmp_path):
    """Ctrl-C to the launcher (SIGTERM to the ranks, as a scheduler's) while the data is being
    prepared: there is no step to save. A rank used to die of the signal where it was, leaving a
    half-written packed cache (as large as the cache) under data.cache_dir, and the launcher
    called the job failed. Now the ranks stop at once, remove what they were writing, and end with
    143, as the launcher does, in one line each."""
    import signal
    import time

    cfg = make_config(name="early", data={"tokenizer": {"path": None}, "cache_dir": str(tmp_path / "cache")})
    command = [sys.executable, "-m", "launch", "local", str(cfg), "--nproc-per-node", "2", "cluster.gpus=false"]
    proc = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    seen = []
    for line in proc.stdout:  # the tokenizer is being trained, then the data packed
        seen.append(line)
        if line.startswith("training a bpe tokenizer"):
            proc.send_signal(signal.SIGINT)
            signalled = time.time()
            break
    out = "".join(seen) + proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, out[-3000:]
    assert time.time() - signalled < 15 and "Traceback" not in out, out[-3000:]
    said = "stopped on SIGTERM before training began: nothing to save; the same command starts it again"
    assert said in out, out[-3000:]
    assert "launch: the job was stopped before training began (nothing to save)" in out
    assert not list((tmp_path / "cache").glob(".*.tmp-*"))
    assert not (tmp_path / "runs" / "early" / "status.json").exists()  # the run never began


def test_ctrl_c_during_the_launchers_preflight_is_one_line_and_starts_nothing(make_config, tmp_path):
    """Ctrl-C at the terminal while the launcher's preflight reads the data (the launcher and its
    check, one process group): it used to end in a KeyboardInterrupt traceback."""
    import signal
    import time

    import psutil

    cfg = make_config(name="early")
    command = [sys.executable, "-m", "launch", "local", str(cfg), "--nproc-per-node", "2", "cluster.gpus=false"]
    proc = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    deadline = time.time() + 60
    while time.time() < deadline and not any(
        "launch.preflight" in " ".join(c.cmdline()) for c in psutil.Process(proc.pid).children()
    ):
        time.sleep(0.05)
    time.sleep(0.5)  # into the check
    os.killpg(proc.pid, signal.SIGINT)  # as the terminal sends it: to the launcher and its check
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert err.strip() == "launch: stopped (Ctrl-C) during the preflight check; nothing was started or written"
    assert not (tmp_path / "runs").exists()

@pytest.mark.parametrize("via_launcher", [False, True])
def test_a_closed_terminal_stops_the_run_with_its_step_saved(make_config, tmp_path, via_launcher):
    """The ssh session a run was started from drops: its terminal hangs up (SIGHUP to the
    launcher, or to python -m pretrain), and every later write to it fails with EIO. The launcher
    used to die of SIGHUP and leave the ranks training unsupervised, status.json saying running; a
    rank died of it without saving, or of the EIO at its next print. Now the ranks save the step
    they are at and stop, as on SIGTERM (exit 143)."""
    import pty
    import select
    import signal
    import time

    import psutil

    cfg = make_config(name="hangup", train={"max_steps": 100000}, checkpoint={"every_steps": 0},
                      log={"every_steps": 20})  # fmt: skip
    run_dir = tmp_path / "runs" / "hangup"
    argv = [sys.executable, "-m", "launch", "local", str(cfg), "--nproc-per-node", "2", "cluster.gpus=false"] \
        if via_launcher else [sys.executable, "-m", "pretrain", str(cfg)]  # fmt: skip
    pid, terminal = pty.fork()  # the child's controlling terminal is this pty
    if pid == 0:  # as a login shell starts it: SIGHUP and SIGINT not ignored (nohup, a background job would)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.chdir(ROOT)
        os.execve(argv[0], argv, ENV)
    done, under = 0, []
    try:
        deadline = time.time() + 240
        while max(losses(run_dir), default=0) < 3 and time.time() < deadline:
            if select.select([terminal], [], [], 0.1)[0]:
                os.read(terminal, 65536)  # what the run prints, as a terminal shows it
        under = psutil.Process(pid).children(recursive=True)  # torchrun and the ranks: in sessions of their own
        os.close(terminal)  # the terminal is gone: SIGHUP, then EIO for every write to it
        status = 0
        while not done and time.time() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            time.sleep(0.1)
    finally:
        if not done:  # a reaped pid may be another process's by now
            kill_tree(pid)
        for p in under:  # left running (the launcher died of the hangup): no training goes on after the test
            if p.is_running():
                p.kill()
    assert done and os.waitstatus_to_exitcode(status) == 143, (done, status)
    step = max(losses(run_dir))
    said = json.loads((run_dir / "status.json").read_text())
    assert said["state"] == "stopped" and said["step"] == step, said
    assert ckpt.newest_complete(run_dir / "checkpoints").name == f"step_{step:08d}"

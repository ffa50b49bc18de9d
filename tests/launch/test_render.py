"""python -m launch without starting anything: what it refuses, and the sbatch and Kubernetes files it
writes (rendezvous endpoint, node count, GPUs, environment). Every call is a real CLI process."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pretrain.files import free_port

ROOT = Path(__file__).resolve().parents[2]
GPT = "configs/pretrain/gpt2-small-4nodes.yaml"


def launch(*args, env=None, cwd=ROOT, timeout=120):
    return subprocess.run([sys.executable, "-m", "launch", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})  # fmt: skip


def test_printing_a_job_imports_neither_torch_nor_deepspeed():
    code = (
        "import sys\nfrom launch.__main__ import main\n"
        f"for argv in (['slurm', '{GPT}', '--nodes', '4', '--dry-run', '--skip-preflight'],"
        f" ['k8s', '{GPT}', '--image', 'x', '--dry-run', '--skip-preflight'], ['runs', 'configs']):\n"
        "    try:\n        main(argv)\n    except SystemExit as e:\n        assert not e.code, e.code\n"
        "print('LOADED', sorted(m for m in ('torch', 'deepspeed', 'numpy') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "LOADED []" in proc.stdout


def test_slurm_script_has_the_rendezvous_nodes_gpus_and_environment():
    env = {"NCCL_DEBUG": "WARN", "WANDB_API_KEY": "secret-value", "UNRELATED_VAR": "x"}
    proc = launch("slurm", GPT, "--nodes", "4", "--gpus-per-node", "8", "--partition", "h100", "--account", "lm",
                  "--time", "2-00:00:00", "--dry-run", "--skip-preflight", "train.lr=1e-4",
                  "cluster.env.NCCL_IB_HCA=mlx5", "cluster.slurm.max_requeues=5", env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    script = proc.stdout
    for line in ("#SBATCH --nodes=4", "#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --partition=h100", "#SBATCH --account=lm", "#SBATCH --time=2-00:00:00",
                 "#SBATCH --requeue", "#SBATCH --signal=B:USR1@120", "export NCCL_DEBUG=WARN",
                 "export NCCL_IB_HCA=mlx5"):  # fmt: skip
        assert line in script.splitlines(), line
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    assert '--rdzv-endpoint "$head_node:29500"' in srun and "--rdzv-backend c10d" in srun
    assert "--nnodes 4" in srun and "--nproc-per-node 8" in srun and '--rdzv-id "$SLURM_JOB_ID"' in srun
    assert "--shutdown-timeout 30" in srun  # cluster.grace_s: the ranks' time to save their step when stopped
    assert srun.endswith(f"-m pretrain {GPT} train.lr=1e-4 &")
    assert 'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in script
    assert "-lt 5 ]" in script and "secret-value" not in script and "UNRELATED_VAR" not in script
    assert "WANDB_API_KEY" in script  # named as coming from the submitting shell


def test_slurm_submit_writes_the_script_and_calls_sbatch(tmp_path):
    fake = tmp_path / "sbatch"
    fake.write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/submitted.sh\necho Submitted batch job 4242\n')
    fake.chmod(0o755)
    runs = tmp_path / "my runs"  # sbatch splits a directive at spaces, as a shell does, unless quoted
    proc = launch("slurm", GPT, f"output_dir={runs}", "--nodes", "2", "--skip-preflight",
                  f"cluster.slurm.submit={fake}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Submitted batch job 4242" in proc.stdout
    written = list((runs / "gpt2-small-4nodes" / "launch").glob("sbatch-*.sh"))
    assert len(written) == 1 and written[0].read_text() == (tmp_path / "submitted.sh").read_text()
    assert "#SBATCH --nodes=2" in written[0].read_text()
    output = next(line for line in written[0].read_text().splitlines() if line.startswith("#SBATCH --output="))
    assert shlex.split(output[len("#SBATCH "):]) == [f"--output={runs}/gpt2-small-4nodes/slurm/%x-%j.out"]
    assert (runs / "gpt2-small-4nodes" / "slurm").is_dir()  # Slurm does not create its log folder


def _shims(tmp_path: Path, srun_status: int | None) -> dict:
    """scontrol and srun stand-ins: this machine is the job's only node; srun runs its command here
    (or fails with ``srun_status``); scontrol records requeues."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(
        f'#!/bin/sh\nif [ "$1" = show ]; then echo localhost; else echo "$@" >> {tmp_path}/scontrol.log; fi\n'
    )
    run = f"exit {srun_status}" if srun_status is not None else 'while [ "${1#--}" != "$1" ]; do shift; done\nexec "$@"'
    (bin_dir / "srun").write_text(f"#!/bin/sh\n{run}\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST": "localhost",
            "SLURM_NNODES": "1"}  # fmt: skip


@pytest.mark.parametrize("restart_count, requeued", [("0", True), ("2", False)])
def test_a_failed_slurm_job_is_requeued_until_the_limit(tmp_path, restart_count, requeued):
    proc = launch("slurm", GPT, "--nodes", "1", "--dry-run", "--skip-preflight", "cluster.slurm.max_requeues=2")
    script = tmp_path / "job.sh"
    script.write_text(proc.stdout)
    env = {**os.environ, **_shims(tmp_path, srun_status=3), "SLURM_RESTART_COUNT": restart_count}
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 3
    log = tmp_path / "scontrol.log"
    assert (log.read_text().split() == ["requeue", "77"]) if requeued else not log.exists()


@pytest.mark.slow
def test_the_rendered_slurm_script_trains_and_resumes(make_config, tmp_path):
    """The script itself, on one stand-in node: srun -> torchrun with its c10d rendezvous -> 2 CPU
    processes train and checkpoint; run again (a requeue), it resumes from that checkpoint."""
    from tests.training.conftest import ENV, losses

    cfg = make_config(name="slurmrun", train={"max_steps": 4}, checkpoint={"every_steps": 2})
    proc = launch("slurm", cfg, "--nodes", "1", "--gpus-per-node", "2", "--dry-run", "cluster.gpus=false",
                  f"--master-port={free_port()}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "#SBATCH --gpus-per-node" not in proc.stdout  # a CPU cluster
    script = tmp_path / "job.sh"
    script.write_text(proc.stdout)
    env = {**ENV, **_shims(tmp_path, srun_status=None)}
    first = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    run_dir = tmp_path / "runs" / "slurmrun"
    assert sorted(losses(run_dir)) == [1, 2, 3, 4]
    # requeued with a longer schedule, it resumes; Slurm's signal before the time limit (USR1 to the
    # script) then requeues it again, and every rank saves the step it is at before the script ends
    again = run_dir / "again.yaml"
    again.write_text(cfg.read_text().replace("max_steps: 4", "max_steps: 3000"))
    script.write_text(script.read_text().replace(str(cfg), str(again)))
    second = subprocess.Popen(["bash", str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, cwd=ROOT)  # fmt: skip
    deadline = time.time() + 240
    while max(losses(run_dir)) < 7 and second.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    second.send_signal(signal.SIGUSR1)
    out, _ = second.communicate(timeout=240)
    assert second.returncode == 0, out[-3000:]
    assert "resuming from" in out and "step_00000004" in out
    step = max(losses(run_dir))
    assert 7 <= step < 3000 and f"stopped at step {step} on SIGTERM" in out, out[-3000:]
    assert (run_dir / "checkpoints" / "latest").read_text() == f"step_{step:08d}"
    assert json.loads((run_dir / "status.json").read_text())["state"] == "stopped"
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "77"]


@pytest.mark.parametrize("kind", ["pytorchjob", "indexed-job"])
def test_kubernetes_manifest_has_the_rendezvous_nodes_gpus_and_environment(kind):
    env = {"NCCL_SOCKET_IFNAME": "eth0", "WANDB_API_KEY": "secret-value"}
    proc = launch("k8s", GPT, "--nodes", "4", "--gpus-per-node", "8", "--image", "reg.example/pretrain:1",
                  "--dry-run", "--skip-preflight", f"cluster.k8s.kind={kind}", "cluster.k8s.runs_claim=runs-pvc",
                  "name=GPT2.Small_4", env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert "secret-value" not in proc.stdout and "create secret generic gpt2-small-4-env" in proc.stdout
    if kind == "pytorchjob":
        (job,) = docs
        assert job["kind"] == "PyTorchJob" and job["metadata"]["name"] == "gpt2-small-4"
        specs = job["spec"]["pytorchReplicaSpecs"]
        assert specs["Master"]["replicas"] == 1 and specs["Worker"]["replicas"] == 3
        pods = [specs["Master"]["template"]["spec"], specs["Worker"]["template"]["spec"]]
        endpoint = '"$MASTER_ADDR:$MASTER_PORT"'
    else:
        service, job = docs
        assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
        assert service["spec"]["selector"] == {"job-name": "gpt2-small-4"}
        assert job["spec"]["completionMode"] == "Indexed"
        assert job["spec"]["completions"] == job["spec"]["parallelism"] == 4
        pods = [job["spec"]["template"]["spec"]]
        assert pods[0]["subdomain"] == "gpt2-small-4"
        endpoint = '"gpt2-small-4-0.gpt2-small-4:29500"'
    for pod in pods:
        assert pod["terminationGracePeriodSeconds"] == 60  # torchrun's 30 s for the ranks to save, and more
        (c,) = pod["containers"]
        assert c["image"] == "reg.example/pretrain:1" and c["resources"]["limits"]["nvidia.com/gpu"] == 8
        command = c["command"][-1]
        assert f"--rdzv-endpoint {endpoint}" in command and "--nnodes 4" in command
        assert "--nproc-per-node 8" in command and command.endswith(f"-m pretrain {GPT} name=GPT2.Small_4")
        env_vars = {e["name"]: e for e in c["env"]}
        assert env_vars["NCCL_SOCKET_IFNAME"]["value"] == "eth0"
        assert env_vars["WANDB_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "gpt2-small-4-env"
        assert {"name": "runs", "mountPath": "/workspace/runs"} in c["volumeMounts"]


@pytest.mark.parametrize("args, message", [
    (["slurm", GPT, "cluster.nodez=2"], "unknown key 'cluster.nodez'; did you mean 'cluster.nodes'?"),
    (["slurm", GPT, "--time", "forever"], "cluster.slurm.time='forever'"),
    (["k8s", GPT], "cluster.k8s.image is required"),
    (["slurm", GPT, "--nodes", "3", "train.global_batch_size=512"], "must be a multiple of micro_batch_size x"),
    (["slurm", GPT, "train.lrr=1"], "did you mean 'train.lr'?"),
    (["hosts", GPT], "hosts needs a hostfile"),
    (["hosts", GPT, "--hostfile", "/nonexistent"], "cluster.hostfile='/nonexistent': no such file"),
    (["runs", "/nonexistent"], "RUNS_DIR='/nonexistent': no such directory"),
])  # fmt: skip
def test_bad_input_is_one_clear_error_before_anything_starts(args, message, tmp_path):
    # not a dry run: had the mistake passed, the launcher would write the job's files under tmp_path
    extra = [] if args[0] == "runs" else [f"output_dir={tmp_path}"]
    proc = launch(*args, *extra)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_hostfile_lines_are_checked(tmp_path):
    from launch.cluster import read_hostfile
    from pretrain.config import ConfigError

    good = tmp_path / "good"
    good.write_text("# two nodes\nnode1 slots=8\nnode2   slots = 8  # spare\n\n")
    assert read_hostfile(str(good)) == [("node1", 8), ("node2", 8)]
    for text, message in (("node1 slots=8\nnode2 slots=4\n", "the same slots"), ("n1 gpus=8\n", ":1: 'n1 gpus=8'"),
                          ("a slots=1\na slots=1\n", "listed twice"), ("# none\n", "lists no hosts")):  # fmt: skip
        bad = tmp_path / "bad"
        bad.write_text(text)
        with pytest.raises(ConfigError, match=message):
            read_hostfile(str(bad))


def test_hosts_dry_run_prints_one_torchrun_per_node(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("gpu-a slots=8\ngpu-b slots=8\n")
    proc = launch("hosts", GPT, "--hostfile", hostfile, "--dry-run", "--skip-preflight", env={"NCCL_DEBUG": "INFO"})
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("ssh ")]
    assert len(lines) == 2
    for host, line in zip(("gpu-a", "gpu-b"), lines, strict=True):
        assert f"StrictHostKeyChecking=accept-new {host} " in line
        assert "--rdzv-endpoint gpu-a:29500" in line and "--nnodes 2" in line and "--nproc-per-node 8" in line
        assert f"--local-addr {host}" in line and "NCCL_DEBUG=INFO" in line
        assert f"is_host={'true' if host == 'gpu-a' else 'false'}" in line
    first = launch("hosts", GPT, "--hostfile", hostfile, "--dry-run", "--skip-preflight", "cluster.nodes=1")
    assert [line.split()[5] for line in first.stdout.splitlines() if line.startswith("ssh ")] == ["gpu-a"]


def test_hosts_never_put_secret_values_on_a_command_line(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("gpu-a slots=8\ngpu-b slots=8\n")
    proc = launch("hosts", GPT, "--hostfile", hostfile, "--dry-run", "--skip-preflight",
                  env={"WANDB_API_KEY": "s3cret-value", "NCCL_DEBUG": "INFO"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "s3cret-value" not in proc.stdout + proc.stderr
    assert proc.stdout.count("# on standard input: WANDB_API_KEY (values not shown)") == 2
    assert all('eval "$(cat)"' in line for line in proc.stdout.splitlines() if line.startswith("ssh "))


def test_secrets_reach_the_node_through_standard_input_and_a_failed_job_stops_remote_processes(tmp_path):
    """What `hosts` starts per node, run here: the secret arrives (not in argv); when one node fails,
    the other node's stop command runs (remote processes do not outlive the job)."""
    from launch.job import shell_line
    from launch.processes import JobFailed, Node, run_nodes

    line = shell_line({"PUBLIC": "1"}, ["sh", "-c", f"echo $PUBLIC $WANDB_API_KEY > {tmp_path}/seen; exit 3"], None,
                      env_on_stdin=True)  # fmt: skip
    good = Node("a", ["sh", "-c", line], stdin="export WANDB_API_KEY='s3cret value'\n", secret_names=("WANDB_API_KEY",))
    slow = Node("b", ["sleep", "60"], stop=["sh", "-c", f"echo stopped > {tmp_path}/stopped"])
    assert all("s3cret" not in arg for arg in good.argv)
    with pytest.raises(JobFailed, match="status 3"):
        run_nodes([good, slow], grace_s=0.5)
    assert (tmp_path / "seen").read_text() == "1 s3cret value\n"
    assert (tmp_path / "stopped").read_text() == "stopped\n"


@pytest.mark.parametrize("stage, fits", [(0, False), (3, True)])
def test_preflight_refuses_a_job_that_cannot_fit_and_names_what_would(stage, fits):
    # LLaMA-1B shape on 8 GPUs of 12 GiB: 16.4 GiB of model states at ZeRO-0, 2.6 GiB at ZeRO-3.
    proc = launch("slurm", "configs/pretrain/llama-1b-1node.yaml", "--nodes", "1", "--gpus-per-node", "8",
                  "--gpu-memory-gib", "12", "--dry-run", f"deepspeed.zero_stage={stage}")  # fmt: skip
    if fits:
        assert proc.returncode == 0, proc.stderr
        assert (
            "# preflight: 1,100.0M parameters, ZeRO-3 on 1 node(s) x 8 GPU(s): model states need 2.55 GiB"
            in proc.stdout
        )
    else:
        assert proc.returncode == 2
        assert "model states need 16.39 GiB per GPU at ZeRO-0 (data parallel), the GPUs have 12.0 GiB" in proc.stderr
        assert "deepspeed.zero_stage=3 " in proc.stderr and "deepspeed.zero_stage=1 " in proc.stderr


def test_preflight_checks_host_memory_per_node(tmp_path):
    # LLaMA-1B on 8 GPUs: at ZeRO-2 every rank builds the whole fp32 model on the host (8 x 4.4 GB x 1.5);
    # ZeRO-3 builds it partitioned (deepspeed.zero.Init) and needs a layer per rank.
    node = ["--nodes", "1", "--gpus-per-node", "8", "--gpu-memory-gib", "80", "--cpu-memory-gib", "32", "--dry-run"]
    proc = launch("slurm", "configs/pretrain/llama-1b-1node.yaml", *node, "deepspeed.zero_stage=2")
    assert proc.returncode == 2
    said = "49.18 GiB of host memory per node at ZeRO-2 (every rank's whole fp32 model while it is built)"
    assert said in proc.stderr
    assert "the nodes have 32.00 GiB" in proc.stderr
    assert "deepspeed.zero_stage=3 " in proc.stderr and "deepspeed.zero_stage=1 " not in proc.stderr
    fits = launch("slurm", "configs/pretrain/llama-1b-1node.yaml", *node, "deepspeed.zero_stage=3")
    assert fits.returncode == 0, fits.stderr
    assert "host memory 2.93 GiB per node of 32.00 GiB" in fits.stdout
    # without GPUs the model states themselves live on the host: 2 processes x (4 + 4/2 + 8/2) bytes x 14.8M
    # at ZeRO-2; ZeRO-3 holds 16 / 2 bytes per parameter and one layer per process (0.24 GiB)
    # its own output_dir: the run `make demo` leaves in runs/ has another shape, which a resume would refuse
    cpu = launch("local", "configs/pretrain/default.yaml", "--cluster", "configs/cluster/local-cpu.yaml", "--dry-run",
                 "--cpu-memory-gib", "0.25", "model.d_model=512", "model.num_heads=8",
                 f"output_dir={tmp_path}")  # fmt: skip
    assert cpu.returncode == 2
    assert "0.28 GiB of host memory per node at ZeRO-2 (the model states of its 2 processes" in cpu.stderr
    assert "settings that fit (host memory per node):\n  deepspeed.zero_stage=3    0.24 GiB CPU" in cpu.stderr

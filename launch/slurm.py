"""slurm jobs: one sbatch script, one task per node, torchrun on each with a c10d rendezvous on the
job's first node. A failed job, or one that gets its time limit's warning signal (preemption,
wall clock), is put back in the queue up to ``slurm.max_requeues`` times; the run resumes from its
newest complete checkpoint because ``train.resume=auto`` does that by itself."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from launch.cluster import ClusterConfig, split_secrets
from launch.job import Job, shell_join
from pretrain.config import ConfigError


def render(job: Job, cluster: ClusterConfig, python: str, workdir: str) -> str:
    s = cluster.slurm
    plain, secret = split_secrets(cluster.environment())
    log_dir = Path(workdir) / job.run_dir / "slurm"
    lines = ["#!/bin/bash", f"#SBATCH --job-name={job.cfg.name}", f"#SBATCH --nodes={cluster.nodes}",
             "#SBATCH --ntasks-per-node=1"]  # fmt: skip
    if cluster.gpus is not False:
        lines.append(f"#SBATCH --gpus-per-node={cluster.nproc_per_node}")
    for option, value in (("partition", s.partition), ("account", s.account), ("qos", s.qos),
                          ("cpus-per-task", s.cpus_per_node), ("mem", s.mem)):  # fmt: skip
        if value is not None:
            lines.append(f"#SBATCH --{option}={value}")
    lines += [
        f"#SBATCH --time={s.time}",
        f"#SBATCH --output={shlex.quote(f'{log_dir}/%x-%j.out')}",  # sbatch reads quotes as a shell does
        "#SBATCH --open-mode=append",
        "#SBATCH --requeue",
        f"#SBATCH --signal=B:USR1@{s.signal_before_end_s}",
        *(f"#SBATCH {extra}" for extra in s.sbatch),
        "",
        f"# {job.program} {shlex.join([str(job.config), *job.overrides])}",
        "# Rendered by python -m launch slurm. Requeued runs resume from the newest checkpoint.",
        *(
            [f"# From the submitting shell (sbatch exports it, never written here): {' '.join(secret)}"]
            if secret
            else []
        ),
        "set -uo pipefail",
        f"cd {shlex.quote(workdir)}",
        *s.setup,
        *(f"export {k}={shlex.quote(v)}" for k, v in sorted(plain.items())),
        'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
    ]
    endpoint = f"{cluster.master_addr or '$head_node'}:{cluster.master_port}"
    shell_endpoint, shell_id = f'"{endpoint}"', '"$SLURM_JOB_ID"'
    torchrun = job.torchrun(python, cluster.nodes, cluster.nproc_per_node, shell_endpoint, rdzv_id=shell_id,
                            max_restarts=cluster.max_restarts, grace_s=cluster.grace_s)  # fmt: skip
    command = shell_join(torchrun, {shell_endpoint, shell_id})
    lines += [
        f'echo "job $SLURM_JOB_ID (restart ${{SLURM_RESTART_COUNT:-0}}): {cluster.nodes} node(s), '
        f'rendezvous at {endpoint}"',
        "",
        "requeue() {",
        f'  if [ "${{SLURM_RESTART_COUNT:-0}}" -lt {s.max_requeues} ]; then',
        '    echo "requeueing job $SLURM_JOB_ID ($1); the run resumes from its newest checkpoint"',
        '    scontrol requeue "$SLURM_JOB_ID"',
        "  else",
        f'    echo "job $SLURM_JOB_ID: {s.max_requeues} requeue(s) used up ($1); not requeueing"',
        "  fi",
        "}",
        # SIGTERM reaches every rank (srun -> torchrun -> workers), which save their step and end; the
        # script waits for that before it ends (its end would end the job's steps too)
        "trap 'requeue \"time limit or preemption signal\"; kill -TERM $srun_pid 2>/dev/null; "
        "wait $srun_pid; exit 0' USR1",
        "",
        f"srun --kill-on-bad-exit=1 --ntasks-per-node=1 {command} &",
        "srun_pid=$!",
        'wait "$srun_pid"',
        "status=$?",
        'if [ "$status" -ne 0 ]; then requeue "exit status $status"; fi',
        'exit "$status"',
        "",
    ]
    return "\n".join(lines)


def submit(script: str, path: Path, command: str) -> str:
    """Write the script (never over an older one) and hand it to sbatch; sbatch's answer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for line in script.splitlines():  # Slurm does not create the folder of its log files
        if line.startswith("#SBATCH --output="):
            Path(shlex.split(line.split("=", 1)[1])[0]).parent.mkdir(parents=True, exist_ok=True)
    path.write_text(script)
    try:
        proc = subprocess.run([*shlex.split(command), str(path)], capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise ConfigError(f"cluster.slurm.submit={command!r}: not found here; run on a Slurm login node, "
                          f"or print the script with --dry-run") from None  # fmt: skip
    if proc.returncode != 0:
        raise ConfigError(f"{command} {path} failed (status {proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout.strip()

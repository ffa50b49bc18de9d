"""python -m launch MODE CONFIG.yaml [key=value ...] [options]

    local    N processes on this machine (torchrun), CPU or GPUs
    hosts    several nodes over SSH from a hostfile ('node1 slots=8' lines)
    slurm    an sbatch script (srun + torchrun, c10d rendezvous on the first node), submitted
    k8s      a Kubernetes manifest (PyTorchJob, or an indexed Job + headless Service), applied
    dashboard [RUNS_DIR]   TensorBoard over the runs, on localhost
    runs      [RUNS_DIR]   the runs: state, step, last loss, newest checkpoint

Overrides (``key=value``, anywhere on the line) starting with ``cluster.`` set the cluster
description (``--cluster FILE`` or the defaults); the others the run config, exactly as
``python -m pretrain`` takes them. Before anything starts, the config is validated for the job's
world size and (on GPUs) the memory that model states need is compared with the GPUs'. This
process never imports torch or DeepSpeed: ``--dry-run`` is fast.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from pretrain.config import ConfigError, exit_on_config_error

MODES = ("local", "hosts", "slurm", "k8s")
OVERRIDE = re.compile(r"^[A-Za-z_][\w.\-]*=")
DOTTED = re.compile(r"^[A-Za-z_][\w\-]*\.[\w.\-]+$")

# Flags that are shorthand for cluster.* overrides.
FLAGS = {
    "nodes": "nodes", "nproc_per_node": "nproc_per_node", "gpu_memory_gib": "gpu_memory_gib",
    "cpu_memory_gib": "cpu_memory_gib",
    "hostfile": "hostfile", "master_addr": "master_addr", "master_port": "master_port",
    "partition": "slurm.partition", "account": "slurm.account", "time": "slurm.time",
    "image": "k8s.image", "namespace": "k8s.namespace",
}  # fmt: skip


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m launch", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = ap.add_subparsers(dest="mode", required=True)
    for mode in MODES:
        p = sub.add_parser(mode)
        p.add_argument("config", help="the run config (YAML)")
        p.add_argument("--cluster", help="a cluster description (YAML, see configs/cluster/)")
        p.add_argument(
            "--program",
            choices=("pretrain", "finetune"),
            help="default: finetune when the config has init_from or task, else pretrain",
        )
        p.add_argument("--dry-run", action="store_true", help="validate and print what would run; start nothing")
        p.add_argument("--skip-preflight", action="store_true", help="do not check memory and data files")
        p.add_argument("--nproc-per-node", "--gpus-per-node", type=int, dest="nproc_per_node")
        p.add_argument("--gpu-memory-gib", type=float)
        p.add_argument("--cpu-memory-gib", type=float, help="host memory of one node (default: this machine's)")
        if mode != "local":
            p.add_argument("--nodes", type=int)
            p.add_argument("--master-port", type=int)
        if mode == "hosts":
            p.add_argument("--hostfile")
            p.add_argument("--master-addr")
        if mode == "slurm":
            p.add_argument("--partition")
            p.add_argument("--account")
            p.add_argument("--time")
        if mode == "k8s":
            p.add_argument("--image")
            p.add_argument("--namespace")
    for mode, what in (("dashboard", "serve TensorBoard over RUNS_DIR"), ("runs", "list the runs in RUNS_DIR")):
        p = sub.add_parser(mode, help=what)
        p.add_argument("runs_dir", nargs="?", default="runs")
        if mode == "dashboard":
            p.add_argument("--host", default="127.0.0.1")
            p.add_argument("--port", type=int, help="default: the first free port from 6006")
    return ap


@exit_on_config_error
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    # key=value words are overrides wherever they stand; argparse takes the rest
    overrides = [a for a in argv if OVERRIDE.match(a)]
    ns, rest = parser().parse_known_args([a for a in argv if not OVERRIDE.match(a)])
    for word in rest:  # an override without its value, as python -m pretrain says it
        if DOTTED.match(word):
            raise ConfigError(f"override {word!r} must look like section.key=value (e.g. train.lr=3e-4)")
    if rest:
        parser().error(f"unrecognized arguments: {' '.join(rest)}")
    ns.overrides = overrides
    if overrides and ns.mode not in MODES:
        raise ConfigError(f"{ns.mode} takes no key=value overrides, got {overrides[0]!r}")
    if ns.mode == "dashboard":
        from launch.dashboard import serve

        serve(ns.runs_dir, ns.host, ns.port)
        return
    if ns.mode == "runs":
        from launch.runs import show

        if not Path(ns.runs_dir).is_dir():
            raise ConfigError(f"RUNS_DIR={ns.runs_dir!r}: no such directory")
        print(show(ns.runs_dir))
        return
    sys.exit(start(ns))


def start(ns) -> int:
    from launch.cluster import load_cluster

    cluster_overrides = [o[len("cluster.") :] for o in ns.overrides if o.startswith("cluster.")]
    run_overrides = [o for o in ns.overrides if not o.startswith("cluster.")]
    for flag, key in FLAGS.items():
        if getattr(ns, flag, None) is not None:
            cluster_overrides.append(f"{key}={getattr(ns, flag)}")
    cluster = load_cluster(ns.cluster, cluster_overrides)
    plan = PLANS[ns.mode](ns, cluster, run_overrides)
    if ns.dry_run:
        print(plan.text)
        for note in plan.notes:
            print(f"# note: {note}")
    try:
        preflight(ns, plan, cluster)
    except KeyboardInterrupt:  # its check reads the data, which a large corpus makes take a while
        print("launch: stopped (Ctrl-C) during the preflight check; nothing was started or written", file=sys.stderr)
        return 130
    if ns.dry_run:
        return 0
    for note in plan.notes:
        print(f"launch: note: {note}")
    return plan.go()


class Plan:
    """What a mode will do: ``text`` for --dry-run, ``go()`` to do it."""

    def __init__(self, job, text: str, go, notes=()):
        self.job, self.text, self.go, self.notes = job, text, go, list(notes)


def plan_local(ns, cluster, overrides) -> Plan:
    from launch.cluster import local_gpus
    from launch.job import load_job
    from launch.processes import Node, describe

    gpus_here = local_gpus()[0]
    if cluster.gpus is None:
        cluster.gpus = gpus_here > 0
    if cluster.gpus and cluster.nproc_per_node > gpus_here:
        raise ConfigError(f"cluster.nproc_per_node={cluster.nproc_per_node}: this machine has {gpus_here} GPU(s)")
    job = load_job(ns.config, overrides, ns.program, cluster.nproc_per_node)
    python = cluster.python or sys.executable
    argv = job.torchrun(python, 1, cluster.nproc_per_node, None, max_restarts=cluster.max_restarts,
                        grace_s=cluster.grace_s)  # fmt: skip
    node = Node("local", argv)
    env = cluster.env

    def go() -> int:
        return _supervise([node], cluster.grace_s, env, Path(job.run_dir))

    return Plan(job, describe([node]), go)


def plan_hosts(ns, cluster, overrides) -> Plan:
    from launch.cluster import local_gpus, read_hostfile, split_secrets
    from launch.job import load_job, shell_line
    from launch.processes import Node, describe

    if not cluster.hostfile:
        raise ConfigError("hosts needs a hostfile: --hostfile FILE (lines of 'hostname slots=N')")
    hosts = read_hostfile(cluster.hostfile)
    if ns.nodes is not None or any(o.startswith("cluster.nodes=") for o in ns.overrides):  # else every host
        if cluster.nodes > len(hosts):
            raise ConfigError(
                f"cluster.nodes={cluster.nodes}: the hostfile {cluster.hostfile} lists {len(hosts)} host(s)"
            )
        hosts = hosts[: cluster.nodes]
    cluster.nodes, cluster.nproc_per_node = len(hosts), hosts[0][1]
    if cluster.gpus is None:
        cluster.gpus = local_gpus()[0] > 0
    job = load_job(ns.config, overrides, ns.program, cluster.world_size)
    master = cluster.master_addr or hosts[0][0]
    endpoint = f"{master}:{cluster.master_port}"
    python = cluster.python or sys.executable
    workdir = cluster.workdir or os.getcwd()
    full = cluster.environment()
    env, secret_names = split_secrets(full)
    exports = "".join(f"export {k}={shlex.quote(full[k])}\n" for k in secret_names)
    nodes = []
    for host, slots in hosts:
        # The master hosts the rendezvous store; say so rather than let torchrun guess from hostnames.
        is_host = (host == master) if any(h == master for h, _ in hosts) else None
        argv = job.torchrun(python, len(hosts), slots, endpoint, is_host=is_host, local_addr=host,
                            max_restarts=cluster.max_restarts, grace_s=cluster.grace_s)  # fmt: skip
        line = shell_line(env, argv, workdir, env_on_stdin=bool(secret_names))
        remote = shlex.split(cluster.remote.format(host=host))
        # Stops this job's torchrun on the node (it stops its workers); the [-] keeps pkill's own
        # command line from matching the pattern.
        pattern = shlex.quote("[-]-rdzv-id " + job.rdzv_id)
        stop = [*remote, f"for p in $(pgrep -f -- {pattern}); do pkill -USR1 -P $p; done; sleep 2; "
                         f"pkill -TERM -f -- {pattern}"]  # workers dump their stacks, then torchrun stops
        nodes.append(Node(host, [*remote, line], stdin=exports if secret_names else None,
                          secret_names=tuple(secret_names), stop=stop))  # fmt: skip
    text = describe(nodes)

    def go() -> int:
        print(f"launch: {job.program} on {len(hosts)} node(s) x {hosts[0][1]} process(es), rendezvous at {endpoint}")
        return _supervise(nodes, cluster.grace_s, {}, Path(workdir) / job.run_dir)

    return Plan(job, text, go)


def plan_slurm(ns, cluster, overrides) -> Plan:
    from launch import slurm
    from launch.job import load_job

    if cluster.gpus is None:
        cluster.gpus = True
    job = load_job(ns.config, overrides, ns.program, cluster.world_size)
    workdir = cluster.workdir or os.getcwd()
    script = slurm.render(job, cluster, cluster.python or sys.executable, workdir)
    path = job.run_dir / "launch" / f"sbatch-{time.strftime('%Y%m%d-%H%M%S')}.sh"

    def go() -> int:
        answer = slurm.submit(script, path, cluster.slurm.submit)
        print(f"launch: {answer} ({path}); logs in {job.run_dir / 'slurm'}; follow with: python -m launch runs "
              f"{job.cfg.output_dir}")  # fmt: skip
        return 0

    return Plan(job, script, go)


def plan_k8s(ns, cluster, overrides) -> Plan:
    from launch import k8s
    from launch.job import load_job

    if cluster.gpus is None:
        cluster.gpus = True
    job = load_job(ns.config, overrides, ns.program, cluster.world_size)
    manifest, notes = k8s.render(job, cluster)
    path = job.run_dir / "launch" / f"k8s-{time.strftime('%Y%m%d-%H%M%S')}.yaml"

    def go() -> int:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(manifest)
        try:
            proc = subprocess.run(["kubectl", "apply", "-f", str(path)], text=True, capture_output=True, timeout=120)
        except FileNotFoundError:
            raise ConfigError(f"kubectl is not installed here; the manifest is in {path} "
                              "(apply it where kubectl runs, or print it with --dry-run)") from None  # fmt: skip
        print(proc.stdout.strip() or proc.stderr.strip())
        return proc.returncode

    return Plan(job, manifest, go, notes)


PLANS = {"local": plan_local, "hosts": plan_hosts, "slurm": plan_slurm, "k8s": plan_k8s}


def _supervise(nodes, grace_s: float, env: dict, run_dir: Path | None = None) -> int:
    """Run the nodes; on failure say why rank 0 failed where it recorded it in status.json (a full
    disk at a checkpoint, losses that stopped being finite), which rank stalled (heartbeats), record
    the failure when the run could not (rank 0 killed), and say how to resume. A run that stopped on
    a signal with its checkpoint saved (status "stopped") says so, with exit status 143."""
    import tempfile
    import time

    from launch.processes import JobFailed, run_nodes
    from pretrain.checkpoint_layout import checkpoints_dir, newest_complete
    from pretrain.status import load_status, stalled_rank, write_status

    errors = Path(tempfile.mkdtemp(prefix="launch-")) / "config-errors"  # ranks note a ConfigError here
    began = time.time()
    try:
        run_nodes(nodes, grace_s, {**env, "PRETRAIN_ERROR_FILE": str(errors)})
    except JobFailed as e:
        said = errors.read_text().splitlines() if errors.is_file() else []
        if said:  # the job's own input was refused (it said so above): nothing to resume
            print(f"launch: the job stopped on a configuration error: {said[0]}", file=sys.stderr)
            return 2
        status = (load_status(run_dir) or {}) if run_dir is not None else {}
        if status.get("state") == "stopped":  # every rank saved its step on a signal and ended with 143
            print(f"launch: the job {status.get('error', 'stopped')}", file=sys.stderr)
            return 143
        if e.stopped and status.get("updated", 0) < began:  # stopped before rank 0 marked the run started
            print("launch: the job was stopped before training began (nothing to save); the same command starts it "
                  "again", file=sys.stderr)  # fmt: skip
            return 143
        cause = str(e)
        if status.get("state") == "failed" and status.get("updated", 0) >= began and status.get("error"):
            cause += f"; rank 0 failed with {status['error'].splitlines()[0][:600]}"  # this job's, not an earlier one's
        if run_dir is not None:
            stalled = stalled_rank(run_dir)
            cause += f"; {stalled}" if stalled else ""
            if (load_status(run_dir) or {}).get("state") == "running":  # rank 0 could not say (killed, say)
                try:
                    write_status(run_dir, "failed", error=f"launch: {cause}"[:2000])
                except OSError:
                    pass
        newest = newest_complete(checkpoints_dir(run_dir)) if run_dir is not None else None
        hint = f" Start the same command again to resume from {newest.name}." if newest else ""
        print(f"launch: {cause}.{hint}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(errors.parent, ignore_errors=True)
    return 0


def preflight(ns, plan: Plan, cluster) -> None:
    """GPU and host memory against what the job needs; for local and hosts jobs, whose files this
    machine sees, every local data file read and the checkpoint a resume would load compared with
    the config; for local jobs, the precision on this machine's devices. One process that may
    import torch."""
    from launch.cluster import local_gpus, local_memory_gib
    from launch.preflight import DOES_NOT_FIT

    if ns.skip_preflight:
        return
    here = ns.mode in ("local", "hosts")
    checks = (["--data"] if here else []) + (["--here"] if ns.mode == "local" else [])
    gpu_gib = cluster.gpu_memory_gib
    if cluster.gpus and gpu_gib is None and here:
        gpu_gib = local_gpus()[1]
    cpu_gib = cluster.cpu_memory_gib if cluster.cpu_memory_gib is not None else local_memory_gib() if here else None
    if cluster.gpus and gpu_gib is None:
        print("# preflight: GPU memory unknown, not checked (give it with --gpu-memory-gib or cluster.gpu_memory_gib)")
    if cpu_gib is None:
        print("# preflight: host memory unknown, not checked (give it with --cpu-memory-gib or cluster.cpu_memory_gib)")
    if (gpu_gib is None or not cluster.gpus) and cpu_gib is None:
        if not checks:
            return
        checks.append("--no-memory")
    job = plan.job
    args = [*checks, "--nodes", str(cluster.nodes), "--nproc-per-node", str(cluster.nproc_per_node),
            "--program", job.program]  # fmt: skip
    if cluster.gpus and gpu_gib is not None:
        args += ["--gpu-gib", str(gpu_gib)]
    if cpu_gib is not None:
        args += ["--cpu-gib", f"{cpu_gib:.2f}"]
    if not cluster.gpus:
        args.append("--no-gpus")
    proc = subprocess.run([sys.executable, "-m", "launch.preflight", *args, job.config, *job.overrides],
                          capture_output=True, text=True)  # fmt: skip
    for line in proc.stdout.splitlines():
        if line.startswith("preflight:"):
            print(("# " if ns.dry_run else "launch: ") + line)
    if proc.returncode == DOES_NOT_FIT:
        raise ConfigError(proc.stderr.strip())
    said = [line for line in proc.stderr.splitlines() if line.startswith("config error: ")]
    if proc.returncode == 2 and said:  # bad data: its own one line
        raise ConfigError(said[-1].removeprefix("config error: "))
    if proc.returncode != 0:
        raise ConfigError(f"preflight failed: {proc.stderr.strip()[-2000:]}")


if __name__ == "__main__":
    main()

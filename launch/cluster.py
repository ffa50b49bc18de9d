"""The cluster description: where the processes of a job run.

A YAML file (``configs/cluster/``), dotted ``cluster.key=value`` overrides and the launcher's flags
all land in ClusterConfig, typed and checked by the same code as the run config. Torch-free.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pretrain.config import ConfigError, apply_overrides, from_dict, read_yaml

DEFAULT_FORWARD = ["NCCL_*", "GLOO_*", "WANDB_*", "HF_*", "TORCH_*", "OMP_NUM_THREADS", "PYTHONPATH",
                   "TOKENIZERS_PARALLELISM", "CUDA_DEVICE_MAX_CONNECTIONS"]  # fmt: skip


@dataclass
class SlurmConfig:
    partition: str | None = None
    """sbatch --partition; None: the cluster's default."""
    account: str | None = None
    """sbatch --account; None: the user's default."""
    qos: str | None = None
    """sbatch --qos; None: the default quality of service."""
    time: str = "24:00:00"
    """Wall-clock limit (HH:MM:SS or D-HH:MM:SS)."""
    cpus_per_node: int | None = None
    """sbatch --cpus-per-task for the one task per node; None: Slurm's default."""
    mem: str | None = None
    """Memory per node as sbatch takes it (e.g. 480G; 0 is all of it)."""
    max_requeues: int = 3
    """A failed or preempted job goes back in the queue this many times, resuming from its newest
    checkpoint; the time limit's warning signal requeues too."""
    signal_before_end_s: int = 120
    """Seconds before the time limit that Slurm sends SIGUSR1, on which the job checkpoints and requeues."""
    setup: list[str] = field(default_factory=list)
    """Shell lines run first on every node (module load ..., source .venv/bin/activate)."""
    sbatch: list[str] = field(default_factory=list)
    """More sbatch options, e.g. ["--exclusive", "--constraint=h100"]."""
    submit: str = "sbatch"
    """The command that submits the script (sbatch; tests put a stand-in)."""

    def validate(self) -> None:
        if not re.fullmatch(r"(\d+-)?\d{1,2}(:\d{2}){0,2}", self.time):
            raise ValueError(f"time={self.time!r}: use HH:MM:SS or D-HH:MM:SS (sbatch --time)")
        if self.max_requeues < 0 or self.signal_before_end_s < 0:
            raise ValueError("max_requeues and signal_before_end_s must be >= 0")


@dataclass
class K8sConfig:
    kind: Literal["pytorchjob", "indexed-job"] = "pytorchjob"
    """pytorchjob: Kubeflow's training operator; indexed-job: a plain indexed Job with a headless
    Service (no operator needed)."""
    image: str | None = None
    """The container image with this project installed (required)."""
    namespace: str = "default"
    """The Kubernetes namespace the job goes to."""
    gpu_resource: str = "nvidia.com/gpu"
    """The resource each pod requests nproc_per_node of (nvidia.com/gpu, or a vendor's name)."""
    cpu: str | None = None
    """CPU request per pod (e.g. "32"); None: none set."""
    memory: str | None = None
    """Memory request per pod (e.g. 480Gi); None: none set."""
    runs_claim: str | None = None
    """A PersistentVolumeClaim mounted at workdir/output_dir: checkpoints outlive the pods."""
    workdir: str = "/workspace"
    """Where the project sits in the image; the job runs there."""
    shm_size: str = "16Gi"
    """Size of /dev/shm in each pod (DataLoader workers and NCCL use it; the 64M default is too small)."""
    backoff_limit: int = 3
    """Pod restarts before the job fails; each restart resumes from the newest checkpoint."""
    node_selector: dict = field(default_factory=dict)
    """Labels a node must have to run the pods (e.g. {gpu: h100})."""

    def validate(self) -> None:
        if self.backoff_limit < 0:
            raise ValueError(f"backoff_limit={self.backoff_limit}: must be >= 0")


@dataclass
class ClusterConfig:
    nodes: int = 1
    """Machines in the job."""
    nproc_per_node: int = 1
    """Processes per node: one per GPU (or CPU processes without GPUs)."""
    gpus: bool | None = None
    """Whether the nodes have GPUs; None: as this machine (nvidia-smi) for local and hosts jobs,
    true for slurm and k8s."""
    gpu_memory_gib: float | None = None
    """Memory of one GPU for the preflight check; None: nvidia-smi on this machine, if any."""
    cpu_memory_gib: float | None = None
    """Host memory of one node for the preflight check; None: this machine's (/proc/meminfo) for
    local and hosts jobs, unchecked for slurm and k8s."""
    hostfile: str | None = None
    """hosts: lines of 'hostname slots=N' (the DeepSpeed/pdsh convention); '#' starts a comment."""
    remote: str = "ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new {host}"
    """hosts: the command that runs a shell command line on {host}."""
    master_addr: str | None = None
    """The rendezvous host; None: the first host (hosts), the first node (slurm, k8s), localhost."""
    master_port: int = 29500
    """TCP port of the rendezvous on master_addr."""
    workdir: str | None = None
    """The project's directory on every node (a shared filesystem); None: the current directory."""
    python: str | None = None
    """The Python on the nodes; None: this interpreter (local, hosts, slurm) or python (k8s)."""
    forward_env: list[str] = field(default_factory=lambda: list(DEFAULT_FORWARD))
    """Names (shell patterns) of this environment's variables that travel to every node."""
    env: dict = field(default_factory=dict)
    """Variables set on every node, on top of the forwarded ones."""
    max_restarts: int = 0
    """torchrun restarts of a node's workers before the job fails."""
    grace_s: float = 30.0
    """local, hosts: when one node fails, how long the others get to stop before they are killed. Every
    mode: how long the ranks left after one failed get to end, and how long a stopped job's ranks
    get to save a checkpoint of their step (torchrun's
    --shutdown-timeout; the launcher's own SIGTERM; a Kubernetes pod's termination grace is 30 s more)."""
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    """Settings for python -m launch slurm."""
    k8s: K8sConfig = field(default_factory=K8sConfig)
    """Settings for python -m launch k8s."""

    def validate(self) -> None:
        for name in ("nodes", "nproc_per_node"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if not 0 < self.master_port < 65536:
            raise ValueError(f"master_port={self.master_port}: must be a TCP port, 1-65535")
        for name in ("gpu_memory_gib", "cpu_memory_gib"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)}: must be > 0")
        if "{host}" not in self.remote:
            raise ValueError(f"remote={self.remote!r}: must contain {{host}}, where the node's name goes")
        if self.max_restarts < 0 or self.grace_s < 0:
            raise ValueError("max_restarts and grace_s must be >= 0")
        for key, value in self.env.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(key)):
                raise ValueError(f"env: {key!r} is not a variable name")
            self.env[key] = str(value)

    @property
    def world_size(self) -> int:
        return self.nodes * self.nproc_per_node

    def environment(self) -> dict[str, str]:
        """What travels to every node: forwarded variables of this environment, then ``env``."""
        out = {k: v for k, v in os.environ.items() if any(fnmatch.fnmatchcase(k, p) for p in self.forward_env)}
        return {**out, **self.env}


SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD")


def split_secrets(env: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """(variables to write into a file, names of those that must not be: API keys, tokens...)."""
    secret = sorted(k for k in env if any(w in k.upper() for w in SECRET_WORDS))
    return {k: v for k, v in env.items() if k not in secret}, secret


def load_cluster(path: str | None, overrides: list[str]) -> ClusterConfig:
    """A cluster file (or the defaults) with ``key=value`` overrides (without the ``cluster.``)."""
    data = read_yaml(path) if path else {}
    data = apply_overrides(data, overrides)
    return from_dict(ClusterConfig, data, "cluster")


def read_hostfile(path: str) -> list[tuple[str, int]]:
    """[(host, slots)] from a DeepSpeed/pdsh hostfile."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"cluster.hostfile={path!r}: no such file")
    hosts = []
    for number, line in enumerate(file.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"(\S+)(?:\s+slots\s*=\s*(\d+))?", line)
        if not match or (match.group(2) is not None and int(match.group(2)) < 1):
            raise ConfigError(f"{path}:{number}: {line!r} must look like 'hostname slots=8'")
        if any(h == match.group(1) for h, _ in hosts):
            raise ConfigError(f"{path}:{number}: host {match.group(1)!r} is listed twice")
        hosts.append((match.group(1), int(match.group(2) or 1)))
    if not hosts:
        raise ConfigError(f"{path}: lists no hosts; write one 'hostname slots=N' line per node")
    slots = {s for _, s in hosts}
    if len(slots) > 1:
        raise ConfigError(f"{path}: every host needs the same slots (one process per GPU), got {sorted(slots)}")
    return hosts


def local_memory_gib() -> float | None:
    """This machine's memory (MemTotal of /proc/meminfo) in GiB; None where there is no such file."""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def local_gpus() -> tuple[int, float | None]:
    """(GPUs on this machine, memory of the smallest in GiB) from nvidia-smi; (0, None) without."""
    if shutil.which("nvidia-smi") is None:
        return 0, None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30, check=True).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return 0, None
    mib = [float(x) for x in out.split()]
    return len(mib), (min(mib) / 1024 if mib else None)

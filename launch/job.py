"""A job: which program (pretrain or finetune), its config and overrides, validated without torch,
and the torchrun command line that every node runs."""

from __future__ import annotations

import math
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from pretrain.config import ConfigError, RunConfig, apply_overrides, from_dict, read_yaml

PROGRAMS = ("pretrain", "finetune")


@dataclass
class Job:
    program: str
    config: str
    overrides: list[str]
    cfg: RunConfig
    rdzv_id: str

    @property
    def run_dir(self) -> Path:
        return self.cfg.run_dir

    def program_args(self) -> list[str]:
        return ["-m", self.program, self.config, *self.overrides]

    def torchrun(
        self,
        python: str,
        nnodes: int,
        nproc: int,
        endpoint: str | None,
        *,
        rdzv_id: str | None = None,
        is_host: bool | None = None,
        local_addr: str | None = None,
        max_restarts: int = 0,
        grace_s: float = 30.0,
    ) -> list[str]:
        """torchrun's command line for one node: standalone on one machine, else a c10d rendezvous
        at ``endpoint`` (host:port) that the master node hosts. Stopped, torchrun gives its ranks
        ``grace_s`` to save a checkpoint of their step before it kills them."""
        cmd = [
            python,
            "-m",
            "launch.torchrun",  # torchrun, with a one-line account of a failure
            "--nproc-per-node",
            str(nproc),
            "--max-restarts",
            str(max_restarts),
            "--shutdown-timeout",
            str(math.ceil(grace_s)),
        ]
        if endpoint is None:
            cmd += ["--standalone"]
        else:
            cmd += ["--nnodes", str(nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
                    "--rdzv-id", rdzv_id or self.rdzv_id]  # fmt: skip
            if is_host is not None:
                cmd += ["--rdzv-conf", f"is_host={str(is_host).lower()}"]
            if local_addr is not None:
                cmd += ["--local-addr", local_addr]
        return cmd + self.program_args()


def load_job(config: str, overrides: list[str], program: str | None, world_size: int) -> Job:
    """Read and validate the run config for ``world_size`` processes, as the processes will."""
    data = apply_overrides(read_yaml(config), list(overrides))  # read once: typed below as the processes will
    if program is None:  # a fine-tuning config names its starting point or task
        program = "finetune" if {"init_from", "task"} & set(data) else "pretrain"
    if program not in PROGRAMS:
        raise ConfigError(f"--program {program!r}: must be one of {list(PROGRAMS)}")
    cls = RunConfig
    if program == "finetune":
        from finetune.config import FinetuneConfig

        cls = FinetuneConfig
    cfg = from_dict(cls, data)
    cfg.validate()
    cfg.check_world_size(world_size)
    return Job(program, config, list(overrides), cfg, f"{cfg.name}-{int(time.time())}")


def shell_line(env: dict[str, str], argv: list[str], workdir: str | None, env_on_stdin: bool = False) -> str:
    """One shell command line: cd, then exec argv with the environment; with ``env_on_stdin``, more
    variables (secrets) are read as ``export`` lines from standard input first, so that their values
    never appear on a command line (``ps``, shell history, a printed plan)."""
    parts = []
    if env_on_stdin:
        parts.append('eval "$(cat)" &&')
    if workdir:
        parts.append(f"cd {shlex.quote(workdir)} &&")
    parts.append("exec")
    if env:
        parts.append("env " + " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items())))
    parts.append(shlex.join(argv))
    return " ".join(parts)


def shell_join(argv: list[str], expand: set[str] = frozenset()) -> str:
    """shlex.join, except the words in ``expand`` (shell variables to expand, already quoted)."""
    return " ".join(a if a in expand else shlex.quote(a) for a in argv)

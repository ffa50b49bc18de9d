"""python -m launch.torchrun [torchrun's arguments]: torchrun, as every node of a launched job runs
it, except that a failed job ends with one line per failed worker instead of torchrun's traceback
and failure table: each worker has already said why it stopped (a configuration error as one
line), and the line here says which stopped first and how. The exit status is the first failed
worker's (2 for a configuration error), so the launcher can tell a refused input from a crash. A
signal to torchrun (Slurm's time-limit trap, a preemption) is passed on to the workers, which save
a checkpoint and end; then one line, and 128 + the signal's number. Once a worker has failed, the
others get --shutdown-timeout (cluster.grace_s) to end before they are killed, as on a signal."""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> None:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(sys.argv[1:] if argv is None else argv)
    shutdown_s = args.shutdown_timeout  # as torchrun reads it: the flag, else its variable, else 30 s
    _stop_within(int(os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "30")) if shutdown_s is None else shutdown_s)
    try:
        run(args)
    except SignalException as e:  # torchrun has passed the signal on to its workers and waited for them
        print(f"torchrun: stopped on signal {e.sigval.name}", file=sys.stderr)
        sys.exit(128 + int(e.sigval))
    except ChildFailedError as e:
        rank, first = e.get_first_failure()
        others = sorted((r, f.exitcode) for r, f in e.failures.items() if r != rank)  # keyed by global rank
        also = "; then " + ", ".join(f"rank {r} (exit status {c})" for r, c in others) if others else ""
        print(f"torchrun: rank {rank} stopped first with exit status {first.exitcode}{also}", file=sys.stderr)
        sys.exit(first.exitcode if first.exitcode > 0 else 1)


def _stop_within(timeout: float) -> None:
    """torch stops the workers left after one failed with a fixed 30 s between SIGTERM and SIGKILL,
    whatever --shutdown-timeout says: only the signal path passes it on (pytorch/pytorch PR 192815;
    the process context's own poll closes with its default). A rank hung in a collective, or
    stopped, does not end on SIGTERM, so every such failure took 30 s more than cluster.grace_s.
    Here the default is the shutdown timeout, wherever torch leaves it out."""
    from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
    from torch.distributed.elastic.multiprocessing.api import PContext

    close = PContext.close

    def close_within(self, death_sig=None, timeout=timeout) -> None:
        close(self, death_sig, timeout)

    def stop_workers(self, worker_group) -> None:
        self._shutdown(timeout=timeout)

    PContext.close = close_within
    LocalElasticAgent._stop_workers = stop_workers


if __name__ == "__main__":
    main()

"""python -m launch.torchrun [torchrun's arguments]: torchrun, as every node of a launched job runs
it, except that a failed job ends with one line per failed worker instead of torchrun's traceback
and failure table: each worker has already said why it stopped (a configuration error as one
line), and the line here says which stopped first and how. The exit status is the first failed
worker's (2 for a configuration error), so the launcher can tell a refused input from a crash. A
signal to torchrun (Slurm's time-limit trap, a preemption) is passed on to the workers, which save
a checkpoint and end; then one line, and 128 + the signal's number."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(sys.argv[1:] if argv is None else argv))
    except SignalException as e:  # torchrun has passed the signal on to its workers and waited for them
        print(f"torchrun: stopped on signal {e.sigval.name}", file=sys.stderr)
        sys.exit(128 + int(e.sigval))
    except ChildFailedError as e:
        rank, first = e.get_first_failure()
        others = sorted((r, f.exitcode) for r, f in e.failures.items() if r != rank)  # keyed by global rank
        also = "; then " + ", ".join(f"rank {r} (exit status {c})" for r, c in others) if others else ""
        print(f"torchrun: rank {rank} stopped first with exit status {first.exitcode}{also}", file=sys.stderr)
        sys.exit(first.exitcode if first.exitcode > 0 else 1)


if __name__ == "__main__":
    main()

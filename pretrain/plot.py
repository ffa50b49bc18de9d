"""python -m pretrain.plot RUN_DIR OUT.png: the training and validation loss curves of a run,
from its metrics.jsonl."""

from __future__ import annotations

import sys
from pathlib import Path

from pretrain.status import metric_records


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__.strip(), file=sys.stderr)
        sys.exit(2)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir, out = Path(args[0]), Path(args[1])
    train = {r["step"]: r["loss"] for r in metric_records(run_dir, "train")}
    val = {r["step"]: r["val_loss"] for r in metric_records(run_dir, "eval")}
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot(sorted(train), [train[s] for s in sorted(train)], label="train loss", lw=1)
    ax.plot(sorted(val), [val[s] for s in sorted(val)], "o-", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(run_dir.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

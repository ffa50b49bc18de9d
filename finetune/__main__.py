"""python -m finetune CONFIG.yaml [dotted.key=value ...]

Fine-tunes a pretrained checkpoint (init_from) for classification or generation, single- or
multi-process like pretraining, with the same DeepSpeed engine, checkpoints, resume and dashboards.
"""

from __future__ import annotations

import sys

from pretrain.config import exit_on_config_error, parse_cli


@exit_on_config_error
def main(argv: list[str] | None = None) -> None:
    from finetune.config import FinetuneConfig

    cfg = parse_cli(sys.argv[1:] if argv is None else argv, cls=FinetuneConfig)
    from finetune.tasks import FinetuneTask
    from pretrain.run import run

    run(cfg, FinetuneTask)


if __name__ == "__main__":
    main()

"""python -m pretrain CONFIG.yaml [dotted.key=value ...]

One process, or many when started by torchrun, the deepspeed launcher or python -m launch. Decoder
configs train a causal LM, encoder configs a masked LM.
"""

from __future__ import annotations

import sys

from pretrain.config import exit_on_config_error, parse_cli


@exit_on_config_error
def main(argv: list[str] | None = None) -> None:
    cfg = parse_cli(sys.argv[1:] if argv is None else argv)
    from pretrain.run import run

    run(cfg)


if __name__ == "__main__":
    main()

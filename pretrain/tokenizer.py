"""python -m pretrain.tokenizer CONFIG.yaml [dotted.key=value ...]

Trains (or loads) the run's tokenizer on the configured training data and saves it to
RUN_DIR/tokenizer, where `python -m pretrain` then finds it.
"""

from __future__ import annotations

import sys

from pretrain.config import exit_on_config_error, parse_cli


@exit_on_config_error
def main(argv: list[str] | None = None) -> None:
    cfg = parse_cli(sys.argv[1:] if argv is None else argv)
    from pretrain.data.pipeline import run_tokenizer

    tok = run_tokenizer(cfg.data, cfg.model.arch, cfg.model.vocab_size, cfg.run_dir)
    sample = "def greet(name):\n    return f'hello {name}'\n"
    ids = tok(sample, add_special_tokens=False)["input_ids"]
    print(f"tokenizer: {len(tok)} tokens, saved in {cfg.run_dir / 'tokenizer'}")
    print(f"sample: {len(sample)} characters -> {len(ids)} tokens; decodes back: {tok.decode(ids) == sample}")


if __name__ == "__main__":
    main()

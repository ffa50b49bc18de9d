"""python -m pretrain CONFIG.yaml [dotted.key=value ...]

Today: resolves and validates the config, writes it to the run directory, builds the model and
checks one forward/backward pass. The DeepSpeed training loop arrives with the pretraining issue.
"""

from __future__ import annotations

import math
import sys

from pretrain.config import exit_on_config_error, parse_cli, save_config


@exit_on_config_error
def main(argv: list[str] | None = None) -> None:
    cfg = parse_cli(sys.argv[1:] if argv is None else argv)
    path = save_config(cfg, cfg.run_dir / "config.yaml")

    import torch

    from pretrain.model import Transformer, count_parameters, flops_per_token

    torch.manual_seed(cfg.train.seed)
    model = Transformer(cfg.model)
    n, n_body = count_parameters(model), count_parameters(model, exclude_input_embedding=True)
    print(f"run directory:   {cfg.run_dir}  (resolved config: {path})")
    print(f"model:           {cfg.model.arch}, {cfg.model.num_layers} layers, d_model {cfg.model.d_model}, "
          f"{cfg.model.position} positions, {cfg.model.attention} attention")  # fmt: skip
    print(f"parameters:      {n:,} ({n_body:,} without input embeddings)")
    print(f"FLOPs per token: {flops_per_token(model, cfg.data.seq_len):,.0f} at seq_len {cfg.data.seq_len}")
    tokens = torch.randint(cfg.model.vocab_size, (cfg.train.micro_batch_size, cfg.data.seq_len))
    logits = model(tokens[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()
    print(
        f"one step check:  loss {loss.item():.3f} on random tokens (ln(vocab) = {math.log(cfg.model.vocab_size):.3f})"
    )
    print("training under DeepSpeed is not implemented yet: see the pretraining issue")


if __name__ == "__main__":
    main()

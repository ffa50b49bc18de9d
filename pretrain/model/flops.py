"""Parameter and FLOP counts, for model summaries and MFU."""

from __future__ import annotations

from torch import nn


def count_parameters(model: nn.Module, exclude_input_embedding: bool = False) -> int:
    """Trainable parameters, each shared tensor once.

    With exclude_input_embedding, lookup tables that do no matmul (token, learned position and
    token-type embeddings) are left out, except a token embedding tied to the output layer, which
    does the output matmul.
    """
    total = sum(p.numel() for p in model.parameters())
    if exclude_input_embedding:
        embed = model.embed
        if not model.cfg.tie_embeddings:
            total -= embed.tokens.weight.numel()
        for table in (embed.positions, embed.token_types):
            if table is not None:
                total -= table.weight.numel()
    return total


def flops_per_token(model: nn.Module, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward): 6N + 12 * L * H * Q * T, with N the
    parameters that take part in matmuls, L layers, H heads, Q head size, T sequence length
    (the second term is attention's scores and weighted sum, PaLM appendix B)."""
    cfg = model.cfg
    n = count_parameters(model, exclude_input_embedding=True)
    return 6.0 * n + 12.0 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len

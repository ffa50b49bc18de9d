"""Parameter and FLOP counts, for model summaries and MFU."""

from __future__ import annotations

from torch import nn


def numel(p) -> int:
    """Elements of a parameter; one partitioned by DeepSpeed ZeRO-3 holds a placeholder and keeps
    its whole size as ``ds_numel``."""
    return getattr(p, "ds_numel", None) or p.numel()


def whole_shape(p) -> tuple[int, ...]:
    """Shape of a parameter, whole even when ZeRO-3 partitioned it (kept as ``ds_shape``)."""
    return tuple(getattr(p, "ds_shape", None) or p.shape)


def count_parameters(model: nn.Module, exclude_input_embedding: bool = False) -> int:
    """Trainable parameters, each shared tensor once.

    With exclude_input_embedding, lookup tables that do no matmul (token, learned position and
    token-type embeddings) are left out, except a token embedding tied to the output layer, which
    does the output matmul.
    """
    total = sum(numel(p) for p in model.parameters())
    if exclude_input_embedding:
        embed = model.embed
        if not model.cfg.tie_embeddings:
            total -= numel(embed.tokens.weight)
        decoder = getattr(model, "decoder_embed", None)  # an encoder-decoder's decoder has its own positions
        for table in (embed.positions, embed.token_types, decoder.positions if decoder is not None else None):
            if table is not None:
                total -= numel(table.weight)
    return total


def flops_per_token(model: nn.Module, seq_len: int, predicted_fraction: float = 1.0) -> float:
    """Training FLOPs per input token (forward + backward = 3 x forward) of the matmuls that run.

    - Every Linear in the blocks: 6 x its weights (2 per multiply-add, x3 for training).
    - The output layer (and an MLM head's transform) only on the positions that are predicted:
      ``predicted_fraction`` of the tokens (1 for a causal LM, the masking rate for a masked LM,
      0 for a classifier, which uses the hidden states and not the vocabulary projection).
    - Attention's scores (Q K^T) and weighted sum (A V): 12 x layers x heads x head size x T, with
      the full T x T score matrix counted also under causal masking (as PaLM's appendix B and the
      eager kernel count it; a causal flash kernel skips about half of that work).
    Norms, activations, softmax and embedding lookups are left out (they are not matmuls).
    """
    cfg = model.cfg
    if cfg.arch == "encoder-decoder":
        return _encoder_decoder_flops(model, seq_len, predicted_fraction)
    body = sum(numel(m.weight) for layer in model.layers for m in layer.modules() if isinstance(m, nn.Linear))
    head = sum(numel(m.weight) for m in model.head.modules() if isinstance(m, nn.Linear))
    attention = 2 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len  # fwd FLOPs per token: QK^T + AV
    return 6.0 * body + 6.0 * head * predicted_fraction + 6.0 * attention


def _encoder_decoder_flops(model: nn.Module, seq_len: int, target_fraction: float) -> float:
    """Per encoder input token, both stacks: the encoder's matmuls over its seq_len tokens, and the
    decoder's (self-attention, cross-attention to the seq_len encoder outputs, MLP, output layer)
    over target_fraction x seq_len target tokens; cross-attention's keys and values are projected
    once per encoder token. A classifier's body (decoder dropped) counts its encoder only, with
    target_fraction 0."""
    cfg = model.cfg

    def linears(modules) -> int:
        return sum(numel(m.weight) for block in modules for m in block.modules() if isinstance(m, nn.Linear))

    memory = sum(numel(block.cross_attn.kv.weight) for block in model.decoder)
    head = getattr(model.head, "weight", None)  # none on a classifier's body (encoder only)
    per_target = linears(model.decoder) - memory + (numel(head) if head is not None else 0)
    width = cfg.num_heads * cfg.head_dim
    attention = cfg.num_layers * seq_len + cfg.decoder_layers * target_fraction * seq_len * target_fraction
    cross = cfg.decoder_layers * seq_len * target_fraction  # every target reads every encoder output
    return 6.0 * (linears(model.encoder) + memory) + 6.0 * per_target * target_fraction + 12.0 * width * (
        attention + cross
    )

"""Parameter and FLOP counts, for model summaries and MFU."""

from __future__ import annotations

from torch import nn

from .linear_attention import SequenceProjection, attention_macs


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
      eager kernel count it; a causal flash kernel skips about half of that work). Linear attention
      (Performer, Linformer) counts its own products instead (linear_attention.attention_macs), and
      DeBERTa's disentangled positions their own beside (``_macs``). With Transformer-XL's memory,
      each segment's scores span its memory and itself (``segment_keys``).
    Norms, activations, softmax and embedding lookups are left out (they are not matmuls).
    """
    cfg = model.cfg
    if cfg.arch == "encoder-decoder":
        return _encoder_decoder_flops(model, seq_len, predicted_fraction)
    body = _linears(model.layers)
    head = sum(numel(m.weight) for m in model.head.modules() if isinstance(m, nn.Linear))
    keys, memory_rows = segment_keys(cfg, seq_len)
    attention = cfg.num_layers * cfg.num_heads * _macs(cfg, keys, cfg.causal)  # fwd multiply-adds per token
    qkv = sum(numel(block.attn.qkv.weight) for block in model.layers)  # made again for each memory row
    return 6.0 * body + 6.0 * qkv * memory_rows + 6.0 * head * predicted_fraction + 6.0 * attention


def segment_keys(cfg, seq_len: int) -> tuple[float, float]:
    """(keys per query, memory rows per token) of a row of seq_len run as it trains: seq_len and 0,
    or with Transformer-XL's memory, each segment's queries over its memory and itself, and the
    memory's rows projected again for their keys and values."""
    if not cfg.memory_len:
        return seq_len, 0.0
    keys = rows = 0
    for start in range(0, seq_len, cfg.segment_len):
        length, kept = min(cfg.segment_len, seq_len - start), min(cfg.memory_len, start)
        keys += length * (kept + length)
        rows += kept
    return keys / seq_len, rows / seq_len


def _linears(blocks) -> int:
    """Weights of the per-token matmuls (Linformer's projections run along the sequence: not these)."""
    return sum(numel(m.weight) for block in blocks for m in block.modules()
               if isinstance(m, nn.Linear) and not isinstance(m, SequenceProjection))  # fmt: skip


def _macs(cfg, length: float, causal: bool) -> float:
    """Per query and head. DeBERTa's positions add each query's scores against every distance's key
    and each key's against every distance's query (2 x 2 buckets x head size); the projection of the
    distance table, once per batch, is left out (under 1% of a step at DeBERTa-v3-base's size)."""
    macs = attention_macs(cfg.linear_attention, length, cfg.head_dim, cfg.linear_attention_dim, causal)
    if cfg.position == "disentangled":
        macs += 2 * 2 * cfg.relative_num_buckets * cfg.head_dim
    return macs


def _encoder_decoder_flops(model: nn.Module, seq_len: int, target_fraction: float) -> float:
    """Per encoder input token, both stacks: the encoder's matmuls over its seq_len tokens, and the
    decoder's (self-attention, cross-attention to the seq_len encoder outputs, MLP, output layer)
    over target_fraction x seq_len target tokens; cross-attention's keys and values are projected
    once per encoder token. A classifier's body (decoder dropped) counts its encoder only, with
    target_fraction 0."""
    cfg = model.cfg
    memory = sum(numel(block.cross_attn.kv.weight) for block in model.decoder)
    head = getattr(model.head, "weight", None)  # none on a classifier's body (encoder only)
    per_target = _linears(model.decoder) - memory + (numel(head) if head is not None else 0)
    targets = target_fraction * seq_len
    attention = (cfg.num_layers * _macs(cfg, seq_len, False)  # per encoder token, then per target token
                 + cfg.decoder_layers * target_fraction * _macs(cfg.decoder_stack(), targets, True)  # (self, cross over
                 + cfg.decoder_layers * target_fraction * 2 * seq_len * cfg.head_dim)  # every output)  # fmt: skip
    linears = 6.0 * (_linears(model.encoder) + memory) + 6.0 * per_target * target_fraction
    return linears + 6.0 * cfg.num_heads * attention

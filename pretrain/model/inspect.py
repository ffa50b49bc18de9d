"""What a model attends to, as numbers: attention weights from the reference (eager) kernel, per-head
summaries (entropy, mean attended distance), and each position scheme as a position-by-position table.

Drawing them is ``pretrain.pictures``; the command is ``python -m finetune.inspect``.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from .position import ALiBi, Disentangled, RelativeBias, Rotary, apply_rotary, sinusoidal


def body_of(model: nn.Module) -> nn.Module:
    """The Transformer inside a task model (a classifier keeps it as ``body``)."""
    return getattr(model, "body", model)


@contextlib.contextmanager
def reference_kernel(model: nn.Module):
    """Run ``model`` with the eager kernel (the only one that returns weights) in eval mode, then put
    back its kernel and mode. Every layer reads the kernel from the one shared ModelConfig."""
    cfg, was_training = body_of(model).cfg, model.training
    kernel, cfg.attention = cfg.attention, "eager"
    model.eval()
    try:
        yield
    finally:
        cfg.attention = kernel
        model.train(was_training)


@torch.no_grad()
def attention_weights(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      token_type_ids: torch.Tensor | None = None) -> list[torch.Tensor]:  # fmt: skip
    """One (B, H, T, T) float32 tensor per layer: row i is how query token i spreads its attention over
    the keys (sums to 1; zero on padding and, in a decoder, on later tokens)."""
    body = body_of(model)
    with reference_kernel(model):
        _, weights = body.hidden_states(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                                        return_attention=True)  # fmt: skip
    return [w.float() for w in weights]


@torch.no_grad()
def seq2seq_attention_weights(model: nn.Module, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor,
                              attention_mask: torch.Tensor | None = None,
                              decoder_attention_mask: torch.Tensor | None = None) -> dict[str, list]:  # fmt: skip
    """An encoder-decoder's attention, one float32 tensor per layer of each: ``encoder`` (B, H, S, S)
    over the source, ``decoder`` (B, H, T, T) the decoder's masked self-attention over the target so
    far, ``cross`` (B, H, T, S) how each target token spreads its attention over the source."""
    body = body_of(model)
    encoder, decoder = [], []
    with reference_kernel(model):
        memory = body.encode(input_ids, attention_mask, weights=encoder)
        body.decode(decoder_input_ids, memory, attention_mask, decoder_attention_mask, weights=decoder)
    return {"encoder": [w.float() for w in encoder], "decoder": [w.float() for w, _ in decoder],
            "cross": [w.float() for _, w in decoder]}  # fmt: skip


def head_statistics(weights: list[torch.Tensor], attention_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per layer and head (L, H), averaged over the real query tokens of every sequence:
    ``entropy`` of the attention row in nats (0: one key takes everything; log n: uniform over n keys)
    and ``distance``, the mean |i - j| between a query and the keys it attends to, in tokens."""
    w = torch.stack(weights)  # (L, B, H, T, S)
    T, S = w.shape[-2:]
    rows = torch.ones(w.shape[1], T, dtype=w.dtype, device=w.device) if attention_mask is None \
        else attention_mask[:, :T].to(w.dtype)  # fmt: skip
    entropy = -(w * w.clamp_min(1e-30).log()).sum(-1)  # (L, B, H, T)
    idx = torch.arange(max(T, S), device=w.device)
    gap = (idx[:T, None] - idx[None, :S]).abs().to(w.dtype)
    distance = (w * gap).sum(-1)
    weight = rows[None, :, None, :]  # (1, B, 1, T)
    count = weight.sum(dim=(1, 3)).clamp_min(1)
    return {"entropy": ((entropy * weight).sum(dim=(1, 3)) / count).cpu(),
            "distance": ((distance * weight).sum(dim=(1, 3)) / count).cpu()}  # fmt: skip


def stack_statistics(stack: str, weights: list[torch.Tensor], attention_mask: torch.Tensor | None = None) -> dict:
    """head_statistics of one attention of a model (``stack``: an encoder-decoder's encoder,
    decoder or cross, or any name for another model's): the cross-attention's entropy alone, as
    the distance of a target token to a source token means nothing."""
    stats = head_statistics(weights, attention_mask)
    return {"entropy": stats["entropy"]} if stack == "cross" else stats


@torch.no_grad()
def position_tables(model: nn.Module, n: int, stack: str = "encoder") -> tuple[str, torch.Tensor, list[str]] | None:
    """The model's own position scheme over positions 0..n-1 as (description, (G, n, n) table, titles):
    for schemes added to the embeddings (sinusoidal, learned) the cosine similarity of the encodings of
    positions i and j; for RoPE, the score a query and key with equal content get at positions i and j
    (as a fraction of the unrotated score); for ALiBi and T5's relative bias, the bias each head adds to
    the score of query i and key j; for DeBERTa's disentangled positions (whose scores depend on the
    content too), the cosine similarity of the embedding of distance i - j to that of distance 0.
    None for a model without positions. ``stack``: an encoder-decoder's ``encoder`` or ``decoder``
    (each has its own learned table and relative bias)."""
    body = body_of(model)
    cfg, scheme = body.cfg, body.cfg.position
    seq2seq = cfg.arch == "encoder-decoder"
    pos = torch.arange(n)
    if scheme in ("sinusoidal", "learned"):
        if scheme == "learned":
            n = min(n, cfg.max_seq_len)
            embed = body.decoder_embed if seq2seq and stack == "decoder" else body.embed
            enc = embed.positions.weight[:n].float()
        else:
            enc = sinusoidal(pos, cfg.d_model)
        enc = F.normalize(enc, dim=-1)
        return f"cosine similarity of the {scheme} position encodings", (enc @ enc.T)[None], [scheme]
    position = getattr(body, f"{stack}_position") if seq2seq else body.position
    if isinstance(position, Rotary):
        cos, sin = position.angles(pos[None])  # (1, 1, n, rot_dim)
        unit = torch.ones(1, 1, n, cfg.head_dim)
        rotated = apply_rotary(unit, cos, sin)[0, 0]  # the same vector at every position, rotated there
        return "RoPE: score of equal query and key content at positions i and j", \
            (rotated @ rotated.T / cfg.head_dim)[None], ["rope"]  # fmt: skip
    if isinstance(position, (ALiBi, RelativeBias)):
        table = position.by_distance(pos[None, :] - pos[:, None]).float()  # (H, n, n), key minus query
        return f"{scheme} bias added to the score of query i and key j", table, \
            [f"head {h}" for h in range(table.shape[0])]  # fmt: skip
    if isinstance(position, Disentangled):
        rows = F.normalize(position.norm(position.embedding.weight).float(), dim=-1)  # (2 x buckets, D)
        table = rows[position.index(n, n)] @ rows[position.span]  # (n, n): distance i - j against 0
        return "cosine of distance i - j's embedding with distance 0's", \
            table[None], ["disentangled"]  # fmt: skip
    return None

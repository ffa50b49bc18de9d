"""Norms, MLPs and the Transformer block (pre- or post-norm, optional cross-attention)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Attention, AttentionContext, KVCache
from .config import ModelConfig

ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "swiglu": F.silu,
    "geglu": F.gelu,
    "geglu_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


def build_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)


class MLP(nn.Module):
    """Position-wise feed-forward: act(x W1) W2, or the gated act(x Wg) * (x Wu) W2 (SwiGLU, GeGLU).

    The gate and up projections share one matrix ``fc`` (gate rows first) for one matmul.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gated = cfg.gated
        self.act = ACTIVATIONS[cfg.mlp]
        self.fc = nn.Linear(cfg.d_model, cfg.ffn_size * (2 if cfg.gated else 1), bias=cfg.bias)
        self.proj = nn.Linear(cfg.ffn_size, cfg.d_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        return self.proj(h)


class Block(nn.Module):
    """Self-attention, optional cross-attention, MLP; each a residual branch.

    pre-norm:  x = x + f(norm(x))    (GPT-2, LLaMA; the stack adds a final norm)
    post-norm: x = norm(x + f(x))    (original Transformer, BERT)
    """

    def __init__(self, cfg: ModelConfig, cross_attention: bool = False, layer: int = 0):
        """``layer``: the block's index over the model's stacks (seeds a Performer's features)."""
        super().__init__()
        self.pre_norm = cfg.norm_position == "pre"
        self.attn_norm = build_norm(cfg)
        self.attn = Attention(cfg, layer=layer)
        if cross_attention:
            self.cross_norm = build_norm(cfg)
            self.cross_attn = Attention(cfg, cross=True)
        self.mlp_norm = build_norm(cfg)
        self.mlp = MLP(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def _residual(self, x, norm, fn):
        if self.pre_norm:
            out = fn(norm(x))
            return x + self.dropout(out[0] if isinstance(out, tuple) else out), out
        out = fn(x)
        return norm(x + self.dropout(out[0] if isinstance(out, tuple) else out)), out

    def forward(
        self,
        x: torch.Tensor,
        ctx: AttentionContext,
        cache: KVCache | None = None,
        layer: int = 0,
        memory: torch.Tensor | None = None,
        memory_ctx: AttentionContext | None = None,
        need_weights: bool = False,
        prefix: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``memory``/``memory_ctx``: the encoder's output to cross-attend to. ``prefix``: this
        layer's inputs at the positions before x (Transformer-XL's memory), attended to beside x.
        ``need_weights``: the self-attention's weights come back (B, H, T, S); with ``memory``, a
        pair (self-attention's, cross-attention's (B, H, T, source length))."""
        if prefix is not None and self.pre_norm:
            prefix = self.attn_norm(prefix)
        x, (_, weights) = self._residual(
            x, self.attn_norm, lambda h: self.attn(h, ctx, cache, layer, need_weights=need_weights, prefix=prefix)
        )
        if memory is not None:
            x, (_, cross) = self._residual(
                x, self.cross_norm, lambda h: self.cross_attn(h, memory_ctx, cache, layer, memory, need_weights)
            )
            weights = (weights, cross) if need_weights else None
        x, _ = self._residual(x, self.mlp_norm, self.mlp)
        return x, weights

"""The step benchmark's second baseline: a GPT written the way nanoGPT's ``model.py`` writes one.

nanoGPT is what many of our users would otherwise train with, but it is a script, not a package, so
the benchmark carries this model of the same structure instead (our code, not nanoGPT's):
one ``c_attn`` linear for q, k, v, SDPA with ``is_causal``, a 4x MLP, LayerNorm, tied output layer,
and the loss as nanoGPT takes it: every position's logits, then ``F.cross_entropy``. It has no masks,
caches, kernel choice or position schemes: the least a GPT-2-shaped step can do in eager torch.
It takes our model's weights, so the two compute the same function on the same batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.model.loss import IGNORE


def unsupported(cfg) -> str | None:
    """Why a model config has no nanoGPT-shaped twin, or None when it has one."""
    wanted = {"arch": "decoder", "position": "learned", "norm": "layernorm", "norm_position": "pre"}
    for key, value in wanted.items():
        if getattr(cfg, key) != value:
            return f"model.{key}={getattr(cfg, key)!r} (nanoGPT's model has {key} {value!r})"
    if cfg.mlp not in ("gelu", "gelu_tanh"):
        return f"model.mlp={cfg.mlp!r} (nanoGPT's MLP is GELU)"
    if cfg.kv_heads != cfg.num_heads:
        return f"model.kv_heads={cfg.kv_heads} (nanoGPT's attention has as many key/value heads as heads)"
    if cfg.sliding_window or cfg.scale_embeddings or cfg.type_vocab_size or cfg.memory_len or cfg.linear_attention:
        return "a sliding window, scaled embeddings, token types, memory or linear attention (nanoGPT's model has none)"
    return None


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, bias = cfg.d_model, cfg.bias
        self.heads = cfg.num_heads
        self.ln_1 = nn.LayerNorm(d, eps=cfg.norm_eps, bias=bias)
        self.c_attn = nn.Linear(d, 3 * d, bias=bias)
        self.attn_proj = nn.Linear(d, d, bias=bias)
        self.ln_2 = nn.LayerNorm(d, eps=cfg.norm_eps, bias=bias)
        self.c_fc = nn.Linear(d, cfg.ffn_size, bias=bias)
        self.mlp_proj = nn.Linear(cfg.ffn_size, d, bias=bias)
        self.approximate = "tanh" if cfg.mlp == "gelu_tanh" else "none"

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate=self.approximate))


class NanoGPTStyle(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight

    def forward(self, idx, targets):
        """Mean cross-entropy of the next tokens ``targets`` (IGNORE where there is none)."""
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=IGNORE)


_NAMES = {"ln_1": "attn_norm", "c_attn": "attn.qkv", "attn_proj": "attn.proj", "ln_2": "mlp_norm",
          "c_fc": "mlp.fc", "mlp_proj": "mlp.proj"}  # fmt: skip


def nanogpt_twin(ours) -> NanoGPTStyle:
    """The nanoGPT-shaped model holding ``ours``'s weights (a GPT-2-shaped pretrain.model.Transformer)."""
    cfg = ours.cfg
    why = unsupported(cfg)
    if why:
        raise ValueError(f"no nanoGPT-shaped twin for {why}")
    twin = NanoGPTStyle(cfg)
    src = ours.state_dict()
    mapped = {"wte.weight": "embed.tokens.weight", "wpe.weight": "embed.positions.weight",
              "lm_head.weight": "head.weight"}  # fmt: skip
    for name in twin.state_dict():
        if name.startswith("h."):
            _, i, part, leaf = name.split(".")
            mapped[name] = f"layers.{i}.{_NAMES[part]}.{leaf}"
        elif name.startswith("ln_f."):
            mapped[name] = "norm." + name.split(".")[1]
    twin.load_state_dict({k: src[v] for k, v in mapped.items()})
    return twin

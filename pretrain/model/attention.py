"""Self- and cross-attention (multi-head, grouped-query, multi-query), the kernels behind them, and
the KV cache for incremental decoding.

A stack builds one ``AttentionContext`` per forward from what constrains attention (causality, a
sliding window with or without global tokens, padding, document boundaries, a position bias) and
every layer hands it to the configured kernel. Each kernel reads the form it can use: a dense mask
and bias (eager, sdpa), a BlockMask and score_mod (flex), window and ALiBi slopes (flash-attn), or
nothing but causality (flash). All kernels agree that a query allowed to see no key outputs zeros.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .linear_attention import SequenceProjection, linformer, orthogonal_features, performer, performer_weights
from .position import ALiBi, Disentangled, RelativeBias, Rotary, apply_rotary


@dataclass
class AttentionContext:
    """What attention needs for one forward pass, shared by every layer: the constraints (the same
    for every kernel), then the configured kernel's form of them, filled in by ``build_context``."""

    kernel: str
    q_len: int
    k_len: int
    offset: int = 0
    """Index of the first query (the cached length when decoding)."""
    causal: bool = False
    """Each query sees the keys at or before its own position."""
    window: int | None = None
    """Each query sees only the keys fewer than this many positions away."""
    segments: tuple[int, int] | None = None
    """Transformer-XL's memory as a mask: (segment_len, memory_len); a query at position p sees the
    keys from the start of its segment, (p // segment_len) * segment_len, less memory_len on."""
    key_positions: torch.Tensor | None = None
    """(B, S) position of each key, counting real tokens only (for ``segments`` under padding);
    None when it is the key's index."""
    global_keys: torch.Tensor | None = None
    """(B or 1, S) bool, True for the keys that see and are seen past the window: the first
    ``global_tokens`` real tokens of each row (left padding is not counted) or packed document."""
    padding: torch.Tensor | None = None
    """(B, S) bool, True for real keys."""
    document_ids: torch.Tensor | None = None
    """(B, T) packed document of each token; queries see their own document only."""
    rope: tuple[torch.Tensor, torch.Tensor] | None = None
    """cos, sin of shape (B, 1, T, rot_dim)."""
    alibi_slopes: torch.Tensor | None = None
    distances: tuple[torch.Tensor, torch.Tensor] | None = None
    """DeBERTa's disentangled positions: the normed distance table (2 * buckets, D) and the (T, S)
    row of it for each query and key; each layer turns them into its own ``bias``."""
    scale: float | None = None
    """Multiplier of q k^T; None for 1 / sqrt(head size)."""
    # eager and sdpa
    mask: torch.Tensor | None = None
    """(B or 1, 1, T, S) bool, True where a query may see a key; None when nothing is masked, or
    (sdpa) when ``plain_causal`` says all there is to say."""
    bias: torch.Tensor | None = None
    """(1, H, T, S) float added to the scores (ALiBi, relative), or (B, H, T, S) (disentangled)."""
    # flex
    block_mask: object | None = None
    score_mod: object | None = None

    @property
    def masks_nothing(self) -> bool:
        """Every query sees every key: bidirectional, or one causal query at the end of the cache."""
        return self._plain and (not self.causal or self.q_len == 1)

    @property
    def plain_causal(self) -> bool:
        """The only constraint is the causal mask over T == S (SDPA's and flash's ``is_causal``)."""
        return self._plain and self.causal and self.offset == 0

    @property
    def causal_after_cache(self) -> bool:
        """The only constraint is causality for queries that follow ``offset`` earlier keys (a cache
        or Transformer-XL's memory): the causal mask aligned to the last key, not the first."""
        return self._plain and self.causal and self.offset > 0 and self.q_len > 1

    @property
    def _plain(self) -> bool:
        return self.padding is None and self.document_ids is None and self.window is None and self.segments is None


def build_context(
    cfg: ModelConfig,
    position: nn.Module | None,
    *,
    q_len: int,
    offset: int = 0,
    positions: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    document_ids: torch.Tensor | None = None,
    memory_len: int | None = None,
    device: torch.device | None = None,
    causal: bool | None = None,
    segments: bool = True,
) -> AttentionContext:
    """Collect the constraints for queries at indices offset..offset+q_len-1 over keys 0..S-1, in the
    form the configured kernel takes.

    attention_mask: (B, S) with 1 for real tokens, 0 for padding, covering the cache too.
    document_ids: (B, T) ids of the packed document each token belongs to (no cache).
    memory_len: for cross-attention, the length of the memory (encoder output) the queries read;
    then attention_mask is the memory's padding and nothing else applies (no causality, window
    or position bias).
    causal: the stack's own (an encoder-decoder has one of each); by default the model's.
    segments: False where the keys are already a segment and its memory (Transformer.hidden_states
    running a row segment by segment), so a model with memory_len needs no mask for it.
    """
    cross = memory_len is not None
    causal = cfg.causal if causal is None else causal
    k_len = memory_len if cross else offset + q_len
    if attention_mask is not None and attention_mask.shape[-1] != k_len:
        raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} keys but there are {k_len}")
    if document_ids is not None and offset:
        raise ValueError("document_ids cannot be combined with a KV cache")
    position = None if cross else position
    ctx = AttentionContext(
        cfg.attention,
        q_len,
        k_len,
        offset,
        causal=causal and not cross,
        window=None if cross else cfg.sliding_window,
        padding=attention_mask.bool() if attention_mask is not None else None,
        document_ids=document_ids,
        rope=position.angles(positions) if isinstance(position, Rotary) else None,
        alibi_slopes=position.slopes if isinstance(position, ALiBi) else None,
    )
    if isinstance(position, Disentangled):
        ctx.distances = position(), position.index(q_len, k_len, device)
    if cfg.memory_len and segments and not cross:
        ctx.segments = (cfg.segment_len, cfg.memory_len)
        if ctx.padding is not None:
            ctx.key_positions = ctx.padding.long().cumsum(-1) - 1
    if cfg.global_tokens and not cross:
        ctx.global_keys = _global_keys(ctx.padding, document_ids, k_len, cfg.global_tokens, device)
    KERNEL_FORMS[cfg.attention](ctx, position, device)
    return ctx


def _global_keys(padding, document_ids, k_len: int, count: int, device) -> torch.Tensor:
    """The first ``count`` real tokens of each row (by rank among its real tokens: left padding is
    not counted), or of each packed document."""
    index = torch.arange(k_len, device=device)
    if document_ids is not None:  # packed documents (no cache: keys are the queries)
        starts = torch.ones_like(document_ids, dtype=torch.bool)
        starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
        first = torch.where(starts, index, 0).cummax(dim=-1).values  # where each token's document starts
        keys = index - first < count
    elif padding is not None:
        keys = padding.long().cumsum(-1) <= count
    else:
        return (index < count)[None]
    return keys & padding if padding is not None else keys


def _dense_forms(ctx: AttentionContext, position, device) -> None:
    """eager and sdpa: a (B, 1, T, S) bool mask and a (1, H, T, S) position bias."""
    q_idx = torch.arange(ctx.offset, ctx.offset + ctx.q_len, device=device)
    k_idx = torch.arange(ctx.k_len, device=device)
    if isinstance(position, (ALiBi, RelativeBias)):
        ctx.bias = position.by_distance(k_idx[None, :] - q_idx[:, None])[None]
    causal_only = ctx.plain_causal or ctx.causal_after_cache
    if ctx.masks_nothing or (ctx.kernel == "sdpa" and causal_only and ctx.bias is None):
        return  # sdpa's causal paths (is_causal, or the lower-right causal bias): no mask built
    rel = q_idx[:, None] - k_idx[None, :]  # how far back each key is
    mask = torch.ones(ctx.q_len, ctx.k_len, dtype=torch.bool, device=device)
    if ctx.causal:
        mask &= rel >= 0
    mask = mask[None, None]
    if ctx.window is not None:
        near = (rel.abs() < ctx.window)[None, None]
        if ctx.global_keys is not None:  # global keys, and global queries (the queries are keys too)
            g = ctx.global_keys
            near = near | g[:, None, None, :] | g[:, None, ctx.offset : ctx.offset + ctx.q_len, None]
        mask = mask & near
    if ctx.segments is not None:
        mask = mask & _segment_reach(ctx, device)[:, None]
    if ctx.padding is not None:
        mask = mask & ctx.padding[:, None, None, :]
    if ctx.document_ids is not None:
        mask = mask & (ctx.document_ids[:, None, :, None] == ctx.document_ids[:, None, None, :])
    ctx.mask = mask


def _segment_reach(ctx: AttentionContext, device) -> torch.Tensor:
    """(B or 1, T, S): the key is at or after the start of the query's segment less the memory."""
    length, memory = ctx.segments
    keys = ctx.key_positions if ctx.key_positions is not None else torch.arange(ctx.k_len, device=device)[None]
    queries = keys[:, ctx.offset : ctx.offset + ctx.q_len]
    return keys[:, None, :] >= (queries // length * length - memory)[:, :, None]


def _flash_forms(ctx: AttentionContext, position, device) -> None:
    """flash: plain causal or nothing; it takes no mask or bias."""
    if isinstance(position, (ALiBi, RelativeBias)) or not (ctx.masks_nothing or ctx.plain_causal):
        what = "a padding mask" if ctx.padding is not None else "a mask or bias other than plain causal"
        raise ValueError(f"attention='flash' cannot take {what}; use attention='sdpa' or 'flex'")


def _flex_forms(ctx: AttentionContext, position, device) -> None:
    """flex: a BlockMask from the constraints, and the position bias as a score_mod."""
    ctx.block_mask = _flex_block_mask(ctx, device)
    offset, k_len = ctx.offset, ctx.k_len
    if isinstance(position, ALiBi):  # -slope_h * |k - q|, computed in the kernel from H numbers
        slopes = position.slopes
        ctx.score_mod = lambda s, b, h, q, k: s - (slopes[h] * (k - q - offset).abs()).to(s.dtype)
    elif isinstance(position, RelativeBias):
        # Bias depends on k - q only: tabulate it over every distance, index it in score_mod.
        table = position.by_distance(torch.arange(-(k_len - 1), k_len, device=device))  # (H, R)
        shift = ctx.q_len - 1 + offset  # index of distance 0 is k_len - 1
        ctx.score_mod = lambda s, b, h, q, k: s + table[h, k - q - offset + shift].to(s.dtype)


def _flash_attn_forms(ctx: AttentionContext, position, device) -> None:
    """flash_attn: causality, window and ALiBi slopes are its own arguments; no padding or documents."""
    if ctx.padding is not None or ctx.document_ids is not None:
        raise ValueError("attention='flash_attn' takes no padding or document mask here; use 'sdpa' or 'flex'")


KERNEL_FORMS = {"eager": _dense_forms, "sdpa": _dense_forms, "flash": _flash_forms, "flex": _flex_forms,
                "flash_attn": _flash_attn_forms}  # fmt: skip
"""How each kernel wants the constraints, filled into the context once per forward."""


def _flex_block_mask(ctx: AttentionContext, device):
    from torch.nn.attention.flex_attention import create_block_mask

    if ctx.masks_nothing:
        return None
    causal, window, offset, pad, document_ids = ctx.causal, ctx.window, ctx.offset, ctx.padding, ctx.document_ids
    global_keys, segments, key_pos = ctx.global_keys, ctx.segments, ctx.key_positions

    def mask_mod(b, h, q, k):
        qa = q + offset
        keep = k >= 0
        if causal:
            keep = keep & (k <= qa)
        if window is not None:
            near = (qa - k).abs() < window
            if global_keys is not None:
                near = near | global_keys[b, k] | global_keys[b, qa]
            keep = keep & near
        if segments is not None:
            length, memory = segments
            if key_pos is None:
                keep = keep & (k >= qa // length * length - memory)
            else:
                keep = keep & (key_pos[b, k] >= key_pos[b, qa] // length * length - memory)
        if pad is not None:
            keep = keep & pad[b, k]
        if document_ids is not None:
            keep = keep & (document_ids[b, q] == document_ids[b, k])
        return keep

    per_batch = pad is not None or document_ids is not None
    batch = (pad if pad is not None else document_ids).shape[0] if per_batch else None
    return create_block_mask(mask_mod, batch, None, ctx.q_len, ctx.k_len, device=device)


# -- kernels: (q (B,H,T,D), k, v (B,Hkv,S,D), ctx, dropout_p) -> (out (B,H,T,D), weights or None)


def _eager(q, k, v, ctx, dropout_p, need_weights=False):
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scale = ctx.scale if ctx.scale is not None else q.shape[-1] ** -0.5
    scores = (q @ k.transpose(-2, -1)).float() * scale  # (B, H, T, S)
    if ctx.bias is not None:
        scores = scores + ctx.bias
    mask = ctx.mask
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = scores.softmax(dim=-1)
    if mask is not None:
        weights = weights.masked_fill(~mask.any(-1, keepdim=True), 0.0)  # rows that may see nothing
    weights = weights.to(q.dtype)
    out = F.dropout(weights, dropout_p) @ v
    return out, (weights if need_weights else None)


def _dense_mask(ctx) -> torch.Tensor | None:
    if ctx.bias is None:
        return ctx.mask
    if ctx.mask is None:
        return ctx.bias
    return ctx.bias.masked_fill(~ctx.mask, float("-inf"))


def _sdpa(q, k, v, ctx, dropout_p, need_weights=False):
    mask = _dense_mask(ctx)
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.to(q.dtype)
    if mask is None and ctx.causal_after_cache:  # flash kernels take it on a GPU; CPU runs it as a mask
        from torch.nn.attention.bias import causal_lower_right

        mask = causal_lower_right(ctx.q_len, ctx.k_len)
    out = F.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=mask,
        dropout_p=dropout_p,
        is_causal=mask is None and ctx.plain_causal,
        scale=ctx.scale,
        enable_gqa=q.shape[1] != k.shape[1],
    )
    return out, None


def _flash(q, k, v, ctx, dropout_p, need_weights=False):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if q.device.type == "cuda" and q.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"attention='flash' on CUDA needs float16 or bfloat16 inputs, got {q.dtype}")
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout_p, is_causal=ctx.plain_causal, enable_gqa=q.shape[1] != k.shape[1]
        )
    return out, None


_compiled_flex = None


def _flex(q, k, v, ctx, dropout_p, need_weights=False):
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if dropout_p:
        raise ValueError("attention='flex' has no attention dropout; set model.attention_dropout=0")
    fn = flex_attention
    if q.device.type == "cuda":  # fused kernels need compiling; CPU runs flex's unfused fallback
        _compiled_flex = _compiled_flex or torch.compile(flex_attention)
        fn = _compiled_flex
    out = fn(q, k, v, score_mod=ctx.score_mod, block_mask=ctx.block_mask, enable_gqa=q.shape[1] != k.shape[1])
    return out, None


def _flash_attn(q, k, v, ctx, dropout_p, need_weights=False):
    try:
        from flash_attn import flash_attn_func
    except ImportError as e:
        raise ImportError("attention='flash_attn' needs the flash-attn package: pip install '.[flash]'") from e
    left = ctx.window - 1 if ctx.window else -1
    right = 0 if ctx.causal else left
    out = flash_attn_func(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),  # it wants (B, T, H, D)
        dropout_p=dropout_p,
        causal=ctx.causal,
        window_size=(left, right),
        alibi_slopes=None if ctx.alibi_slopes is None else ctx.alibi_slopes.float(),
    )
    return out.transpose(1, 2), None


KERNELS = {"eager": _eager, "sdpa": _sdpa, "flash": _flash, "flex": _flex, "flash_attn": _flash_attn}


class KVCache:
    """Preallocated keys and values of every layer for incremental decoding.

    The stack writes each layer's new keys and values at ``length`` and advances ``length`` once
    all layers have run.
    """

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, device=None, dtype=torch.float32,
                 num_layers: int | None = None):  # fmt: skip
        layers = num_layers or cfg.num_layers
        shape = (layers, batch_size, cfg.kv_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0
        self.cross: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * layers
        """Per layer, the cross-attention keys and values of the encoder's output (encoder-decoder)."""

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep the batch rows ``rows`` (in that order, repeats allowed): beam search's beams."""
        self.k, self.v = self.k[:, rows], self.v[:, rows]
        self.cross = [None if kv is None else (kv[0][rows], kv[1][rows]) for kv in self.cross]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; this step needs {end}")
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class Attention(nn.Module):
    """Multi-head attention with ``kv_heads`` key/value heads (MHA, GQA or MQA).

    Self-attention projects q, k, v with one fused matrix; cross-attention takes q from x and
    k, v from ``memory`` (the encoder's output).
    """

    def __init__(self, cfg: ModelConfig, cross: bool = False, layer: int = 0):
        """``layer``: the block's index, which seeds a Performer's random features."""
        super().__init__()
        self.num_heads, self.kv_heads, self.head_dim = cfg.num_heads, cfg.kv_heads, cfg.head_dim
        q_dim, kv_dim = cfg.num_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
        self.cross = cross
        if cross:
            self.q = nn.Linear(cfg.d_model, q_dim, bias=cfg.bias)
            self.kv = nn.Linear(cfg.d_model, 2 * kv_dim, bias=cfg.bias)
        else:
            self.qkv = nn.Linear(cfg.d_model, q_dim + 2 * kv_dim, bias=cfg.bias)
        self.proj = nn.Linear(q_dim, cfg.d_model, bias=cfg.bias)
        self.dropout = cfg.attention_dropout
        self.linear = None if cross else cfg.linear_attention
        self.sequence = None  # Linformer's projections, built after the matrices above (init order)
        if self.linear == "linformer":
            self.sequence = SequenceProjection(cfg.max_seq_len, cfg.linear_attention_dim)
        self._features_seed, self._features_dim, self._features = 1_000_003 + layer, cfg.linear_attention_dim, None
        self._redraw_every = cfg.linear_attention_redraw if self.linear == "performer" else 0
        if self._redraw_every:
            self.register_buffer("draw", torch.zeros((), dtype=torch.long))  # which draw of the features
        self._draw = self._features_of = 0  # its value (no device sync per forward); the draw made

    def forward(
        self,
        x: torch.Tensor,
        ctx: AttentionContext,
        cache: KVCache | None = None,
        layer: int = 0,
        memory: torch.Tensor | None = None,
        need_weights: bool = False,
        prefix: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``prefix`` (self-attention): Transformer-XL's memory, the (normed) layer inputs of the
        positions before x, whose keys and values are made here beside x's (``ctx.rope`` then covers
        both)."""
        B, T, _ = x.shape
        H, Hkv, D = self.num_heads, self.kv_heads, self.head_dim
        if self.cross:  # keys and values of the memory: projected once per generation when cached
            q = self.q(x).view(B, T, H, D).transpose(1, 2)
            if cache is not None and cache.cross[layer] is not None:
                k, v = cache.cross[layer]
            else:
                k, v = (t.view(B, -1, Hkv, D).transpose(1, 2) for t in self.kv(memory).split(Hkv * D, dim=-1))
                if cache is not None:
                    cache.cross[layer] = (k, v)
        else:
            rows = x if prefix is None else torch.cat([prefix, x], dim=1)
            q, k, v = self.qkv(rows).split((H * D, Hkv * D, Hkv * D), dim=-1)
            q = q.view(B, -1, H, D).transpose(1, 2)  # (B, H, T, D)
            k = k.view(B, -1, Hkv, D).transpose(1, 2)  # (B, Hkv, S, D)
            v = v.view(B, -1, Hkv, D).transpose(1, 2)
            if ctx.rope is not None:
                q, k = apply_rotary(q, *ctx.rope), apply_rotary(k, *ctx.rope)
            if prefix is not None:
                q = q[:, :, prefix.shape[1] :]  # the memory's queries ask nothing
            if cache is not None:
                k, v = cache.update(layer, k, v)
            if ctx.distances is not None:
                ctx = self.disentangled(q, k, ctx)
        dropout = self.dropout if self.training else 0.0
        if need_weights and (self.linear == "linformer" or (ctx.kernel != "eager" and not self.linear)):
            raise ValueError(f"attention weights come from attention='eager' only (or a Performer's estimate), "
                             f"not {self.linear or ctx.kernel!r}")  # fmt: skip
        if self.linear == "performer":
            features = self.features(q)
            out = performer(q, k, v, ctx.causal, ctx.offset, ctx.padding, features)
            weights = performer_weights(q, k, ctx.causal, ctx.offset, ctx.padding, features) if need_weights else None
        elif self.linear == "linformer":
            out, weights = linformer(q, k, v, self.sequence, ctx.padding, dropout), None
        else:
            out, weights = KERNELS[ctx.kernel](q, k, v, ctx, dropout, need_weights)
        out = out.transpose(1, 2).reshape(B, T, H * D)
        return self.proj(out), weights

    def disentangled(self, q: torch.Tensor, k: torch.Tensor, ctx: AttentionContext) -> AttentionContext:
        """This layer's context for DeBERTa's positions: the distance table projected by this layer's
        query and key matrices (Q_r, K_r), the scores q_i K_r[d(i, j)] + k_j Q_r[d(i, j)] as a
        (B, H, T, S) bias, and every term over sqrt(3 D) as DeBERTa scales them."""
        table, index = ctx.distances
        H, D = self.num_heads, self.head_dim
        q_r, k_r, _ = self.qkv(table).split(H * D, dim=-1)  # the layer's own matrices and biases
        q_r, k_r = (t.view(-1, H, D).transpose(0, 1) for t in (q_r, k_r))  # (H, 2 * buckets, D)
        scale = (3 * D) ** -0.5
        B, T, S = q.shape[0], q.shape[2], k.shape[2]
        c2p = torch.gather(q @ k_r.transpose(-1, -2), -1, index.expand(B, H, T, S))
        p2c = torch.gather(k @ q_r.transpose(-1, -2), -1, index.t().expand(B, H, S, T))  # (B, H, j, i)
        return replace(ctx, bias=(c2p + p2c.transpose(-1, -2)) * scale, scale=scale)

    def features(self, like: torch.Tensor) -> torch.Tensor:
        """The Performer's random features, made once per device and draw (fp32); draw 0 is the
        layer's seed, draw n a seed of its own."""
        if self._features is None or self._features.device != like.device or self._features_of != self._draw:
            seed = self._features_seed + 7_919 * self._draw
            self._features = orthogonal_features(self._features_dim, self.head_dim, seed, like.device, torch.float32)
            self._features_of = self._draw
        return self._features

    def redraw(self, step: int) -> None:
        """Before optimizer step ``step`` (from 1): a Performer with linear_attention_redraw takes
        draw (step - 1) // linear_attention_redraw of its features."""
        draw = (step - 1) // self._redraw_every if self._redraw_every else 0
        if draw != self._draw:
            self.draw.fill_(draw)
            self._draw = draw

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if hasattr(self, "draw"):
            self._draw = int(self.draw)


def redrawing_layers(model: nn.Module) -> list[Attention]:
    """The Performer layers that redraw their random features (linear_attention_redraw): the
    trainer calls ``redraw(step)`` on each before every step. Empty for other models."""
    return [m for m in model.modules() if isinstance(m, Attention) and m._redraw_every]

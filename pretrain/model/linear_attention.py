"""Attention in time linear in the sequence length, the two "efficient Transformers" the seed names:

- Performer (Choromanski et al. 2020, FAVOR+): softmax attention's kernel exp(q . k / sqrt(d))
  estimated with positive random features, phi(x) = exp(W x - |x|^2 / 2) / sqrt(m), W of m
  orthogonal Gaussian rows. Attention becomes phi(Q) (phi(K)^T V) over phi(Q) (phi(K)^T 1): no
  T x S matrix. Bidirectional in one pass; causal in chunks, each chunk's queries reading the
  running sums of the chunks before it plus their own chunk's keys (exactly what the causal mask
  allows). The features are drawn per layer from a seed of their own (the model's other weights
  draw as without them) and are not saved: with linear_attention_redraw the trainer moves each
  layer to a new draw every N steps, and only the draw's number is saved (Attention.redraw).
- Linformer (Wang et al. 2020): keys and values projected along the sequence to a fixed length k by
  learned matrices (shared by the heads of a layer), then softmax attention over those k. The
  projection mixes positions, so it is for bidirectional stacks only; padded keys are zeroed first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CHUNK = 64
"""Queries per chunk of causal Performer attention: memory O(chunk^2 + features x head size)."""


def orthogonal_features(m: int, d: int, seed: int, device, dtype) -> torch.Tensor:
    """(m, d) random features: blocks of d orthogonal rows, each scaled to the length of a
    Gaussian vector, as FAVOR+ draws them; the same for the same seed everywhere."""
    gen = torch.Generator().manual_seed(seed)
    blocks = []
    for _ in range(-(-m // d)):
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen))
        blocks.append(q.T)
    rows = torch.cat(blocks)[:m]
    norms = torch.randn(m, d, generator=gen).norm(dim=1, keepdim=True)
    return (rows * norms).to(device=device, dtype=dtype)


def _phi(x: torch.Tensor, w: torch.Tensor, per_row: bool) -> torch.Tensor:
    """Positive features of x (B, H, N, d), already scaled by d**-0.25. The stabiliser (a max
    subtracted inside exp) cancels between numerator and denominator: per query row, or one for all
    keys of a head."""
    proj = x @ w.T  # (B, H, N, m)
    stab = proj.amax(dim=-1, keepdim=True) if per_row else proj.amax(dim=(-2, -1), keepdim=True)
    return torch.exp(proj - x.square().sum(-1, keepdim=True) / 2 - stab.detach()) / w.shape[0] ** 0.5


def _feature_maps(q, k, padding, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """phi(Q) (B, H, T, m) and phi(K) (B, H, S, m) in fp32, key heads repeated for grouped queries,
    padded keys zero."""
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scale = q.shape[-1] ** -0.25
    qf = _phi(q.float() * scale, features, per_row=True)
    kf = _phi(k.float() * scale, features, per_row=False)
    return qf, (kf * padding[:, None, :, None] if padding is not None else kf)


def performer(q, k, v, causal: bool, offset: int, padding: torch.Tensor | None, features: torch.Tensor):
    """q (B, H, T, d), k and v (B, Hkv, S, d) -> (B, H, T, d). Queries are at positions
    offset..offset+T-1 of the S keys (decoding with a cache); ``padding`` (B, S) True for real keys."""
    dtype = q.dtype
    qf, kf = _feature_maps(q, k, padding, features)
    v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1).float()
    if not causal:
        num = qf @ (kf.transpose(-2, -1) @ v)
        den = qf @ kf.sum(dim=2)[..., None]
        return (num / den.clamp_min(1e-6)).to(dtype)
    state = kf[:, :, :offset].transpose(-2, -1) @ v[:, :, :offset]  # (B, H, m, d): the keys before the queries
    norm = kf[:, :, :offset].sum(dim=2)  # (B, H, m)
    outs = []
    # split once: a slice per chunk would give each chunk's backward a zero-filled gradient of the whole
    for qc, kc, vc in zip(*(t.split(CHUNK, dim=2) for t in (qf, kf[:, :, offset:], v[:, :, offset:])), strict=True):
        scores = (qc @ kc.transpose(-2, -1)).tril()  # within the chunk: causal
        num = qc @ state + scores @ vc
        den = qc @ norm[..., None] + scores.sum(-1, keepdim=True)
        outs.append(num / den.clamp_min(1e-6))
        state = state + kc.transpose(-2, -1) @ vc
        norm = norm + kc.sum(dim=2)
    return torch.cat(outs, dim=2).to(dtype)


def performer_weights(q, k, causal: bool, offset: int, padding, features: torch.Tensor) -> torch.Tensor:
    """The (B, H, T, S) attention Performer applies without forming it: each query's estimated
    kernel against each key it may see, normalised over them (what ``performer`` multiplies V by)."""
    qf, kf = _feature_maps(q, k, padding, features)
    a = qf @ kf.mT
    if causal:
        a = a.tril(offset)
    return (a / a.sum(-1, keepdim=True).clamp_min(1e-6)).to(q.dtype)


class SequenceProjection(nn.Linear):
    """Linformer's E and F as one (2k, max_seq_len) matrix, E's rows first: keys and values
    (B, H, S, d) -> (B, H, k, d), S <= max_seq_len. A Linear, so that it is initialised as the
    others are, and ZeRO-3 gathers its weight when it is called."""

    def __init__(self, max_seq_len: int, length: int):
        super().__init__(max_seq_len, 2 * length, bias=False)
        self.length = length

    def forward(self, k, v, padding: torch.Tensor | None):
        S = k.shape[2]
        if padding is not None:  # padded keys and values contribute nothing to the projections
            keep = padding[:, None, :, None].to(k.dtype)
            k, v = k * keep, v * keep
        e, f = self.weight[:, :S].split(self.length, dim=0)  # (k, S) each
        return torch.einsum("ls,bhsd->bhld", e, k), torch.einsum("ls,bhsd->bhld", f, v)


def linformer(q, k, v, projection: SequenceProjection, padding, dropout_p: float):
    """Softmax attention over the projected keys and values (no mask: padding was zeroed), written
    out: the score matrix is T x k, small."""
    k, v = projection(k, v, padding)
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    weights = ((q @ k.transpose(-2, -1)).float() * q.shape[-1] ** -0.5).softmax(dim=-1).to(q.dtype)
    return F.dropout(weights, dropout_p) @ v


def attention_macs(kind: str | None, length: float, head_dim: int, dim: int, causal: bool) -> float:
    """Forward multiply-adds per query and head of self-attention's products over ``length`` keys:
    softmax's scores and weighted sum (2 x length x head_dim); Performer's feature maps, sums and
    reads (4 x features x head_dim, plus a chunk of scores when causal); Linformer's projections of
    keys and values and its attention over the projected ones (4 x projected length x head_dim)."""
    if kind == "performer":
        within = min(CHUNK, length) * (dim + head_dim) if causal else 0
        return 4 * dim * head_dim + dim + within
    if kind == "linformer":
        return 4 * dim * head_dim
    return 2 * length * head_dim

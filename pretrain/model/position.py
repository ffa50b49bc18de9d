"""Position schemes: learned and sinusoidal (added to the embeddings), RoPE (rotates q and k),
ALiBi and T5's bucketed relative bias (added to the attention scores), and DeBERTa's disentangled
distances (embeddings that each layer's attention projects and scores against its own q and k).

The two score biases are functions of the distance ``k - q`` only, so both expose
``by_distance(rel) -> (H, *rel.shape)``: dense kernels evaluate it on a (T, S) grid, FlexAttention
on a 1-D range of distances that its score_mod indexes, so neither materialises what it need not.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import ModelConfig


def sinusoidal(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """The original paper's table: PE(p, 2i) = sin(p / 10000^(2i/d)), PE(p, 2i+1) = cos(same).

    positions: (...) integer positions -> (..., dim) float32.
    """
    i = torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32)
    angle = positions.float()[..., None] / torch.pow(10000.0, i / dim)  # (..., dim/2)
    pe = torch.stack((angle.sin(), angle.cos()), dim=-1)  # (..., dim/2, 2): sin and cos interleaved
    return pe.flatten(-2)


class Rotary(nn.Module):
    """Rotary position embedding (Su et al.), in the half-split layout of GPT-NeoX and HF LLaMA.

    Rotates the first ``rotary_fraction`` of each head's dimensions; the rest pass through.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.rot_dim = int(cfg.head_dim * cfg.rotary_fraction)
        inv_freq = 1.0 / cfg.rope_base ** (torch.arange(0, self.rot_dim, 2, dtype=torch.float32) / self.rot_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def angles(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (B or 1, T) -> cos, sin of shape (B or 1, 1, T, rot_dim), shared by every layer."""
        freqs = positions.float()[..., None] * self.inv_freq  # (B or 1, T, rot_dim/2)
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]
        return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, head_dim); cos/sin: (B, 1, T, rot_dim)."""
    rot_dim = cos.shape[-1]
    x_rot, x_pass = x[..., :rot_dim], x[..., rot_dim:]
    half = rot_dim // 2
    rotated = torch.cat((-x_rot[..., half:], x_rot[..., :half]), dim=-1)
    x_rot = x_rot * cos.to(x.dtype) + rotated * sin.to(x.dtype)
    return torch.cat((x_rot, x_pass), dim=-1) if x_pass.numel() else x_rot


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """Head slopes from the ALiBi paper: a geometric series starting at 2^(-8/n); for head counts
    that are not powers of two, the closest power's series plus every other slope of the next."""

    def series(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    closest = 2 ** math.floor(math.log2(num_heads))
    slopes = series(closest)
    if closest < num_heads:
        slopes += series(2 * closest)[0::2][: num_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


class ALiBi(nn.Module):
    """Linear bias -slope_h * |k - q| on the scores; no parameters."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.register_buffer("slopes", alibi_slopes(cfg.num_heads), persistent=False)

    def by_distance(self, rel: torch.Tensor) -> torch.Tensor:
        return -self.slopes.view(-1, *([1] * rel.dim())) * rel.abs().float()


class RelativeBias(nn.Module):
    """T5's learned bias per head over log-spaced distance buckets (shared by all layers)."""

    def __init__(self, cfg: ModelConfig, causal: bool | None = None):
        super().__init__()
        self.bidirectional = not (cfg.causal if causal is None else causal)
        self.num_buckets = cfg.relative_num_buckets
        self.max_distance = cfg.relative_max_distance
        self.embedding = nn.Embedding(cfg.relative_num_buckets, cfg.num_heads)

    def bucket(self, rel: torch.Tensor) -> torch.Tensor:
        """rel = k - q -> bucket index. Half the buckets are exact small distances, the rest grow
        logarithmically up to max_distance; bidirectional models keep separate halves per sign."""
        buckets = torch.zeros_like(rel)
        n = self.num_buckets
        if self.bidirectional:
            n //= 2
            buckets = buckets + (rel > 0).long() * n
            dist = rel.abs()
        else:
            dist = (-rel).clamp(min=0)
        exact = n // 2
        log_ratio = torch.log(dist.float().clamp(min=1) / exact) / math.log(self.max_distance / exact)
        large = exact + (log_ratio * (n - exact)).long()
        large = large.clamp(max=n - 1)
        return buckets + torch.where(dist < exact, dist, large)

    def by_distance(self, rel: torch.Tensor) -> torch.Tensor:
        bias = self.embedding(self.bucket(rel))  # (*rel.shape, H)
        return bias.movedim(-1, 0)


class Disentangled(nn.Module):
    """DeBERTa's relative positions (He et al., v2/v3 form): one embedding per bucketed distance,
    shared by the layers and normed once per forward; each layer projects them with its own query
    and key matrices and adds to a query-key score q_i k_j the content-to-position term
    q_i K_r[d(i, j)] and the position-to-content term k_j Q_r[d(i, j)], all three over sqrt(3 D)
    (``Attention.disentangled``). d(i, j) buckets i - j: exact below half the buckets,
    log-spaced up to ``relative_max_distance``, then clipped to the table."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.span = cfg.relative_num_buckets
        self.max_distance = cfg.relative_max_distance
        self.embedding = nn.Embedding(2 * self.span, cfg.d_model)
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def bucket(self, rel: torch.Tensor) -> torch.Tensor:
        """rel = i - j -> signed bucket: rel itself below half the buckets, else
        sign * (half + ceil(log(|rel| / half) / log((max_distance - 1) / half) * (half - 1)))."""
        half = self.span // 2
        dist = rel.abs()
        # as transformers computes it (float32, this order); DeBERTa's own code (float64) gives the same
        # buckets at v3's 256 / 512 and the sizes the tests use
        reach = torch.log(torch.tensor((self.max_distance - 1) / half, dtype=torch.float32, device=rel.device))
        far = torch.ceil(torch.log(dist.clamp(min=half) / half) / reach * (half - 1)).long() + half
        return torch.where(dist <= half, rel, far * rel.sign())

    def index(self, q_len: int, k_len: int, device=None) -> torch.Tensor:
        """(T, S) row of the distance table for query i and key j."""
        rel = torch.arange(q_len, device=device)[:, None] - torch.arange(k_len, device=device)[None, :]
        return (self.bucket(rel) + self.span).clamp(0, 2 * self.span - 1)

    def forward(self) -> torch.Tensor:
        """The normed distance table (2 * buckets, D), through the embedding's own call (a
        partitioned ZeRO-3 weight is gathered for module calls, not for reads of .weight)."""
        rows = torch.arange(2 * self.span, device=self.embedding.weight.device)
        return self.dropout(self.norm(self.embedding(rows)))


def build_position(cfg: ModelConfig) -> nn.Module | None:
    """The module a stack needs for its position scheme (None for learned, sinusoidal, none)."""
    schemes = {"rope": Rotary, "alibi": ALiBi, "relative": RelativeBias, "disentangled": Disentangled}
    return schemes.get(cfg.position, lambda _: None)(cfg)

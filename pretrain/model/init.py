"""Initial weights: Normal(0, init_std) matrices, zero biases, unit norms, drawn in module order
from the default generator, so that one seed gives the same weights whether the model is whole or
built partitioned across ranks (DeepSpeed ZeRO-3), and on the host without any rank holding a
partitioned matrix whole.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
from torch import nn

from .config import ModelConfig
from .flops import whole_shape


def _whole(params):  # parameters that are whole already: nothing to gather
    return contextlib.nullcontext()


DRAW_PIECE = 1 << 20
"""Elements per piece of a drawn-in-pieces matrix: a multiple of 16, the block torch's CPU normal_
transforms, so drawing the pieces in order consumes the generator as one draw of the whole."""


def draw_in_pieces(
    numel: int, draw: Callable[[torch.Tensor], torch.Tensor], keep: Callable[[int, torch.Tensor], None] | None = None
) -> None:
    """The values ``draw(torch.empty(numel))`` would take from the default CPU generator (draw: a
    normal_ or uniform_), made in pieces of DRAW_PIECE in order (a tail under 16 joins the piece
    before it, as normal_ treats a tensor under 16 elements differently); ``keep(offset, piece)``
    sees each piece. Without ``keep`` this only advances the generator as the whole draw would."""
    start = 0
    while start < numel:
        n = numel - start if numel - start < DRAW_PIECE + 16 else DRAW_PIECE
        piece = draw(torch.empty(n))
        if keep is not None:
            keep(start, piece)
        start += n


def normal_in_pieces(numel: int, std: float, keep: Callable[[int, torch.Tensor], None] | None = None) -> None:
    """draw_in_pieces for ``normal_(0, std)``."""
    draw_in_pieces(numel, lambda t: t.normal_(0.0, std), keep)


DRAWN_LATER = "_pretrain_drawn_later"
"""Set on a parameter whose values torch_defaults_drawn_not_written left unwritten."""


@contextlib.contextmanager
def torch_defaults_drawn_not_written():
    """Within it, torch's own initialisation of each new nn.Linear and nn.Embedding takes its random
    numbers from the generator as before but writes nothing into the weights.

    For a model built partitioned on the host (deepspeed.zero.Init): each module is created whole,
    then partitioned, and torch's default init would write every element of the whole matrix first,
    so the largest (the embedding, vocab x d_model) would be resident whole in every process. Its
    memory is never touched here (fresh pages read as zeros when DeepSpeed copies its slice out).
    init_weights draws every such matrix afterwards, after the same numbers were consumed, so the
    weights are those of a model built whole from the same seed. Such parameters are marked
    DRAWN_LATER: they hold no values until then."""

    def linear(self: nn.Linear) -> None:  # kaiming_uniform_ weight, uniform_ bias
        for p in (self.weight, self.bias):
            if p is not None:
                draw_in_pieces(p.numel(), torch.Tensor.uniform_)
                setattr(p, DRAWN_LATER, True)

    def embedding(self: nn.Embedding) -> None:  # normal_
        draw_in_pieces(self.weight.numel(), torch.Tensor.normal_)
        setattr(self.weight, DRAWN_LATER, True)

    saved = nn.Linear.reset_parameters, nn.Embedding.reset_parameters
    nn.Linear.reset_parameters, nn.Embedding.reset_parameters = linear, embedding
    try:
        yield
    finally:
        nn.Linear.reset_parameters, nn.Embedding.reset_parameters = saved


def normal_partition_(param: torch.Tensor, std: float) -> bool:
    """Draw a DeepSpeed ZeRO-3 partitioned parameter held on the host without gathering it: every
    rank makes the whole matrix's draws in pieces and keeps its own slice of the flattened matrix,
    DeepSpeed's layout (rank r holds elements r * size ... (r + 1) * size - 1). The same values as a
    gathered draw, without two whole copies of the largest matrix (the embedding) per process. False
    where that does not apply (not partitioned, not fp32 on the CPU): then the caller gathers."""
    part = getattr(param, "ds_tensor", None)
    if part is None or part.device.type != "cpu" or param.dtype != torch.float32:
        return False
    size = part.numel()
    first = size * torch.distributed.get_rank(group=param.ds_process_group)

    def keep(offset: int, piece: torch.Tensor) -> None:
        lo, hi = max(offset, first), min(offset + len(piece), first + size)
        if lo < hi:
            part.data[lo - first : hi - first] = piece[lo - offset : hi - offset]

    normal_in_pieces(param.ds_numel, std, keep)
    return True


def init_weights(model: nn.Module, blocks, cfg: ModelConfig, gather: Callable | None = None) -> None:
    """Normal(0, init_std) weights, zero biases, unit norms, in module order; with
    scaled_residual_init each block's output projections get std / sqrt(2 * len(blocks)).
    ``gather``: see Transformer.reset_parameters; a partitioned matrix on the host is drawn in
    place instead (normal_partition_)."""
    gather = gather or _whole
    std = cfg.init_std
    seen: set[int] = set()
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        params = [p for p in own if id(p) not in seen]  # a tied matrix: once
        draw = None
        if isinstance(module, (nn.Linear, nn.Embedding)):
            w = module.weight
            if id(w) in seen:  # already drawn (tied): a draw of its shape, thrown away, as before the tie
                normal_in_pieces(math.prod(whole_shape(w)), std)
            elif normal_partition_(w, std):
                params.remove(w)
            else:
                draw = w
        with gather(params):
            if draw is not None:
                nn.init.normal_(draw, 0.0, std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        seen.update(id(p) for p in own)
    if cfg.scaled_residual_init:
        for block in blocks:
            projections = [block.attn.proj, block.mlp.proj]
            if hasattr(block, "cross_attn"):
                projections.insert(1, block.cross_attn.proj)
            scaled = std / math.sqrt(2 * len(blocks))
            for proj in projections:
                if not normal_partition_(proj.weight, scaled):
                    with gather([proj.weight]):
                        nn.init.normal_(proj.weight, 0.0, scaled)

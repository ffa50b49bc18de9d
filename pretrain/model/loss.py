"""The output layer fused with its cross-entropy: the loss of a language model without ever holding
the (tokens, vocab) logits.

The usual path projects every position onto the vocabulary, upcasts the logits to fp32 and takes
the cross-entropy: at vocab 50K and 8K tokens that is 1.6 GB of logits plus as much again for their
gradient. Here the positions go through in chunks; each chunk's logits give its loss and, right
away, its gradients with respect to the hidden states and the weight (softmax minus one-hot), and
are dropped. What is kept for backward is the size of the hidden states and of the weight.
"""

from __future__ import annotations

import torch
from torch import nn

IGNORE = -100
"""Label of a position that carries no loss (torch's ignore_index)."""

CHUNK_ELEMENTS = 1 << 25
"""Logit elements per chunk (32M: 128 MB in fp32), whatever the vocabulary size."""


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, target, chunk: int):
        # hidden (N, D), weight (V, D), bias (V,) or None, target (N,) -> mean loss, number correct
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        want_grad = any(ctx.needs_input_grad[:3])
        with torch.autocast(device, enabled=False):  # the matmuls run in ``dtype``, the softmax in fp32
            loss, correct, grads = _chunks(hidden.to(dtype), weight.to(dtype), bias, target, chunk, want_grad)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.save_for_backward(*grads)
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    def backward(ctx, grad_loss, _grad_correct):
        # The gradients were computed in forward; scaling them in place leaves them changed, so a
        # second backward through this graph stops at autograd's check of the saved tensors.
        grads = [g.mul_(grad_loss.to(g.dtype)).to(dt) for g, dt in zip(ctx.saved_tensors, ctx.dtypes, strict=False)]
        return *grads, *[None] * (5 - len(grads))


def _chunks(hidden, weight, bias, target, chunk: int, want_grad: bool):
    """Loss, accuracy count and (when wanted) the gradients of the mean loss with respect to hidden,
    weight and bias, ``chunk`` positions at a time. One logits buffer serves every chunk, and each
    pass over it works in place: max (with the prediction), subtract, exp, sum, scale."""
    n = hidden.shape[0]
    rows = -(-n // -(-n // chunk)) if n else 1  # equal chunks of at most ``chunk`` rows
    logits = hidden.new_empty(rows, weight.shape[0])
    probs = logits if logits.dtype == torch.float32 else torch.empty_like(logits, dtype=torch.float32)
    loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
    correct = torch.zeros((), dtype=torch.long, device=hidden.device)
    grad_hidden = torch.empty_like(hidden) if want_grad else None
    grad_weight = grad_bias = None
    for start in range(0, n, rows):
        h, t = hidden[start : start + rows], target[start : start + rows]
        c = len(t)
        z = logits[:c]
        if bias is None:
            torch.mm(h, weight.t(), out=z)
        else:
            torch.addmm(bias.to(z.dtype), h, weight.t(), out=z)
        p = z if probs is logits else probs[:c].copy_(z)
        top = p.amax(dim=-1)
        target_logit = p.gather(1, t[:, None]).squeeze(1)
        correct += _right(p, t, target_logit == top)
        p.sub_(top[:, None])
        target_logit -= top  # minus the row's max, as every logit now
        total = p.exp_().sum(dim=-1)
        loss += (total.log() - target_logit).sum()
        if not want_grad:
            continue
        p.mul_((1.0 / (total * n))[:, None])  # softmax / n
        p[torch.arange(c, device=p.device), t] -= 1.0 / n  # d(mean loss)/d(logits)
        g = p if probs is logits else z.copy_(p)
        torch.mm(g, weight, out=grad_hidden[start : start + c])
        if grad_weight is None:
            grad_weight = (g.t() @ h).float()
            grad_bias = p.sum(dim=0) if bias is not None else None
        else:
            if grad_weight.dtype == g.dtype:
                grad_weight.addmm_(g.t(), h)
            else:
                grad_weight += g.t() @ h
            if bias is not None:
                grad_bias += p.sum(dim=0)
    if want_grad and grad_weight is None:  # no position to predict: no gradient
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        grad_bias = None if bias is None else torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device)
    grads = () if not want_grad else (grad_hidden, grad_weight) + (() if bias is None else (grad_bias,))
    return loss / max(n, 1), correct, grads


def _right(logits, target, on_top):
    """How many rows' argmax (the first largest logit, as torch.argmax picks among ties) is the
    target. ``on_top``: the rows whose target logit is the largest. On a GPU, argmax over every row
    costs little; on a CPU it is ~10x a plain max, so only the rows on top (the accuracy's share)
    are looked at again, which needs their count on the host (free there, a sync on a GPU)."""
    if logits.is_cuda:
        return (logits.argmax(dim=-1) == target).sum()
    rows = on_top.nonzero().squeeze(1)
    return (logits[rows].argmax(dim=-1) == target[rows]).sum()


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy of ``hidden @ weight.T + bias`` against ``target``, and the number of
    positions whose most likely token is the target. hidden (N, D), target (N,), every target a
    real label. Same values and gradients as ``F.cross_entropy`` on fp32 logits."""
    chunk = max(1, CHUNK_ELEMENTS // weight.shape[0])
    return _LinearCrossEntropy.apply(hidden, weight, bias, target, chunk)


def labelled(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The positions that carry a label: their hidden states (N, D), their labels (N,), and N (a
    tensor). hidden (..., D), labels (...). Picked by index_select, whose backward adds into one
    zero tensor; a boolean mask's backward is an accumulating index_put, ~4x slower on CPU."""
    keep = labels != IGNORE
    rows = keep.reshape(-1).nonzero().squeeze(1)
    flat = hidden.reshape(-1, hidden.shape[-1])
    return flat.index_select(0, rows), labels.reshape(-1).index_select(0, rows), keep.sum()


class OutputLayer(nn.Linear):
    """The vocabulary projection. ``layer(x)`` gives logits; ``layer(x, target)`` gives the loss
    and the number of correct predictions without materialising the logits. Being a module call
    either way, DeepSpeed ZeRO-3 gathers the (possibly tied) weight for it."""

    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None):
        if target is None:
            return super().forward(x)
        return linear_cross_entropy(x, self.weight, self.bias, target)

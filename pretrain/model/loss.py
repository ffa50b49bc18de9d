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
        n = hidden.shape[0]
        want_grad = any(ctx.needs_input_grad[:3])
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if want_grad else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_grad else None
        grad_bias = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if want_grad else None
        for start in range(0, n, chunk):
            h, t = hidden[start : start + chunk], target[start : start + chunk]
            logits = h @ weight.t()
            if bias is not None:
                logits = logits + bias
            logits = logits.float()  # (C, V)
            lse = logits.logsumexp(dim=-1)
            loss += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            correct += (logits.argmax(dim=-1) == t).sum()
            if want_grad:
                g = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                g[torch.arange(len(t), device=g.device), t] -= 1.0
                g = g.div_(n).to(h.dtype)  # d(mean loss)/d(logits)
                grad_hidden[start : start + chunk] = g @ weight.to(h.dtype)
                grad_weight += (g.t() @ h).float()
                grad_bias += g.float().sum(0)
        ctx.has_bias = bias is not None
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.mark_non_differentiable(correct)
        return loss / max(n, 1), correct

    @staticmethod
    def backward(ctx, grad_loss, _grad_correct):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        w_dtype, b_dtype = ctx.dtypes
        gh = grad_hidden * grad_loss.to(grad_hidden.dtype)
        gw = (grad_weight * grad_loss).to(w_dtype)
        gb = (grad_bias * grad_loss).to(b_dtype) if ctx.has_bias else None
        return gh, gw, gb, None, None


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy of ``hidden @ weight.T + bias`` against ``target``, and the number of
    positions whose most likely token is the target. hidden (N, D), target (N,), every target a
    real label. Same values and gradients as ``F.cross_entropy`` on fp32 logits."""
    chunk = max(1, CHUNK_ELEMENTS // weight.shape[0])
    return _LinearCrossEntropy.apply(hidden, weight, bias, target, chunk)


class OutputLayer(nn.Linear):
    """The vocabulary projection. ``layer(x)`` gives logits; ``layer(x, target)`` gives the loss
    and the number of correct predictions without materialising the logits. Being a module call
    either way, DeepSpeed ZeRO-3 gathers the (possibly tied) weight for it."""

    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None):
        if target is None:
            return super().forward(x)
        return linear_cross_entropy(x, self.weight, self.bias, target)

"""The output layer fused with its cross-entropy gives the loss, the accuracy count and the
gradients of the plain path (logits, then F.cross_entropy in fp32), while keeping far less memory
for the backward pass."""

import pytest
import torch
import torch.nn.functional as F

import pretrain.model.loss as fused
from pretrain.bench import saved_bytes
from pretrain.model import ModelConfig, Transformer
from pretrain.model.loss import IGNORE, linear_cross_entropy


def _reference(h, w, b, t):
    logits = F.linear(h, w, b)
    return F.cross_entropy(logits.float(), t), (logits.argmax(-1) == t).sum()


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk_elements", [1 << 25, 1000])  # one chunk, and many uneven ones
def test_fused_loss_matches_cross_entropy(bias, chunk_elements, monkeypatch):
    monkeypatch.setattr(fused, "CHUNK_ELEMENTS", chunk_elements)
    h = torch.randn(300, 32, requires_grad=True)
    w = torch.randn(97, 32, requires_grad=True)
    b = torch.randn(97, requires_grad=True) if bias else None
    t = torch.randint(0, 97, (300,))
    params = [x for x in (h, w, b) if x is not None]
    loss, correct = linear_cross_entropy(h, w, b, t)
    grads = torch.autograd.grad(loss * 3.0, params)  # a scaled loss scales every gradient
    ref, ref_correct = _reference(h, w, b, t)
    ref_grads = torch.autograd.grad(ref * 3.0, params)
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
    assert int(correct) == int(ref_correct) > 0
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["decoder", "encoder"])
def test_model_loss_equals_logits_loss(arch):
    """Transformer(ids, labels=...) is the cross-entropy of its own logits over the labelled positions."""
    cfg = ModelConfig(arch=arch, vocab_size=101, d_model=32, num_layers=2, num_heads=4, max_seq_len=16)
    model = Transformer(cfg)
    ids = torch.randint(0, 101, (3, 16))
    labels = torch.where(torch.rand(3, 16) < 0.5, torch.randint(0, 101, (3, 16)), torch.full((3, 16), IGNORE))
    loss, correct, count = model(ids, labels=labels)
    logits = model(ids)
    sel = labels != IGNORE
    torch.testing.assert_close(loss, F.cross_entropy(logits[sel].float(), labels[sel]), atol=1e-5, rtol=1e-5)
    assert int(count) == int(sel.sum())
    assert int(correct) == int((logits[sel].argmax(-1) == labels[sel]).sum())


def test_the_accuracy_count_breaks_ties_as_argmax_does():
    """Among tied largest logits the first token is the prediction (torch.argmax's rule), so a
    collapsed model (every logit equal) is right only where the target is token 0, not everywhere."""
    w = torch.randn(6, 4)
    w[4] = w[2]  # tokens 2 and 4 always tie
    h = w[2].repeat(8, 1) * 10  # 2 and 4 are on top in every row
    t = torch.tensor([2, 4, 2, 4, 4, 0, 1, 2])
    _, correct = linear_cross_entropy(h, w, None, t)
    assert int(correct) == int((F.linear(h, w).argmax(-1) == t).sum()) == 3
    _, correct = linear_cross_entropy(h, torch.zeros(6, 4), None, t)
    assert int(correct) == 1  # the one target 0


def test_fused_loss_keeps_a_third_of_the_memory_at_vocab_50k():
    """At vocab 50K and 4 x 1024 tokens the plain path keeps the (N, V) fp32 logits for backward;
    the fused one keeps gradients the size of the hidden states and of the weight."""
    h = torch.randn(4096, 768, requires_grad=True)
    w = (torch.randn(50304, 768) * 0.02).requires_grad_()
    t = torch.randint(0, 50304, (4096,))
    plain = saved_bytes(lambda: _reference(h, w, None, t)[0], exclude=(h, w))
    ours = saved_bytes(lambda: linear_cross_entropy(h, w, None, t)[0], exclude=(h, w))
    assert plain >= 4096 * 50304 * 4  # the fp32 logits
    assert ours <= plain / 3, (ours, plain)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("weights", ["fp32 under autocast", "bf16"])
def test_fused_loss_in_bf16(device, weights):
    """bf16 under autocast (fp32 weights, the benchmark's mixed precision) and bf16 weights (DeepSpeed's
    bf16): the matmuls in bf16, the softmax in fp32, gradients in each input's own dtype."""
    torch.manual_seed(0)
    dtype = torch.bfloat16 if weights == "bf16" else torch.float32
    h = torch.randn(700, 64, device=device, dtype=dtype, requires_grad=True)
    w = (torch.randn(3000, 64, device=device) * 0.02).to(dtype).requires_grad_()
    t = torch.randint(0, 3000, (700,), device=device)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=weights != "bf16"):
        loss, _ = linear_cross_entropy(h, w, None, t)
        ref, _ = _reference(h, w, None, t)
    g = torch.autograd.grad(loss, (h, w))
    r = torch.autograd.grad(ref, (h, w))
    torch.testing.assert_close(loss, ref, atol=1e-2, rtol=1e-2)
    for a, b in zip(g, r, strict=True):
        assert a.dtype == b.dtype == dtype
        torch.testing.assert_close(a.float(), b.float(), atol=1e-4, rtol=5e-2)


def test_fused_loss_backward_twice_is_refused_or_right():
    """The gradients are made in forward and scaled in backward (in place, to spare a copy of the
    weight's gradient); a second backward through the same graph must then stop at autograd's
    check of the saved tensors, or give the right gradients, never scale them twice."""
    h = torch.randn(10, 8, requires_grad=True)
    w = torch.randn(20, 8, requires_grad=True)
    t = torch.randint(0, 20, (10,))
    loss, _ = linear_cross_entropy(h, w, None, t)
    (2 * loss).backward(retain_graph=True)
    first = w.grad.clone()
    try:
        (3 * loss).backward()
    except RuntimeError as e:
        assert "modified by an inplace operation" in str(e)
    else:
        torch.testing.assert_close(w.grad, first * 2.5)


def test_fused_loss_with_nothing_to_predict():
    """A batch with no labelled position (a masked LM batch where nothing was masked): zero
    gradients, a zero loss and no error."""
    h = torch.randn(0, 8, requires_grad=True)
    w = torch.randn(20, 8, requires_grad=True)
    b = torch.randn(20, requires_grad=True)
    loss, correct = linear_cross_entropy(h, w, b, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert float(loss.detach()) == 0 and int(correct) == 0
    assert w.grad is not None and not w.grad.any() and not b.grad.any()

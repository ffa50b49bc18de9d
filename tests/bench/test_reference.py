"""The step benchmark's nanoGPT-shaped baseline is our GPT-2-shaped model written another way: with
our weights it gives the same loss and the same gradients, so the benchmark times the same function."""

import pytest
import torch

from pretrain.bench.reference import nanogpt_twin, unsupported
from pretrain.model import ModelConfig, Transformer
from pretrain.model.loss import IGNORE


@pytest.mark.parametrize("mlp,bias,tied", [("gelu_tanh", True, True), ("gelu", False, False)])
def test_nanogpt_twin_computes_our_loss_and_gradients(mlp, bias, tied):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=97, d_model=32, num_layers=2, num_heads=4, max_seq_len=16, mlp=mlp, bias=bias,
                      tie_embeddings=tied)  # fmt: skip
    ours = Transformer(cfg)
    twin = nanogpt_twin(ours)
    ids = torch.randint(0, 97, (3, 16))
    labels = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], IGNORE)], dim=1)
    loss = ours(ids, labels=labels)[0]
    twin_loss = twin(ids, labels)
    torch.testing.assert_close(loss, twin_loss, atol=1e-5, rtol=1e-5)
    loss.backward()
    twin_loss.backward()
    ours_grads = dict(ours.named_parameters())
    torch.testing.assert_close(twin.wte.weight.grad, ours_grads["embed.tokens.weight"].grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(twin.h[1].c_fc.weight.grad, ours_grads["layers.1.mlp.fc.weight"].grad,
                               atol=1e-5, rtol=1e-4)  # fmt: skip


def test_shapes_nanogpt_has_not_are_named():
    assert unsupported(ModelConfig(d_model=32, num_heads=4)) is None
    assert "rope" in unsupported(ModelConfig(d_model=32, num_heads=4, position="rope"))
    assert "swiglu" in unsupported(ModelConfig(d_model=32, num_heads=4, mlp="swiglu"))
    assert "kv_heads=1" in unsupported(ModelConfig(d_model=32, num_heads=4, num_kv_heads=1))
    with pytest.raises(ValueError, match="encoder"):
        nanogpt_twin(Transformer(ModelConfig(arch="encoder", d_model=32, num_heads=4, num_layers=1, vocab_size=50)))

import math

import pytest
import torch

from pretrain.model import ModelConfig, Transformer
from pretrain.model.inspect import attention_weights, head_statistics, position_tables, reference_kernel


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=61, d_model=32, num_layers=2, num_heads=4, max_seq_len=32, attention="sdpa")
    return ModelConfig(**{**base, **kw})


def layer0_by_hand(model: Transformer, ids: torch.Tensor) -> torch.Tensor:
    """Layer 0's attention of a pre-norm decoder with learned positions, from its parameters alone:
    softmax(q k^T / sqrt(d) + causal mask), to check the weights we draw against."""
    cfg, block = model.cfg, model.layers[0]
    T = ids.shape[1]
    x = model.embed.tokens(ids) + model.embed.positions(torch.arange(T))
    q, k, _ = block.attn.qkv(block.attn_norm(x)).split(cfg.d_model, dim=-1)
    q = q.view(1, T, cfg.num_heads, cfg.head_dim).transpose(1, 2)
    k = k.view(1, T, cfg.num_heads, cfg.head_dim).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(cfg.head_dim)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(-1)


@pytest.mark.parametrize("arch", ["decoder", "encoder"])
def test_weights_are_attention_rows_with_padding_and_causality_respected(arch):
    torch.manual_seed(0)
    model = Transformer(tiny(arch=arch, position="learned")).train()
    ids = torch.randint(5, 61, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0  # the second text is 6 tokens, padded on the right
    weights = attention_weights(model, ids, mask)
    assert model.cfg.attention == "sdpa" and model.training  # kernel and mode put back
    assert len(weights) == 2 and weights[0].shape == (2, 4, 9, 9)
    for w in weights:
        torch.testing.assert_close(w[0].sum(-1), torch.ones(4, 9))
        torch.testing.assert_close(w[1, :, :6].sum(-1), torch.ones(4, 6))
        assert w[1, :, :, 6:].abs().max() == 0  # nobody attends to padding
        if arch == "decoder":
            assert w[0].triu(1).abs().max() == 0  # nor to later tokens
        else:
            assert w[0].triu(1).abs().max() > 0.01
    alone = attention_weights(model, ids[1:, :6])
    for w, a in zip(weights, alone, strict=True):
        torch.testing.assert_close(w[1, :, :6, :6], a[0], atol=1e-6, rtol=1e-5)  # padding changes nothing


def test_weights_equal_the_attention_computed_by_hand():
    torch.manual_seed(1)
    model = Transformer(tiny(position="learned"))
    ids = torch.randint(0, 61, (1, 12))
    with torch.no_grad():
        expected = layer0_by_hand(model, ids)
    torch.testing.assert_close(attention_weights(model, ids)[0], expected, atol=1e-6, rtol=1e-5)


def test_reference_pass_computes_the_same_model():
    torch.manual_seed(2)
    model = Transformer(tiny(position="rope", num_kv_heads=2)).eval()
    ids = torch.randint(0, 61, (2, 10))
    with torch.no_grad():
        fast = model.hidden_states(ids)
        with reference_kernel(model):
            reference = model.hidden_states(ids)
    torch.testing.assert_close(reference, fast, atol=1e-5, rtol=1e-5)


def test_statistics_of_known_patterns():
    T = 6
    uniform = torch.tril(torch.ones(T, T))
    uniform = uniform / uniform.sum(-1, keepdim=True)
    previous = torch.zeros(T, T)
    previous[0, 0] = 1
    previous[torch.arange(1, T), torch.arange(T - 1)] = 1  # each token looks one back
    w = torch.stack([uniform, previous])[None]  # (B=1, H=2, T, T)
    stats = head_statistics([w])
    expected_entropy = sum(math.log(i + 1) for i in range(T)) / T
    torch.testing.assert_close(stats["entropy"], torch.tensor([[expected_entropy, 0.0]]))
    expected_distance = sum(i / 2 for i in range(T)) / T  # mean of 0..i is i/2
    torch.testing.assert_close(stats["distance"], torch.tensor([[expected_distance, (T - 1) / T]]))
    masked = head_statistics([w], torch.tensor([[1, 1, 1, 0, 0, 0]]))  # only the first 3 queries count
    torch.testing.assert_close(masked["entropy"][0, 0], torch.tensor((math.log(2) + math.log(3)) / 3))


def test_training_changes_what_heads_attend_to():
    """A one-layer decoder trained to repeat the previous token learns a head that looks one back: its
    entropy falls far below any head of the same model untrained."""
    torch.manual_seed(3)
    cfg = tiny(num_layers=1, num_heads=2, position="learned", vocab_size=16, max_seq_len=16, dropout=0.0)
    model = Transformer(cfg)
    ids = torch.randint(0, 16, (8, 16))
    before = head_statistics(attention_weights(model, ids))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        batch = torch.randint(0, 16, (32, 16))
        labels = torch.cat([torch.full((32, 1), -100), batch[:, :-1]], dim=1)  # predict the token before
        loss, _, _ = model(batch, labels=labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5
    after = head_statistics(attention_weights(model, ids))
    assert after["entropy"].min() < 0.5 * before["entropy"].min()
    assert abs(after["distance"].flatten()[after["entropy"].argmin()] - 1.0) < 0.2  # it looks one back


@pytest.mark.parametrize("position", ["sinusoidal", "learned", "rope", "alibi", "relative", "disentangled", "none"])
def test_position_tables(position):
    torch.manual_seed(4)
    encoder = position in ("relative", "disentangled")
    model = Transformer(tiny(position=position, arch="encoder" if encoder else "decoder", relative_num_buckets=8,
                             relative_max_distance=12))  # fmt: skip
    table = position_tables(model, 20)
    if position == "none":
        assert table is None
        return
    what, values, titles = table
    assert values.shape[1:] == (20, 20) and len(titles) == values.shape[0]
    if position in ("sinusoidal", "learned", "rope"):
        assert values.shape[0] == 1
        torch.testing.assert_close(values[0].diagonal(), torch.ones(20))  # a position is itself
        assert values[0].min() < 0.9
        if position != "learned":  # a function of i - j: constant along each diagonal
            torch.testing.assert_close(values[0].diagonal(3)[:5], values[0].diagonal(3)[5:10])
    if position == "alibi":
        assert values.shape[0] == 4
        torch.testing.assert_close(values[0, 5, 2], torch.tensor(-3 * 2 ** (-2.0)))  # slope 2^(-8/4) x 3 back
    if position == "disentangled":  # distance 0 is itself; beyond 12 every distance has the last row
        torch.testing.assert_close(values[0].diagonal(), torch.ones(20))
        torch.testing.assert_close(values[0, 19, 0], values[0, 15, 0])
        assert values[0, 19, 0] != values[0, 5, 0] and values[0, 0, 19] != values[0, 19, 0]  # and a sign
    if position == "relative":
        bucket = model.position.bucket(torch.tensor(-3))  # key 4 is 3 before query 7
        torch.testing.assert_close(values[:, 7, 4], model.position.embedding.weight[bucket])

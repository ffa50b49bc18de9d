"""Performer and Linformer: the estimator Performer computes in chunks is the one its formula gives,
it approaches softmax attention as features grow, caches and padding change nothing they should
not; Linformer ignores padding; what cannot be expressed is refused by name."""

import pytest
import torch
import torch.nn.functional as F

from pretrain.model import ModelConfig, Transformer, build_model
from pretrain.model.linear_attention import CHUNK, _phi, orthogonal_features, performer


def qkv(B=2, H=4, T=150, d=16, scale=0.5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, d, generator=gen) * scale for _ in range(3)]


def test_causal_performer_in_chunks_is_its_estimator_written_out():
    """T spans three chunks: each query reads exactly the keys at or before it."""
    q, k, v = qkv()
    w = orthogonal_features(32, 16, seed=5, device="cpu", dtype=torch.float32)
    scale = 16**-0.25
    qf, kf = _phi(q * scale, w, per_row=True), _phi(k * scale, w, per_row=False)
    a = (qf @ kf.transpose(-2, -1)).tril()  # the estimated attention, causal, unnormalised
    want = (a @ v) / a.sum(-1, keepdim=True)
    assert q.shape[2] > 2 * CHUNK
    torch.testing.assert_close(performer(q, k, v, True, 0, None, w), want, atol=1e-5, rtol=1e-4)
    both = (qf @ kf.transpose(-2, -1)) @ v / (qf @ kf.transpose(-2, -1)).sum(-1, keepdim=True)
    torch.testing.assert_close(performer(q, k, v, False, 0, None, w), both, atol=1e-5, rtol=1e-4)
    # queries at the end of a cache see the keys before them too
    tail = performer(q[:, :, -7:], k, v, True, q.shape[2] - 7, None, w)
    torch.testing.assert_close(tail, want[:, :, -7:], atol=1e-5, rtol=1e-4)


def test_performer_weights_are_the_attention_it_applies():
    """What inspect draws for a Performer: the estimated attention, which times V is its output (at
    the end of a cache, with a padded key)."""
    from pretrain.model.linear_attention import performer_weights

    q, k, v = qkv(T=20)
    w = orthogonal_features(32, 16, seed=2, device="cpu", dtype=torch.float32)
    padding = torch.ones(2, 20, dtype=torch.bool)
    padding[1, 3] = False
    for causal in (True, False):
        a = performer_weights(q[:, :, -6:], k, causal, 14, padding, w)
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 4, 6))
        assert (a[1, :, :, 3] == 0).all() and (not causal or (a[:, :, 0, 15:] == 0).all())
        torch.testing.assert_close(a @ v, performer(q[:, :, -6:], k, v, causal, 14, padding, w), atol=1e-5, rtol=1e-4)


def test_performer_approaches_softmax_attention_as_features_grow():
    q, k, v = qkv(T=40, scale=0.4)
    exact = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    errors = []
    for m in (16, 256, 4096):
        w = orthogonal_features(m, 16, seed=1, device="cpu", dtype=torch.float32)
        errors.append(float((performer(q, k, v, True, 0, None, w) - exact).abs().mean()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.05 * float(exact.abs().mean()), errors  # within 5%


def test_features_are_orthogonal_in_blocks_and_reproducible():
    w = orthogonal_features(40, 16, seed=3, device="cpu", dtype=torch.float32)
    block = w[:16] / w[:16].norm(dim=1, keepdim=True)
    torch.testing.assert_close(block @ block.T, torch.eye(16), atol=1e-5, rtol=0)
    assert torch.equal(w, orthogonal_features(40, 16, seed=3, device="cpu", dtype=torch.float32))
    assert not torch.equal(w, orthogonal_features(40, 16, seed=4, device="cpu", dtype=torch.float32))


def tiny(**kw) -> ModelConfig:
    return ModelConfig(**{**dict(vocab_size=97, d_model=32, num_layers=2, num_heads=4, max_seq_len=32), **kw})


@pytest.mark.parametrize("kind, arch", [("performer", "decoder"), ("performer", "encoder"), ("linformer", "encoder")])
def test_a_padded_row_gives_what_it_gives_alone_and_trains(kind, arch):
    torch.manual_seed(0)
    model = Transformer(tiny(arch=arch, linear_attention=kind, linear_attention_dim=16, position="rope"))
    ids = torch.randint(3, 97, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    with torch.no_grad():
        batch = model(ids, attention_mask=mask)
        alone = model(ids[1:, :8])
    torch.testing.assert_close(batch[1, :8], alone[0], atol=1e-5, rtol=0)
    loss = model(ids).float().logsumexp(-1).mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    if kind == "linformer":
        assert model.layers[0].attn.sequence.weight.grad.abs().sum() > 0  # the projections learn


def test_performer_decodes_the_same_with_and_without_the_cache():
    from finetune.generate import Sampling, generate

    class Tok:
        pad_token_id, eos_token_id = 0, None

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [1 + ord(c) % 90 for c in text]}

        def batch_decode(self, ids, skip_special_tokens=True):
            return [" ".join(map(str, row.tolist())) for row in ids]

    for arch in ("decoder", "encoder-decoder"):
        torch.manual_seed(0)
        extra = dict(num_decoder_layers=2, norm="rmsnorm", bias=False) if arch != "decoder" else {}
        model = build_model(tiny(arch=arch, linear_attention="performer", position="rope", **extra)).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(4.0)  # a continuation that depends on what came before
        prompts, s = ["def f(x):", "import os", "a"], Sampling(max_new_tokens=8, temperature=0.0)
        cached = generate(model, Tok(), prompts, s)
        assert cached == generate(model, Tok(), prompts, s, use_cache=False), arch
        assert len(set(cached)) > 1


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(linear_attention="linformer"), "linformer' mixes positions along the sequence, so it cannot be causal;"
         " arch='decoder' is a causal stack"),
        (dict(linear_attention="performer", position="alibi"), "forms no score matrix to add the alibi bias to"),
        (dict(linear_attention="performer", sliding_window=4), "has no sliding window"),
        (dict(linear_attention="performer", linear_attention_dim=0), "linear_attention_dim=0: must be a positive"),
        (dict(linear_attention_redraw=100), "linear_attention_redraw=100: redraws performer's random features"),
        (dict(linear_attention="linformer", arch="encoder", linear_attention_redraw=100),
         "only for performer's random features"),
    ],
)
def test_what_linear_attention_cannot_do_is_refused_by_name(kw, message):
    with pytest.raises(ValueError, match=message):
        tiny(**kw).validate()


@pytest.mark.parametrize("arch", ["decoder", "encoder-decoder"])
def test_performer_redraws_its_features_every_n_steps_and_keeps_the_draw_in_its_state(arch):
    """linear_attention_redraw=3: steps 1-3 use the first draw (the features of a model that never
    redraws), 4-6 the next, and so on; the draw is in the state dict, so a saved model loads with
    the features it was last trained with."""
    from pretrain.model import redrawing_layers

    extra = dict(num_decoder_layers=2, norm="rmsnorm", bias=False) if arch != "decoder" else {}
    cfg = tiny(arch=arch, linear_attention="performer", linear_attention_dim=16, linear_attention_redraw=3, **extra)
    model = build_model(cfg).eval()
    fixed = build_model(tiny(arch=arch, linear_attention="performer", linear_attention_dim=16, **extra)).eval()
    fixed.load_state_dict({k: v for k, v in model.state_dict().items() if not k.endswith(".draw")})
    ids = torch.randint(0, 97, (2, 20))
    run = (lambda m: m(ids, ids)) if arch != "decoder" else (lambda m: m(ids))
    outs = []
    with torch.no_grad():
        for step in range(1, 8):
            for layer in redrawing_layers(model):
                layer.redraw(step)
            outs.append(run(model))
        torch.testing.assert_close(outs[0], run(fixed), atol=0, rtol=0)
    assert all(torch.equal(outs[i], outs[0]) for i in (1, 2)) and torch.equal(outs[3], outs[5])
    assert not torch.equal(outs[3], outs[0]) and not torch.equal(outs[6], outs[3])
    draws = {k: int(v) for k, v in model.state_dict().items() if k.endswith(".draw")}
    self_attention = cfg.num_layers + (cfg.decoder_layers if arch != "decoder" else 0)  # cross-attention is exact
    assert len(draws) == self_attention and set(draws.values()) == {2}
    again = build_model(cfg).eval()
    again.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(run(again), outs[-1], atol=0, rtol=0)


def test_linformer_is_an_encoder_decoders_encoder_only():
    """linear_attention=linformer on an encoder-decoder: the encoder's self-attention projects the
    sequence (a padded source gives what it gives alone, and the projections learn); the decoder's
    stays exact and causal, so cached decoding equals recompute."""
    torch.manual_seed(0)
    cfg = tiny(arch="encoder-decoder", linear_attention="linformer", linear_attention_dim=16, position="rope",
               norm="rmsnorm", bias=False)  # fmt: skip
    model = build_model(cfg)
    assert [b.attn.linear for b in (*model.encoder, *model.decoder)] == ["linformer"] * 2 + [None] * 2
    src, tgt = torch.randint(3, 97, (2, 12)), torch.randint(3, 97, (2, 6))
    mask = torch.ones_like(src)
    mask[1, 8:] = 0
    with torch.no_grad():
        batch = model.eval()(src, tgt, mask)
        alone = model(src[1:, :8], tgt[1:])
        torch.testing.assert_close(batch[1], alone[0], atol=1e-5, rtol=0)
        memory = model.encode(src, mask)
        cache, steps = model.new_cache(2, 6), []
        for t in range(6):
            steps.append(model.head(model.decode(tgt[:, t : t + 1], memory, mask, cache=cache)))
        torch.testing.assert_close(torch.cat(steps, 1), batch, atol=1e-5, rtol=0)
    model.train()(src, tgt, mask).float().logsumexp(-1).mean().backward()
    assert model.encoder[0].attn.sequence.weight.grad.abs().sum() > 0

"""Every attention kernel agrees with the eager reference (fp32, 1e-5) for every position scheme,
causal and bidirectional, padded and grouped-query, forward and backward; combinations a kernel
cannot express are refused clearly."""

import pytest
import torch

from pretrain.config import ConfigError, load_config
from pretrain.model import ModelConfig, Transformer
from pretrain.model.config import KERNELS_WITH_BIAS

KERNELS = ["sdpa", "flash", "flex", "flash_attn"]
POSITIONS = ["learned", "sinusoidal", "rope", "alibi", "relative"]
CASES = {
    "causal": dict(arch="decoder"),
    "bidirectional": dict(arch="encoder"),
    "padded": dict(arch="decoder", padded=True),
    "padded-bidirectional": dict(arch="encoder", padded=True),
    "gqa": dict(arch="decoder", num_kv_heads=2),
    "mqa-padded": dict(arch="encoder", num_kv_heads=1, padded=True),
}
ATOL = 1e-5
CUDA = torch.cuda.is_available()


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=97, d_model=32, num_layers=2, num_heads=4, max_seq_len=32, attention="eager")
    return ModelConfig(**{**base, **kw})


def batch(padded: bool, B=3, T=11, device="cpu"):
    ids = torch.randint(0, 97, (B, T), device=device)
    if not padded:
        return ids, None
    mask = torch.ones(B, T, dtype=torch.long, device=device)
    mask[1, 7:] = 0  # right padding
    mask[2, 9:] = 0
    return ids, mask


def valid(mask, like):
    return torch.ones(like.shape[:2], dtype=torch.bool, device=like.device) if mask is None else mask.bool()


def run(model, ids, mask, grad: bool):
    model.zero_grad()
    logits = model(ids, attention_mask=mask)
    if grad:
        keep = valid(mask, logits)
        (logits[keep].float().square().mean()).backward()
        return logits, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits, {}


def supported(kernel, position, cfg_kw):
    return kernel not in {"flash"} or position not in KERNELS_WITH_BIAS


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_matches_eager(kernel, position, case):
    kw = dict(CASES[case])
    padded = kw.pop("padded", False)
    if position in KERNELS_WITH_BIAS and kernel not in KERNELS_WITH_BIAS[position]:
        with pytest.raises(ValueError, match=f"cannot add the {position} position bias"):
            tiny(position=position, attention=kernel, **kw).validate()
        return
    if kernel == "flash_attn" and not CUDA:
        pytest.skip("flash-attn kernels need a CUDA GPU (covered by test_gpu_kernels_match_eager)")
    ref_model = Transformer(tiny(position=position, **kw))
    ids, mask = batch(padded)
    if kernel in ("flash", "flash_attn") and padded:
        ref_model.cfg.attention = kernel
        with pytest.raises(ValueError, match="padding"):
            ref_model(ids, attention_mask=mask)
        return
    grad = kernel != "flex"  # FlexAttention has no backward on CPU (torch 2.13)
    with torch.set_grad_enabled(grad):
        ref, ref_grads = run(ref_model, ids, mask, grad)
        ref_model.cfg.attention = kernel
        out, grads = run(ref_model, ids, mask, grad)
    keep = valid(mask, ref)
    torch.testing.assert_close(out[keep], ref[keep], atol=ATOL, rtol=0)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=ATOL, rtol=0, msg=name)


@pytest.mark.parametrize("kernel", ["sdpa", "flex"])
@pytest.mark.parametrize("position", ["rope", "alibi"])
def test_left_padding_leaves_no_nan_and_matches_eager(kernel, position):
    """Left-padded causal rows see no key at all: every kernel returns zeros there, never NaN."""
    model = Transformer(tiny(position=position))
    ids = torch.randint(0, 97, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :4] = 0
    with torch.no_grad():
        ref = model(ids, attention_mask=mask)
        model.cfg.attention = kernel
        out = model(ids, attention_mask=mask)
    assert torch.isfinite(out).all() and torch.isfinite(ref).all()
    torch.testing.assert_close(out[mask.bool()], ref[mask.bool()], atol=ATOL, rtol=0)


@pytest.mark.parametrize("kernel", ["sdpa", "flex"])
@pytest.mark.parametrize("arch", ["decoder", "encoder"])
def test_sliding_window_matches_eager_and_limits_reach(kernel, arch):
    model = Transformer(tiny(arch=arch, position="rope", sliding_window=3, num_layers=1))
    ids = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        ref = model(ids)
        changed = ids.clone()
        changed[:, 0] = (ids[:, 0] + 1) % 97  # token 0 is out of reach of positions >= 3
        ref_changed = model(changed)
        model.cfg.attention = kernel
        out = model(ids)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(ref_changed[:, 3:], ref[:, 3:])
    assert not torch.allclose(ref_changed[:, :3], ref[:, :3])


@pytest.mark.parametrize("kernel", ["sdpa", "flex"])
@pytest.mark.parametrize("arch", ["decoder", "encoder"])
def test_global_tokens_see_and_are_seen_past_the_window(kernel, arch):
    """Sparse attention (Longformer, BigBird; attention sinks in a causal stack): the first real
    token of each row is seen by every query and (bidirectional) sees every key; the rest keep the
    window. Left padding is not counted, and every kernel that takes it agrees with eager."""
    model = Transformer(tiny(arch=arch, position="rope", sliding_window=3, global_tokens=1, num_layers=1)).eval()
    ids = torch.randint(0, 97, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :2] = 0  # the second row starts at index 2 (left padding)
    with torch.no_grad():
        ref, weights = model(ids, attention_mask=mask, return_attention=True)
        w = weights[0]  # (B, H, T, S)
        assert (w[0, :, :, 0] > 0).all() and (w[1, :, 2:, 2] > 0).all()  # the global key, seen from everywhere
        assert (w[0, :, 5:, 1] == 0).all() and (w[1, :, 7:, 3] == 0).all()  # the next token: the window only
        if arch == "encoder":
            assert (w[0, :, 0, :] > 0).all() and (w[1, :, 2, 2:] > 0).all()  # the global query sees every key
        else:
            assert (w[0].triu(1) == 0).all()  # and nothing later
        model.cfg.attention = kernel
        out = model(ids, attention_mask=mask)
    keep = mask.bool()
    torch.testing.assert_close(out[keep], ref[keep], atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="global_tokens=2: .* set sliding_window too"):
        tiny(global_tokens=2).validate()
    with pytest.raises(ValueError, match="attention='flash_attn' has no global tokens"):
        tiny(global_tokens=2, sliding_window=4, attention="flash_attn").validate()


@pytest.mark.parametrize("kernel", ["sdpa", "flex"])
def test_each_packed_document_has_its_own_global_tokens(kernel):
    model = Transformer(tiny(position="rope", num_layers=1, sliding_window=2, global_tokens=1)).eval()
    ids = torch.randint(0, 97, (1, 10))
    docs = torch.tensor([[0] * 4 + [1] * 6])
    with torch.no_grad():
        ref, weights = model(ids, document_ids=docs, return_attention=True)
        w = weights[0][0]  # (H, T, S)
        assert (w[:, 4:, 4] > 0).all() and (w[:, 1:4, 0] > 0).all()  # each document's first token
        assert (w[:, 4:, :4] == 0).all() and (w[:, 7:, 5] == 0).all()  # no other document; the window
        model.cfg.attention = kernel
        torch.testing.assert_close(model(ids, document_ids=docs), ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("kernel", ["sdpa", "flex"])
def test_document_mask_keeps_attention_within_documents(kernel):
    model = Transformer(tiny(position="rope", num_layers=1, attention=kernel))
    ids = torch.randint(0, 97, (1, 10))
    docs = torch.tensor([[0] * 4 + [1] * 6])
    other = ids.clone()
    other[0, :4] = (ids[0, :4] + 5) % 97  # change only the first document
    with torch.no_grad():
        a, b = model(ids, document_ids=docs), model(other, document_ids=docs)
        model.cfg.attention = "eager"
        ref = model(ids, document_ids=docs)
    torch.testing.assert_close(a[0, 4:], b[0, 4:])  # the second document never saw the first
    torch.testing.assert_close(a, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("attention, position", [("flash", "alibi"), ("flash", "relative"), ("flash_attn", "relative")])
def test_invalid_kernel_position_pairs_are_config_errors(attention, position):
    with pytest.raises(ConfigError, match=f"model.attention='{attention}' cannot add the {position}"):
        load_config(None, [f"model.attention={attention}", f"model.position={position}"])


def test_flash_refuses_sliding_window_at_config_time():
    with pytest.raises(ConfigError, match="model.attention='flash' has no sliding window"):
        load_config(None, ["model.attention=flash", "model.sliding_window=64"])


def test_eager_returns_attention_weights():
    model = Transformer(tiny(position="alibi")).eval()
    ids = torch.randint(0, 97, (2, 6))
    logits, weights = model(ids, return_attention=True)
    assert len(weights) == 2 and weights[0].shape == (2, 4, 6, 6)
    torch.testing.assert_close(weights[0].sum(-1), torch.ones(2, 4, 6))
    assert (weights[0].triu(1) == 0).all()  # causal: nothing above the diagonal
    model.cfg.attention = "sdpa"
    with pytest.raises(ValueError, match="attention='eager' only"):
        model(ids, return_attention=True)


def test_flash_on_cuda_refuses_fp32():
    if not CUDA:
        pytest.skip("the fp32 refusal applies on CUDA only; CPU's flash kernel takes fp32")
    model = Transformer(tiny(attention="flash")).cuda()
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        model(torch.randint(0, 97, (1, 8), device="cuda"))


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["flash", "flex", "flash_attn", "sdpa"])
@pytest.mark.parametrize("position", ["rope", "alibi"])
def test_gpu_kernels_match_eager(kernel, position):
    """On a GPU in bf16 the fused kernels, forward and backward, stay close to eager in fp32."""
    if kernel == "flash_attn":
        pytest.importorskip("flash_attn")
    if kernel == "flash" and position == "alibi":
        pytest.skip("flash takes no bias")
    torch.manual_seed(0)
    model = Transformer(tiny(position=position, num_kv_heads=2, d_model=128, num_heads=4)).cuda()
    ids = torch.randint(0, 97, (2, 64), device="cuda")
    ref, ref_grads = run(model, ids, None, grad=True)
    model.cfg.attention = kernel
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out, grads = run(model, ids, None, grad=True)
    torch.testing.assert_close(out.float(), ref, atol=5e-2, rtol=5e-2)
    for name in grads:
        torch.testing.assert_close(grads[name].float(), ref_grads[name], atol=5e-2, rtol=1e-1)


def deberta(**kw) -> ModelConfig:
    """An encoder with DeBERTa's positions whose 11 tokens reach past the exact distances (half of 6
    buckets) into the log-spaced ones and past the last (8) into the clipped table rows."""
    wide = dict(init_std=0.3)  # wide weights: the position terms move the output
    return tiny(arch="encoder", position="disentangled", relative_num_buckets=6, relative_max_distance=8,
                **{**wide, **kw})  # fmt: skip


@pytest.mark.parametrize("padded", [False, True])
def test_disentangled_positions_sdpa_matches_eager_forward_and_backward(padded):
    model = Transformer(deberta())
    ids, mask = batch(padded)
    ref, ref_grads = run(model, ids, mask, grad=True)
    model.cfg.attention = "sdpa"
    out, grads = run(model, ids, mask, grad=True)
    keep = valid(mask, ref)
    torch.testing.assert_close(out[keep], ref[keep], atol=ATOL, rtol=0)
    assert {"position.embedding.weight", "position.norm.weight"} <= grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=ATOL, rtol=0, msg=name)


@pytest.mark.parametrize("kernel", ["eager", "sdpa"])
def test_disentangled_positions_depend_on_distance_only(kernel):
    """A padded row (left or right) gives what the sequence gives alone, packed documents what each
    gives alone; and the position terms matter: without them the output differs."""
    model = Transformer(deberta(attention=kernel)).eval()
    ids = torch.randint(0, 97, (1, 8))
    with torch.no_grad():
        alone = model(ids)
        for left in (True, False):
            padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids] if left else [ids, torch.zeros(1, 3)], 1)
            mask = (torch.arange(11) >= 3 if left else torch.arange(11) < 8).long()[None]
            out = model(padded.long(), attention_mask=mask)
            torch.testing.assert_close(out[mask.bool()], alone[0], atol=ATOL, rtol=0)
        other = torch.randint(0, 97, (1, 5))
        docs = torch.tensor([[0] * 8 + [1] * 5])
        packed = model(torch.cat([ids, other], 1), document_ids=docs)
        torch.testing.assert_close(packed[0, :8], alone[0], atol=ATOL, rtol=0)
        torch.testing.assert_close(packed[0, 8:], model(other)[0], atol=ATOL, rtol=0)
        model.position.embedding.weight.zero_()
        model.position.norm.bias.zero_()
        assert (model(ids) - alone).abs().max() > 0.1


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(arch="decoder"), "position='disentangled' (DeBERTa) is built for encoders; arch='decoder'"),
        (dict(arch="encoder", num_kv_heads=2), "num_kv_heads=2: position='disentangled' projects"),
        (dict(arch="encoder", relative_num_buckets=8, relative_max_distance=5),
         "a distance above half the buckets plus one (5)"),
        (dict(arch="encoder", attention="flex"),
         "attention='flex' cannot add the disentangled position bias; use one of ['eager', 'sdpa']"),
        (dict(arch="encoder", linear_attention="performer"), "forms no score matrix to add the disentangled bias"),
    ],
)  # fmt: skip
def test_disentangled_positions_refuse_what_they_cannot_do(kw, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        tiny(position="disentangled", **kw).validate()


@pytest.mark.gpu
def test_gpu_disentangled_positions_match_eager():
    """On a GPU in bf16, DeBERTa's terms as SDPA's float bias (its memory-efficient kernel takes one)
    stay close to eager in fp32, forward and backward."""
    torch.manual_seed(0)
    model = Transformer(deberta(d_model=128, init_std=0.02)).cuda()
    ids, mask = batch(True, T=64, device="cuda")
    ref, ref_grads = run(model, ids, mask, grad=True)
    model.cfg.attention = "sdpa"
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out, grads = run(model, ids, mask, grad=True)
    keep = valid(mask, ref)
    torch.testing.assert_close(out[keep].float(), ref[keep], atol=5e-2, rtol=5e-2)
    for name in grads:
        torch.testing.assert_close(grads[name].float(), ref_grads[name], atol=5e-2, rtol=1e-1, msg=name)

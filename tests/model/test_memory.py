"""Transformer-XL's memory (model.memory_len, segment_len): a row run segment by segment, each layer
attending over its segment and the memory of the positions before, gives the values of one pass
under the segment mask and of cached decoding; the reach is memory_len per layer; the gradient
stops at each segment's start; padded rows give what they give alone."""

import pytest
import torch

from pretrain.model import ModelConfig, Transformer

ATOL = 1e-5


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=97, d_model=32, num_layers=2, num_heads=4, max_seq_len=64, position="rope",
                memory_len=5, segment_len=4, init_std=0.2)  # fmt: skip
    return ModelConfig(**{**base, **kw})


@pytest.mark.parametrize("kernel", ["eager", "sdpa", "flex"])
@pytest.mark.parametrize("position", ["rope", "alibi", "relative", "learned"])
def test_by_segments_one_pass_and_cached_decoding_agree(position, kernel):
    torch.manual_seed(0)
    model = Transformer(tiny(position=position, attention=kernel, num_kv_heads=2)).eval()
    ids = torch.randint(0, 97, (2, 15))  # 4 segments, the last short
    with torch.no_grad():
        by_segments = model(ids)
        one_pass = model(ids, attention_mask=torch.ones_like(ids))  # the mask path
        cache, steps = model.new_cache(2, 15), []
        for t in range(15):
            steps.append(model(ids[:, t : t + 1], cache=cache, attention_mask=torch.ones(2, t + 1, dtype=torch.long)))
        cached = torch.cat(steps, dim=1)
    torch.testing.assert_close(one_pass, by_segments, atol=ATOL, rtol=0)
    torch.testing.assert_close(cached, by_segments, atol=ATOL, rtol=0)


@pytest.mark.parametrize("layers, reach", [(1, 9), (2, 5)])
def test_the_reach_grows_by_the_memory_per_layer(layers, reach):
    """Segments of 4, memory of 3: segment 3 (positions 12-15) sees the last layer's inputs from 9
    on; those at 9-11 were made in segment 2, which saw the layer below from 8 - 3 = 5 on."""
    torch.manual_seed(1)
    model = Transformer(tiny(num_layers=layers, memory_len=3)).eval()
    ids = torch.randint(0, 97, (1, 16))
    with torch.no_grad():
        ref = model(ids)[0, 12:]
        for pos, changes in ((reach - 1, False), (reach, True)):
            other = ids.clone()
            other[0, pos] = (ids[0, pos] + 1) % 97
            moved = (model(other)[0, 12:] - ref).abs().max().item()
            assert (moved > 1e-3) == changes, (pos, moved)


def test_the_gradient_stops_at_each_segment_start():
    """The last segment's loss reaches the first segment's tokens through the memory's values but,
    by segments, sends no gradient back to them; one pass under the same mask does."""
    torch.manual_seed(2)
    model = Transformer(tiny(num_layers=1, memory_len=4, segment_len=4, tie_embeddings=False))
    ids = torch.arange(1, 9)[None]  # every token once: a token's embedding row is its position's
    for mask, reaches_back in ((None, False), (torch.ones_like(ids), True)):
        model.zero_grad()
        model(ids, attention_mask=mask)[0, 4:].square().sum().backward()
        first = model.embed.tokens.weight.grad[ids[0, :4]].abs().max().item()
        assert (first > 0) == reaches_back, first
        assert model.embed.tokens.weight.grad[ids[0, 4:]].abs().max() > 0


def test_a_padded_row_gives_what_it_gives_alone():
    torch.manual_seed(3)
    model = Transformer(tiny()).eval()
    ids = torch.randint(1, 97, (1, 11))
    with torch.no_grad():
        alone = model(ids)
        left = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
        mask = (torch.arange(14) >= 3).long()[None]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(left, attention_mask=mask, position_ids=positions)
    torch.testing.assert_close(out[0, 3:], alone[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(segment_len=None), "segment_len=None: memory_len=5 needs the length of the segments"),
        (dict(memory_len=0), "memory_len=0, segment_len=4: segment_len is the length of the segments"),
        (dict(arch="encoder"), "memory_len=5: Transformer-XL's recurrence is for causal stacks; arch='encoder'"),
        (dict(attention="flash_attn"), "attention='flash_attn' has no window per segment"),
        (dict(sliding_window=8), "memory_len=5 with {'sliding_window': 8}: the memory is the window here"),
    ],
)
def test_memory_settings_that_cannot_work_are_refused(kw, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("{", r"\{")):
        tiny(**kw).validate()


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["sdpa", "flex"])
def test_gpu_by_segments_match_eager_forward_and_backward(kernel):
    """On a GPU in bf16: each segment's queries after their memory (sdpa: torch's lower-right causal
    bias, which its flash kernels take) stay close to eager in fp32."""
    torch.manual_seed(0)
    model = Transformer(tiny(d_model=128, num_kv_heads=2, memory_len=32, segment_len=32, init_std=0.02)).cuda()
    ids = torch.randint(0, 97, (2, 128), device="cuda")

    def loss_and_grads():
        model.zero_grad()
        out = model(ids)
        out.float().square().mean().backward()
        return out.float(), {n: p.grad.float().clone() for n, p in model.named_parameters()}

    model.cfg.attention = "eager"
    ref, ref_grads = loss_and_grads()
    model.cfg.attention = kernel
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out, grads = loss_and_grads()
    torch.testing.assert_close(out, ref, atol=5e-2, rtol=5e-2)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=5e-2, rtol=1e-1, msg=name)

import math

import pytest
import torch

from pretrain.model import ModelConfig, Transformer, count_parameters, flops_per_token, pool
from pretrain.model.attention import build_context
from pretrain.model.layers import Block
from pretrain.model.position import ALiBi, RelativeBias, Rotary, alibi_slopes, apply_rotary, sinusoidal


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=97, d_model=32, num_layers=2, num_heads=4, max_seq_len=64)
    return ModelConfig(**{**base, **kw})


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rope", "alibi", "relative", "none"])
@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_kv_cache_decoding_equals_full_forward(position, attention):
    model = Transformer(tiny(position=position, num_kv_heads=2, attention=attention, sliding_window=6)).eval()
    ids = torch.randint(0, 97, (2, 14))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(batch_size=2, max_len=14)
        steps = [model(ids[:, :5], cache=cache)]  # prefill, then one token at a time
        steps += [model(ids[:, t : t + 1], cache=cache) for t in range(5, 14)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)
    assert cache.length == 14


def test_kv_cache_with_left_padding_matches_unpadded_rows():
    """Batched generation pads prompts on the left; the real tokens' logits must not change."""
    model = Transformer(tiny(position="rope")).eval()
    short = torch.randint(0, 97, (1, 5))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), short], dim=1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        alone = model(short)
        cache = model.new_cache(1, 9)
        out = model(padded, attention_mask=mask, cache=cache)
        nxt = torch.randint(0, 97, (1, 1))
        step = model(nxt, attention_mask=torch.cat([mask, torch.ones(1, 1, dtype=torch.long)], 1), cache=cache)
        alone_next = model(torch.cat([short, nxt], 1))[:, -1:]
    torch.testing.assert_close(out[:, 3:], alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(step, alone_next, atol=1e-5, rtol=0)


def test_kv_cache_overflow_is_an_error():
    model = Transformer(tiny(position="rope")).eval()
    cache = model.new_cache(1, 4)
    with torch.no_grad(), pytest.raises(ValueError, match="KV cache holds 4 positions; this step needs 6"):
        model(torch.zeros(1, 6, dtype=torch.long), cache=cache)


def test_sinusoidal_follows_the_paper():
    pe = sinusoidal(torch.arange(50), 16)
    pos, i = 37, 3
    assert pe[pos, 2 * i].item() == pytest.approx(math.sin(pos / 10000 ** (2 * i / 16)), abs=1e-6)
    assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(pos / 10000 ** (2 * i / 16)), abs=1e-6)


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_rope_scores_depend_only_on_distance(fraction):
    cfg = tiny(position="rope", rotary_fraction=fraction, rope_base=500.0)
    rope = Rotary(cfg)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(pq, pk):
        cq, sq = rope.angles(torch.tensor([[pq]]))
        ck, sk = rope.angles(torch.tensor([[pk]]))
        return (apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum().item()

    assert score(9, 4) == pytest.approx(score(25, 20), abs=1e-5)
    assert score(9, 4) != pytest.approx(score(9, 5), abs=1e-3)
    cos, sin = rope.angles(torch.tensor([[7]]))
    rotated = apply_rotary(q, cos, sin)
    rot = int(8 * fraction)
    torch.testing.assert_close(rotated[..., rot:], q[..., rot:])  # partial rotary: the tail passes through


@pytest.mark.parametrize("heads", [8, 12, 6])
def test_alibi_slopes_match_bloom(heads):
    bloom = pytest.importorskip("transformers.models.bloom.modeling_bloom")
    expected = bloom.build_alibi_tensor(torch.ones(1, 2), heads, torch.float32)[:, 0, 1]  # slope * position 1
    torch.testing.assert_close(alibi_slopes(heads), expected)
    assert alibi_slopes(8).tolist() == [2.0 ** -(i + 1) for i in range(8)]


def test_alibi_bias_is_minus_slope_times_distance():
    bias = ALiBi(tiny(position="alibi", num_heads=8)).by_distance(torch.tensor([-3, 0, 2]))
    torch.testing.assert_close(bias[0], torch.tensor([-1.5, 0.0, -1.0]))


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_buckets_match_t5(bidirectional):
    t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
    rel = torch.arange(-300, 300)
    bias = RelativeBias(tiny(position="relative", arch="encoder" if bidirectional else "decoder"))
    expected = t5.T5Attention._relative_position_bucket(rel, bidirectional, 32, 128)
    torch.testing.assert_close(bias.bucket(rel), expected)


def test_scaled_residual_init():
    model = Transformer(tiny(num_layers=8, d_model=128, ffn_hidden_size=512))
    proj_std = model.layers[0].mlp.proj.weight.std().item()
    assert proj_std == pytest.approx(0.02 / math.sqrt(16), rel=0.1)
    assert model.layers[0].mlp.fc.weight.std().item() == pytest.approx(0.02, rel=0.1)
    plain = Transformer(tiny(num_layers=8, d_model=128, ffn_hidden_size=512, scaled_residual_init=False))
    assert plain.layers[0].mlp.proj.weight.std().item() == pytest.approx(0.02, rel=0.1)


@pytest.mark.parametrize("tie", [True, False])
def test_tied_embeddings_share_one_tensor(tie):
    for arch in ("decoder", "encoder"):
        model = Transformer(tiny(arch=arch, tie_embeddings=tie))
        assert (model.output.weight is model.embed.tokens.weight) == tie
        expected = count_parameters(Transformer(tiny(arch=arch, tie_embeddings=True))) + (0 if tie else 97 * 32)
        assert count_parameters(model) == expected


@pytest.mark.parametrize("mlp, matrices", [("gelu", 2), ("swiglu", 3), ("geglu", 3), ("relu", 2)])
def test_mlp_shapes(mlp, matrices):
    model = Transformer(tiny(mlp=mlp, ffn_hidden_size=48, bias=False))
    block = model.layers[0]
    assert block.mlp.fc.weight.numel() + block.mlp.proj.weight.numel() == matrices * 48 * 32
    assert model(torch.randint(0, 97, (1, 5))).shape == (1, 5, 97)


def test_post_norm_has_embedding_norm_and_no_final_norm():
    post = Transformer(tiny(norm_position="post", norm="rmsnorm"))
    pre = Transformer(tiny(norm_position="pre"))
    assert post.embed.norm is not None and post.norm is None
    assert pre.embed.norm is None and pre.norm is not None


def test_dropout_only_in_training():
    model = Transformer(tiny(dropout=0.3, attention_dropout=0.2, attention="eager"))
    ids = torch.randint(0, 97, (2, 8))
    model.train()
    assert not torch.allclose(model(ids), model(ids))
    model.eval()
    torch.testing.assert_close(model(ids), model(ids))


def test_scale_embeddings_multiplies_by_sqrt_width():
    a = Transformer(tiny(position="sinusoidal", scale_embeddings=True, norm_position="post")).eval()
    ids = torch.randint(0, 97, (1, 4))
    x = a.embed.tokens(ids) * math.sqrt(32) + sinusoidal(torch.arange(4), 32)
    torch.testing.assert_close(a.embed(ids, torch.arange(4)[None]), a.embed.norm(x))


def test_pooling_first_last_mean():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    assert pool(hidden, right, "first").flatten().tolist() == [0.0, 4.0]
    assert pool(hidden, right, "last").flatten().tolist() == [2.0, 7.0]
    assert pool(hidden, left, "last").flatten().tolist() == [3.0, 7.0]
    assert pool(hidden, right, "mean").flatten().tolist() == [1.0, 5.5]
    with pytest.raises(ValueError, match="pooling='max'"):
        pool(hidden, right, "max")


def test_count_parameters_leaves_out_lookup_tables():
    model = Transformer(tiny(num_layers=3))
    n_body = count_parameters(model, exclude_input_embedding=True)
    assert n_body == count_parameters(model) - 64 * 32  # learned positions do no matmul; tied tokens do
    untied = Transformer(tiny(num_layers=3, tie_embeddings=False, position="rope"))
    assert count_parameters(untied, exclude_input_embedding=True) == count_parameters(untied) - 97 * 32


@pytest.mark.parametrize(
    "family",
    [
        dict(arch="decoder"),  # GPT-2 shape
        dict(arch="decoder", position="rope", norm="rmsnorm", mlp="swiglu", bias=False, num_kv_heads=2,
             tie_embeddings=False),  # LLaMA shape
        dict(arch="encoder", norm_position="post", mlp="gelu"),  # BERT shape, masked LM
        dict(arch="encoder", norm_position="post", mlp="gelu", classify=True),  # classifier: no vocabulary output
        dict(arch="decoder", mlp="gelu_tanh", linear_attention="performer", linear_attention_dim=32),
        dict(arch="encoder", norm_position="post", mlp="gelu", linear_attention="linformer", linear_attention_dim=16),
        dict(arch="encoder", norm_position="post", mlp="gelu", position="disentangled", relative_num_buckets=32,
             relative_max_distance=64),  # DeBERTa shape
        dict(arch="decoder", position="rope", memory_len=2, segment_len=16),  # Transformer-XL memory: 9% fewer
    ],
    ids=["gpt2", "llama", "bert-mlm", "bert-classifier", "performer", "linformer", "deberta", "memory"],
)  # fmt: skip
def test_flops_per_token_matches_torch_flop_counter(family):
    """The MFU formula counts what a training step's matmuls do, as torch's FlopCounterMode counts
    them (eager kernel: the counter does not see CPU SDPA), within 5%."""
    from torch.utils.flop_counter import FlopCounterMode

    from pretrain.model.loss import IGNORE

    family = dict(family)
    classify = family.pop("classify", False)
    model = Transformer(tiny(num_layers=3, d_model=64, max_seq_len=64, attention="eager", **family))
    B, T = 4, 64
    ids = torch.randint(0, 97, (B, T))
    with FlopCounterMode(display=False) as counter:
        if classify:
            model.hidden_states(ids).mean().backward()
            fraction = 0.0
        else:
            every = torch.rand(B, T) < (0.15 if family["arch"] == "encoder" else 2.0)
            labels = torch.where(every, torch.randint(0, 97, (B, T)), torch.full((B, T), IGNORE))
            model(ids, labels=labels)[0].backward()
            fraction = float((labels != IGNORE).float().mean())
    measured = counter.get_total_flops() / (B * T)
    assert flops_per_token(model, T, fraction) == pytest.approx(measured, rel=0.05)


def test_learned_positions_refuse_overlong_input():
    model = Transformer(tiny(max_seq_len=8))
    with pytest.raises(ValueError, match="9 tokens is longer than the 8 learned positions"):
        model(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.parametrize(
    "kw",
    [dict(position="rope"), dict(position="rope", memory_len=3, segment_len=4),  # Transformer-XL: by segments
     dict(arch="encoder", position="disentangled", relative_num_buckets=4, relative_max_distance=8)],
    ids=["rope", "memory", "deberta"],
)  # fmt: skip
def test_activation_checkpointing_gives_same_gradients(kw):
    model = Transformer(tiny(**kw))
    ids = torch.randint(0, 97, (2, 10))
    model(ids).square().mean().backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.activation_checkpointing = True
    model(ids).square().mean().backward()
    for a, b in zip(ref, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_block_takes_cross_attention(attention):
    cfg = tiny(attention=attention, num_kv_heads=2)
    block = Block(cfg, cross_attention=True).eval()
    x, memory = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    memory_mask = torch.ones(2, 7, dtype=torch.long)
    memory_mask[1, 5:] = 0
    ctx = build_context(cfg, None, q_len=5)
    mctx = build_context(cfg, None, q_len=5, attention_mask=memory_mask, memory_len=7)
    out, _ = block(x, ctx, memory=memory, memory_ctx=mctx)
    changed = memory.clone()
    changed[1, 6] += 1.0  # a padded memory position: must not matter
    out2, _ = block(x, ctx, memory=changed, memory_ctx=mctx)
    torch.testing.assert_close(out, out2)
    changed[0, 0] += 1.0  # a real one: must matter
    out3, _ = block(x, ctx, memory=changed, memory_ctx=mctx)
    assert not torch.allclose(out3[0], out[0])


def test_activation_checkpointing_keeps_fewer_activations_and_the_same_gradients():
    """On, each block keeps only its input for backward and recomputes the rest; gradients equal
    (the golden test shows the same inside a DeepSpeed run)."""
    torch.manual_seed(0)
    model = Transformer(tiny(num_layers=3))
    ids = torch.randint(0, model.cfg.vocab_size, (2, 12))

    def saved_and_grads(on: bool):
        model.activation_checkpointing = on
        model.zero_grad()
        kept = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t.numel()) or t, lambda t: t):
            loss = model(ids).float().logsumexp(-1).mean()
        loss.backward()
        return sum(kept), [p.grad.clone() for p in model.parameters()]

    full, grads = saved_and_grads(False)
    checkpointed, grads_ckpt = saved_and_grads(True)
    assert checkpointed < full / 2
    for a, b in zip(grads, grads_ckpt, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("numel", [16, 17, 33, 1 << 20, (1 << 20) + 5, (1 << 20) + 16, 2 * (1 << 20) + 37])
def test_a_draw_in_pieces_is_the_draw_of_the_whole(numel):
    """ZeRO-3 on the host draws each partitioned matrix in pieces (keeping its own slice): the values
    and the generator's state after must be those of one normal_ over the whole matrix."""
    from pretrain.model.init import normal_in_pieces

    torch.manual_seed(3)
    whole = torch.empty(numel).normal_(0.0, 0.02)
    after = torch.rand(3)
    torch.manual_seed(3)
    pieces = []
    normal_in_pieces(numel, 0.02, lambda offset, piece: pieces.append((offset, piece)))
    assert [o for o, _ in pieces] == [sum(len(p) for _, p in pieces[:i]) for i in range(len(pieces))]
    assert torch.equal(torch.cat([p for _, p in pieces]), whole) and torch.equal(torch.rand(3), after)


@pytest.mark.parametrize(
    "kw",
    [dict(position="learned", bias=True, tie_embeddings=False),
     dict(arch="encoder", position="learned", type_vocab_size=2),
     dict(arch="encoder-decoder", num_decoder_layers=1, position="relative", vocab_size=(1 << 20) // 32 + 3)],
)  # fmt: skip
def test_torch_defaults_drawn_not_written_leave_the_weights_a_seed_gives(kw):
    """ZeRO-3 on the host builds modules without torch's default init writing them (so the whole
    embedding is never resident): the generator must still advance exactly as that init would,
    so the weights init_weights draws afterwards, and every draw after, are unchanged; and every
    nn.Linear / nn.Embedding parameter left unwritten is marked, so DeepSpeed does not broadcast it."""
    from pretrain.model import build_model
    from pretrain.model.init import DRAWN_LATER, torch_defaults_drawn_not_written

    cfg = tiny(**kw)
    torch.manual_seed(5)
    whole = build_model(cfg)
    after = torch.rand(3)
    torch.manual_seed(5)
    with torch_defaults_drawn_not_written():
        deferred = build_model(cfg)
    assert torch.equal(torch.rand(3), after)
    for (name, a), (_, b) in zip(whole.state_dict().items(), deferred.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    marked = {id(p) for p in deferred.parameters() if getattr(p, DRAWN_LATER, False)}
    linear_or_embedding = {id(p) for m in deferred.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))
                           for p in m.parameters(recurse=False)}  # fmt: skip
    assert marked == linear_or_embedding and len(marked) > 4
    assert torch.nn.Linear.reset_parameters is not torch.nn.Embedding.reset_parameters  # restored
    assert not any(getattr(p, DRAWN_LATER, False) for p in torch.nn.Linear(3, 4).parameters())

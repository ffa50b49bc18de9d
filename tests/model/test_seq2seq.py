"""The encoder-decoder family: masks that hold, cached decoding equal to uncached, and T5 both ways."""

import pytest
import torch

from pretrain.model import EncoderDecoder, ModelConfig, Transformer
from pretrain.model.loss import IGNORE


def tiny(**kw) -> ModelConfig:
    base = dict(arch="encoder-decoder", vocab_size=61, d_model=32, num_layers=2, num_decoder_layers=3, num_heads=4,
                max_seq_len=32, position="relative", norm="rmsnorm", norm_position="pre", mlp="geglu_tanh", bias=False,
                tie_embeddings=False)  # fmt: skip
    return ModelConfig(**{**base, **kw})


POSITIONS = ["relative", "sinusoidal", "learned", "rope", "alibi"]


def batch(gen, B=2, S=7, T=5, vocab=61):
    src = torch.randint(3, vocab, (B, S), generator=gen)
    tgt = torch.randint(3, vocab, (B, T), generator=gen)
    src_mask = torch.ones(B, S, dtype=torch.long)
    src_mask[1, 4:] = 0  # the second source is padded
    return src, tgt, src_mask


@pytest.mark.parametrize("position", POSITIONS)
def test_the_decoder_is_causal_and_the_encoder_sees_all_but_padding(position):
    torch.manual_seed(0)
    model = EncoderDecoder(tiny(position=position, norm_position="post" if position == "sinusoidal" else "pre")).eval()
    src, tgt, src_mask = batch(torch.Generator().manual_seed(1))
    logits = model(src, tgt, src_mask)
    assert logits.shape == (2, 5, 61)
    changed = tgt.clone()
    changed[:, 3] = 2  # a later target token cannot change earlier predictions
    after = model(src, changed, src_mask)
    assert torch.allclose(logits[:, :3], after[:, :3], atol=1e-6) and not torch.allclose(logits[:, 3:], after[:, 3:])
    padded = src.clone()
    padded[1, 4:] = 1  # what stands in the padding does not matter ...
    assert torch.allclose(model(padded, tgt, src_mask)[1], logits[1], atol=1e-6)
    early = src.clone()
    early[:, 0] = 2  # ... but every real source token does, for every target position
    assert not torch.isclose(model(early, tgt, src_mask), logits, atol=1e-6).all(-1).any()


@pytest.mark.parametrize("position", POSITIONS)
def test_cached_decoding_equals_uncached_token_for_token(position):
    """Greedy decoding with the KV cache (the encoder run once, cross-attention keys and values
    projected once) gives the same logits at every step as running the decoder over the whole prefix."""
    torch.manual_seed(0)
    model = EncoderDecoder(tiny(position=position)).eval()
    src, _, src_mask = batch(torch.Generator().manual_seed(2))
    memory = model.encode(src, src_mask)
    cache = model.new_cache(2, 8)
    out = torch.zeros(2, 1, dtype=torch.long)  # the start token
    with torch.no_grad():
        for _ in range(6):
            step = model.head(model.decode(out[:, -1:], memory, src_mask, cache=cache))[:, -1]
            full = model(src, out, src_mask)[:, -1]
            assert torch.allclose(step, full, atol=1e-5)
            out = torch.cat([out, step.argmax(-1, keepdim=True)], dim=1)
    assert all(kv is not None for kv in cache.cross) and cache.length == 6


def test_labels_give_the_mean_loss_over_labelled_targets():
    torch.manual_seed(0)
    model = EncoderDecoder(tiny())
    src, tgt, src_mask = batch(torch.Generator().manual_seed(3))
    labels = tgt.clone()
    labels[0, 3:] = IGNORE
    loss, correct, count = model(src, tgt, src_mask, labels=labels)
    logits = model(src, tgt, src_mask)
    keep = labels != IGNORE
    assert count == keep.sum() == 8
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits[keep], labels[keep]).item(), rel=1e-5)
    loss.backward()
    assert model.encoder[0].attn.qkv.weight.grad.abs().sum() > 0  # the loss reaches the encoder


def test_config_refusals():
    with pytest.raises(ValueError, match="num_decoder_layers=2: a positive integer, and only for arch=encoder-decoder"):
        ModelConfig(num_decoder_layers=2).validate()
    with pytest.raises(ValueError, match="built by pretrain.model.EncoderDecoder"):
        Transformer(tiny())


def hf_t5(gated: bool, tied: bool):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.T5Config(vocab_size=61, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3,
                                num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16,
                                dropout_rate=0.0, feed_forward_proj="gated-gelu" if gated else "relu",
                                tie_word_embeddings=tied, decoder_start_token_id=0, pad_token_id=0)  # fmt: skip
    hf = transformers.T5ForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # HF's init leaves some tensors at zero or one: make every weight count
        for p in hf.parameters():
            p.normal_(0.0, 0.3)
    return hf


@pytest.mark.parametrize("gated, tied", [(True, False), (False, True)])  # T5 v1.1; the original T5
def test_t5_both_ways_gives_the_same_logits_on_padded_batches(gated, tied):
    from pretrain.model.hf_t5 import t5_from_hf, t5_to_hf

    hf = hf_t5(gated, tied)
    src, tgt, src_mask = batch(torch.Generator().manual_seed(4))
    tgt_mask = torch.ones_like(tgt)
    tgt_mask[0, 4:] = 0
    with torch.no_grad():
        want = hf(input_ids=src, attention_mask=src_mask, decoder_input_ids=tgt, decoder_attention_mask=tgt_mask).logits
        cfg, ours = t5_from_hf(hf)
        got = ours(src, tgt, src_mask, tgt_mask)
        assert cfg.mlp == ("geglu_tanh" if gated else "relu") and cfg.decoder_layers == 3
        assert torch.allclose(got[0, :4], want[0, :4], atol=1e-4) and torch.allclose(got[1], want[1], atol=1e-4)
        back = t5_to_hf(ours)
        again = back(input_ids=src, attention_mask=src_mask, decoder_input_ids=tgt, decoder_attention_mask=tgt_mask)
        assert torch.allclose(again.logits[1], want[1], atol=1e-4)


@pytest.mark.parametrize("gated", [True, False])
def test_a_tagger_of_the_encoder_is_t5_for_token_classification(gated, tmp_path):
    """task.kind=tag on an encoder-decoder reads the encoder's output, then a linear layer: T5's
    token classifier, so the export gives its class the same logits, padding included. The export
    streams it in shards, under the names save_pretrained writes."""
    import types

    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file
    from tokenizers import Tokenizer, models

    from finetune.tasks import Classifier
    from pretrain.export import _export_t5_tagger
    from pretrain.model.hf_t5 import t5_config, t5_tagger_weights

    torch.manual_seed(0)
    cfg = tiny(mlp="geglu_tanh" if gated else "relu", ffn_hidden_size=48, relative_num_buckets=8,
               relative_max_distance=16)  # fmt: skip
    ours = Classifier(EncoderDecoder(cfg), 5, None, 0.0).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0.0, 0.3)
    body = {k.removeprefix("body."): v for k, v in ours.state_dict().items() if k.startswith("body.")}
    head = {"weight": ours.classifier.weight.detach(), "bias": ours.classifier.bias.detach()}
    hf = transformers.T5ForTokenClassification(t5_config(cfg, num_labels=5, classifier_dropout=0.0)).eval()
    hf.load_state_dict({k: make() for k, make in t5_tagger_weights(cfg, body, head).items()}, strict=True)
    src, _, src_mask = batch(torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = hf(input_ids=src, attention_mask=src_mask).logits
        got = ours(src, attention_mask=src_mask)
    assert got.shape == want.shape == (2, 7, 5)
    assert torch.allclose(got[0], want[0], atol=1e-5) and torch.allclose(got[1, :4], want[1, :4], atol=1e-5)

    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"t0": 0, "t1": 1},
                                               unk_token="t1")), pad_token="t0")  # fmt: skip
    labels = [f"L{i}" for i in range(5)]
    written = _export_t5_tagger(ours.state_dict(), types.SimpleNamespace(model=cfg), tok, labels,
                                {"classifier_dropout": 0.0}, tmp_path / "hf", 20_000)  # fmt: skip
    assert len(list(written["hf"].glob("model-*-of-*.safetensors"))) > 1
    hf.save_pretrained(tmp_path / "whole")
    saved = set(load_file(tmp_path / "whole" / "model.safetensors"))
    assert {k for f in written["hf"].glob("*.safetensors") for k in load_file(f)} == saved
    exported = transformers.AutoModelForTokenClassification.from_pretrained(written["hf"]).eval()
    assert exported.config.id2label == dict(enumerate(labels))
    with torch.no_grad():
        assert torch.allclose(exported(input_ids=src, attention_mask=src_mask).logits, want, atol=1e-6)


def test_a_tagger_t5_cannot_hold_is_refused_by_name():
    pytest.importorskip("transformers")
    from pretrain.model.hf_t5 import t5_tagger_weights

    with pytest.raises(ValueError, match="T5 has no equivalent of {'position': 'learned'}"):
        t5_tagger_weights(tiny(position="learned"), {}, {})


def test_an_output_layer_of_its_own_is_t5_v1_1s_lm_head():
    """Neither the embedding nor the embedding times d_model**-0.5 (FLAN-T5's, fine-tuned from its
    folder): T5's own lm_head, unscaled, untied from the shared embedding."""
    from pretrain.model.hf_t5 import t5_to_hf

    pytest.importorskip("transformers")
    torch.manual_seed(0)
    ours = EncoderDecoder(tiny()).eval()  # untied, drawn apart from the embedding
    hf = t5_to_hf(ours)
    assert not hf.config.scale_decoder_outputs and hf.lm_head.weight is not hf.shared.weight
    src, tgt, src_mask = batch(torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = ours(src, tgt, src_mask)
        assert torch.allclose(hf(input_ids=src, attention_mask=src_mask, decoder_input_ids=tgt).logits, want, atol=1e-5)


@pytest.mark.parametrize("kernel", ["flash", "flash_attn"])
@pytest.mark.parametrize("arch", ["decoder", "encoder-decoder"])
def test_a_model_trained_with_a_kernel_without_masks_runs_padded_batches_with_sdpa(kernel, arch):
    """for_padding swaps flash / flash_attn for sdpa (what fine-tuning and batched inference run),
    keeps a kernel that takes masks, and refuses to be told one that does not; flash's logits on an
    unpadded batch are sdpa's, and a padded row gives what it gives alone."""
    from pretrain.model import build_model

    cfg = tiny(arch=arch, position="sinusoidal", norm_position="post", mlp="relu", attention=kernel,
               num_decoder_layers=None if arch == "decoder" else 3)  # fmt: skip
    assert cfg.for_padding().attention == "sdpa" and cfg.for_padding("eager").attention == "eager"
    assert tiny(attention="flex").for_padding().attention == "flex"
    with pytest.raises(ValueError, match=r"attention='flash' takes no padding mask.*\['auto', 'sdpa', 'flex'"):
        cfg.for_padding("flash")
    src, tgt, src_mask = batch(torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    fallback = build_model(cfg.for_padding()).eval()
    args = (src, tgt) if arch == "encoder-decoder" else (src,)
    with torch.no_grad():
        if kernel == "flash":  # the flash-attn package is not on CPU machines
            trained = build_model(cfg).eval()
            trained.load_state_dict(fallback.state_dict())
            assert torch.allclose(trained(*args), fallback(*args), atol=1e-5)
            with pytest.raises(ValueError, match="attention='flash' cannot take a padding mask"):
                trained(*args, attention_mask=src_mask)
        padded = fallback(*args, attention_mask=src_mask)
        alone = fallback(*(a[1:, :4] if a is src else a[1:] for a in args), attention_mask=src_mask[1:, :4])
    last = slice(None) if arch == "encoder-decoder" else slice(None, 4)
    assert torch.allclose(padded[1, last], alone[0], atol=1e-5)


@pytest.mark.parametrize("position", ["relative", "sinusoidal", "alibi", "rope"])
@pytest.mark.parametrize("kernel", ["sdpa", "flex", "flash"])
def test_each_kernel_gives_eagers_logits_where_it_can_express_the_masks(kernel, position):
    """Padded sources and targets (sdpa, flex), or no padding (flash, which takes no mask and no
    bias: a config error for relative and ALiBi)."""
    from pretrain.model.config import KERNELS_WITH_BIAS

    if kernel not in KERNELS_WITH_BIAS.get(position, (kernel,)):
        with pytest.raises(ValueError, match=f"attention='{kernel}' cannot add the {position} position bias"):
            tiny(position=position, attention=kernel).validate()
        return
    torch.manual_seed(0)
    model = EncoderDecoder(tiny(position=position, attention="eager")).eval()
    src, tgt, src_mask = batch(torch.Generator().manual_seed(4))
    tgt_mask = torch.ones_like(tgt)
    tgt_mask[0, 3:] = 0
    masks = (None, None) if kernel == "flash" else (src_mask, tgt_mask)
    with torch.no_grad():
        want = model(src, tgt, *masks)
        model.cfg.attention = kernel
        got = model(src, tgt, *masks)
    keep = torch.ones_like(tgt, dtype=torch.bool) if masks[1] is None else tgt_mask.bool()
    torch.testing.assert_close(got[keep], want[keep], atol=1e-5, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kernel", ["flash", "flash_attn", "sdpa"])
def test_gpu_kernels_give_eagers_logits_for_the_encoder_decoder(kernel):
    """On a GPU in bf16 (unpadded: flash and flash_attn take no padding mask), near eager in fp32."""
    if kernel == "flash_attn":
        pytest.importorskip("flash_attn")
    torch.manual_seed(0)
    model = EncoderDecoder(tiny(position="sinusoidal", norm_position="post", d_model=128, attention="eager")).cuda()
    src, tgt = torch.randint(3, 61, (2, 48), device="cuda"), torch.randint(3, 61, (2, 24), device="cuda")
    with torch.no_grad():
        want = model(src, tgt)
        model.cfg.attention = kernel
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got = model(src, tgt)
    torch.testing.assert_close(got.float(), want, atol=5e-2, rtol=5e-2)


def hf_bart(act: str, tied: bool, scaled: bool):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BartConfig(vocab_size=61, d_model=32, encoder_layers=2, decoder_layers=3,
                                  encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48,
                                  decoder_ffn_dim=48, max_position_embeddings=32, activation_function=act,
                                  scale_embedding=scaled, tie_word_embeddings=tied, dropout=0.0, attention_dropout=0.0,
                                  activation_dropout=0.0, pad_token_id=1, decoder_start_token_id=2)  # fmt: skip
    hf = transformers.BartForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # HF's init leaves norms at one and biases at zero: make every weight count
        for p in hf.parameters():
            p.normal_(0.0, 0.3)
        for stack in (hf.model.encoder, hf.model.decoder):  # untied, they are parameters of their own
            stack.embed_tokens.weight.copy_(hf.model.shared.weight)
    return hf


@pytest.mark.parametrize("act, tied, scaled", [("gelu", True, False), ("relu", False, True)])  # bart-base; others
def test_bart_both_ways_gives_the_same_logits_on_padded_batches(act, tied, scaled):
    """BART's two position tables (offset by two rows) and two embedding norms are each stack's own."""
    from pretrain.model.hf_bart import bart_from_hf, bart_to_hf

    hf = hf_bart(act, tied, scaled)
    src, tgt, src_mask = batch(torch.Generator().manual_seed(4))
    tgt_mask = torch.ones_like(tgt)
    tgt_mask[0, 4:] = 0
    kwargs = dict(input_ids=src, attention_mask=src_mask, decoder_input_ids=tgt, decoder_attention_mask=tgt_mask)
    with torch.no_grad():
        want = hf(**kwargs).logits
        cfg, ours = bart_from_hf(hf)
        assert (cfg.position, cfg.norm_position, cfg.mlp, cfg.tie_embeddings, cfg.scale_embeddings) == \
            ("learned", "post", act, tied, scaled)  # fmt: skip
        assert not torch.equal(ours.embed.positions.weight, ours.decoder_embed.positions.weight)
        assert torch.equal(ours.decoder_embed.positions.weight, hf.model.decoder.embed_positions.weight[2:])
        got = ours(src, tgt, src_mask, tgt_mask)
        assert torch.allclose(got[0, :4], want[0, :4], atol=1e-5) and torch.allclose(got[1], want[1], atol=1e-5)
        again = bart_to_hf(ours)(**kwargs).logits
        assert torch.allclose(again[0, :4], want[0, :4], atol=1e-5) and torch.allclose(again[1], want[1], atol=1e-5)


def test_what_bart_cannot_hold_is_refused_by_name():
    from pretrain.model.hf_bart import bart_from_hf, bart_to_hf

    hf = hf_bart("gelu", True, False)
    hf.final_logits_bias[0, 3] = 0.5
    with pytest.raises(ValueError, match="nonzero final_logits_bias"):
        bart_from_hf(hf)
    with pytest.raises(ValueError, match=r"BART has no equivalent of \{'position': 'relative', 'norm': 'rmsnorm'"):
        bart_to_hf(EncoderDecoder(tiny()))
    with pytest.raises(ValueError, match="activation_function='silu' is not supported"):
        bart_from_hf(hf_bart("silu", True, False))
    cfg, _ = bart_from_hf(hf_bart("gelu", True, False))
    cfg.linear_attention = "performer"  # transformers' BART would run softmax attention on these weights
    with pytest.raises(ValueError, match="'linear_attention': 'performer'"):
        bart_to_hf(EncoderDecoder(cfg))
    hf = hf_bart("gelu", False, False)
    with torch.no_grad():
        hf.model.decoder.embed_tokens.weight.add_(0.1)
    with pytest.raises(ValueError, match="decoder looks tokens up in a table of its own"):
        bart_from_hf(hf)


@pytest.mark.parametrize("family, variant", [("t5", (True, False)), ("t5", (False, True)),
                                             ("bart", ("gelu", True, False)), ("bart", ("relu", False, True))])
def test_init_from_an_hf_encoder_decoder_folder_reads_it_tensor_by_tensor(family, variant, tmp_path, monkeypatch):
    """`init_from: FOLDER` of T5 or BART (finetune.weights.load_pretrained, in every rank and in the
    launcher's preflight) reads the safetensors one tensor at a time, as for decoders and encoders:
    transformers' whole model is never built (it was, in each of those processes). The tensors are
    t5_from_hf's and bart_from_hf's, bit for bit, and give HF's logits; BART's names saved from
    BartModel (no ``model.`` prefix) are found too, and what ours cannot hold is named first."""
    import json

    transformers = pytest.importorskip("transformers")
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models

    from finetune.weights import load_pretrained
    from pretrain.config import ConfigError
    from pretrain.export import load_weights
    from pretrain.model.hf_bart import bart_from_hf
    from pretrain.model.hf_t5 import t5_from_hf

    hf = hf_t5(*variant) if family == "t5" else hf_bart(*variant)
    cfg, whole = (t5_from_hf if family == "t5" else bart_from_hf)(hf)
    expected = whole.state_dict()
    state = {k: v.contiguous().clone() for k, v in hf.state_dict().items()}
    tied = [k for k in state if k != "shared.weight" and k.endswith(("embed_tokens.weight", "lm_head.weight"))
            and hf.config.tie_word_embeddings]  # fmt: skip
    vocab = {f"t{i}": i for i in range(61)}
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t3")),
                                               pad_token="t1", eos_token="t2")  # fmt: skip

    def folder(name: str, tensors: dict, drop=tuple(tied)):
        path = tmp_path / name
        hf.config.save_pretrained(path)
        tok.save_pretrained(path)
        save_file({k: v for k, v in tensors.items() if k not in drop}, str(path / "model.safetensors"))
        return path

    def refuse(*args, **kwargs):
        raise AssertionError("transformers' whole model was built")

    monkeypatch.setattr(transformers.AutoModelForSeq2SeqLM, "from_pretrained", refuse)
    names = [state] if family == "t5" else [state, {k.removeprefix("model."): v for k, v in state.items()}]
    for i, tensors in enumerate(names):
        pre = load_pretrained(str(folder(f"hf{i}", tensors)))
        assert pre.model_cfg == cfg and pre.source.startswith(f"HF {family} model ")
        lazy = pre.tensors()
        assert set(lazy) == set(expected) - cfg.tied_output_keys
        for key in lazy:
            assert lazy.shape(key) == tuple(expected[key].shape), key
            torch.testing.assert_close(lazy[key], expected[key], atol=0, rtol=0, msg=key)
    model = EncoderDecoder(pre.model_cfg).eval()
    load_weights(model, lazy)
    src, tgt, src_mask = batch(torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = hf(input_ids=src, attention_mask=src_mask, decoder_input_ids=tgt).logits
        got = model(src, tgt, src_mask)
    assert torch.allclose(got, want, atol=1e-4)
    if family == "bart":
        biased = {**state, "final_logits_bias": torch.full_like(state["final_logits_bias"], 0.5)}
        with pytest.raises(ConfigError, match="init_from=.*: this BART adds a nonzero final_logits_bias"):
            load_pretrained(str(folder("biased", biased)))
    else:  # T5 v1.1's and FLAN-T5's folders hold an output layer of their own, which transformers reads
        own = folder("own-head", {**state, "lm_head.weight": torch.randn(61, cfg.d_model)},
                     drop=("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"))  # fmt: skip
        written = json.loads((own / "config.json").read_text())
        written.pop("scale_decoder_outputs", None)  # as their config.json says it: not tied, so not scaled
        (own / "config.json").write_text(json.dumps({**written, "tie_word_embeddings": False}))
        hf = transformers.T5ForConditionalGeneration.from_pretrained(own).eval()  # (the Auto class refuses here)
        load_weights(model, load_pretrained(str(own)).tensors())
        with torch.no_grad():
            assert torch.allclose(model(src, tgt, src_mask), hf(input_ids=src, attention_mask=src_mask,
                                                                 decoder_input_ids=tgt).logits, atol=1e-4)
        gone = {k: v for k, v in state.items() if k != "decoder.final_layer_norm.weight"}
        with pytest.raises(ConfigError, match="init_from=.*cut': the weights have no decoder.final_layer_norm.weight$"):
            load_pretrained(str(folder("cut", gone)))


@pytest.mark.parametrize("family, tied", [("t5", True), ("t5", "scaled"), ("t5", False), ("bart", True),
                                          ("bart", False)])  # fmt: skip
def test_an_encoder_decoder_export_streams_what_save_pretrained_writes(family, tied, tmp_path):
    """pretrain.export writes T5's and BART's safetensors a tensor at a time from the consolidated
    weights, in shards, as for the other families (it used to build both whole models in memory):
    the same names and values as transformers' save_pretrained of t5_to_hf's or bart_to_hf's model,
    the same config, and AutoModelForSeq2SeqLM computes our logits from it."""
    import json
    import types

    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file
    from tokenizers import Tokenizer, models

    from pretrain.export import _export_seq2seq, special_token_ids
    from pretrain.model.hf_bart import bart_to_hf
    from pretrain.model.hf_t5 import t5_to_hf
    from pretrain.shards import write_sharded

    bart = dict(position="learned", norm="layernorm", norm_position="post", mlp="gelu", bias=True, norm_eps=1e-5)
    torch.manual_seed(0)
    cfg = tiny(tie_embeddings=tied is True, **(bart if family == "bart" else {}))
    model = EncoderDecoder(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
        if tied == "scaled":  # the original T5's output layer: the embedding times d_model**-0.5
            model.head.weight.copy_(model.embed.tokens.weight * cfg.d_model**-0.5)  # (False: T5 v1.1's, its own)
    vocab = {f"t{i}": i for i in range(61)}
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t3")),
                                               pad_token="t0", eos_token="t1")  # fmt: skip
    cons = tmp_path / "consolidated"
    write_sharded(((k, lambda v=v: v) for k, v in model.state_dict().items() if k not in cfg.tied_output_keys), cons)
    written = _export_seq2seq(cons, types.SimpleNamespace(model=cfg), tok, tmp_path / "hf", 30_000)
    assert len(list((tmp_path / "hf").glob("model-*-of-*.safetensors"))) > 1  # in shards of at most 30 KB

    whole = (bart_to_hf if family == "bart" else t5_to_hf)(model)  # what export did before
    ids = special_token_ids(tok)
    for name, value in ids.items():
        setattr(whole.config, name, value)
    whole.config.decoder_start_token_id = ids["pad_token_id"]
    whole.generation_config.update(**ids, decoder_start_token_id=ids["pad_token_id"])
    whole.save_pretrained(tmp_path / "whole", max_shard_size="30KB")
    stream, before = {}, {}
    for folder, into in ((written["hf"], stream), (tmp_path / "whole", before)):
        for file in folder.glob("*.safetensors"):
            into.update(load_file(file))
    assert sorted(stream) == sorted(before)
    for name, tensor in before.items():
        torch.testing.assert_close(stream[name], tensor, atol=0, rtol=0, msg=name)
    for file in ("config.json", "generation_config.json"):
        got, want = (json.loads((folder / file).read_text()) for folder in (written["hf"], tmp_path / "whole"))
        assert got == want, file

    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(written["hf"]).eval()
    src, tgt, src_mask = batch(torch.Generator().manual_seed(4))
    with torch.no_grad():
        got = hf(input_ids=src, attention_mask=src_mask, decoder_input_ids=tgt).logits
        assert torch.allclose(got, model(src, tgt, src_mask), atol=1e-4)


def test_bart_base_has_the_shape_of_facebooks_bart_base():
    """configs/model/bart-base.yaml against transformers' BART of the same config (both on the meta
    device): the same parameters but BART's two unused position rows per stack."""
    transformers = pytest.importorskip("transformers")
    from pretrain.config import load_config
    from pretrain.model.hf_bart import OFFSET, bart_config_to_hf

    cfg = load_config("configs/model/bart-base.yaml").model
    with torch.device("meta"):
        ours = EncoderDecoder(cfg)
        hf = transformers.BartForConditionalGeneration(bart_config_to_hf(cfg))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731 - shared tensors once
    assert count(hf) == count(ours) + 2 * OFFSET * cfg.d_model
    assert count(ours) - (50_304 - 50_265) * cfg.d_model + 2 * OFFSET * cfg.d_model == 139_420_416  # at
    # facebook/bart-base's vocabulary of 50,265 (ours is rounded up to a multiple of 64): its size


@pytest.mark.parametrize(
    "kw",
    [dict(position="relative", norm="rmsnorm", bias=False, mlp="geglu_tanh", tie_embeddings=False),  # T5 v1.1
     dict(position="learned", norm_position="post"),  # BART, the original Transformer
     dict(position="rope", linear_attention="performer", linear_attention_dim=16),
     dict(position="rope", linear_attention="linformer", linear_attention_dim=16)],  # the encoder's only
    ids=["t5", "bart", "performer", "linformer"],
)  # fmt: skip
def test_flops_per_token_of_both_stacks_match_torch_flop_counter(kw):
    """The MFU formula for an encoder-decoder (per source token: the encoder over S tokens, the
    decoder's self-attention, cross-attention over S and output layer over T = fraction x S)
    against what FlopCounterMode counts in a training step, within 5%."""
    from torch.utils.flop_counter import FlopCounterMode

    from pretrain.model import flops_per_token

    cfg = ModelConfig(arch="encoder-decoder", vocab_size=97, d_model=64, num_layers=3, num_decoder_layers=2,
                      num_heads=4, max_seq_len=64, attention="eager", **kw)  # fmt: skip
    model = EncoderDecoder(cfg)
    B, S, T = 4, 64, 16
    src, tgt = torch.randint(0, 97, (B, S)), torch.randint(0, 97, (B, T))
    with FlopCounterMode(display=False) as counter:
        model(src, tgt, labels=tgt)[0].backward()
    assert flops_per_token(model, S, T / S) == pytest.approx(counter.get_total_flops() / (B * S), rel=0.05)

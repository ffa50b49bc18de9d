"""Our GPT-2, LLaMA, BERT and DeBERTa against HF transformers' implementations: tiny random HF
models are converted both ways and must give the same logits (fp32, 1e-4) with padding in the
batch. RoBERTa is read as a BERT-family model and written back as BERT; a DeBERTa with
transformers' legacy (BERT-named) MLM head is read too and written with DeBERTa's own."""

import json
import os
import re

import pytest
import torch

from pretrain.model import ModelConfig, Transformer
from pretrain.model.hf import config_from_hf, family_of, from_hf, to_hf

tf = pytest.importorskip("transformers")
ATOL = 1e-4


def hf_models():
    return {
        "gpt2": lambda: tf.GPT2LMHeadModel(
            tf.GPT2Config(
                n_embd=48,
                n_layer=2,
                n_head=4,
                vocab_size=101,
                n_positions=40,
                initializer_range=0.3,
                bos_token_id=None,
                eos_token_id=None,
            )
        ),
        "llama-gqa": lambda: tf.LlamaForCausalLM(
            tf.LlamaConfig(
                hidden_size=48,
                intermediate_size=80,
                num_hidden_layers=2,
                num_attention_heads=6,
                num_key_value_heads=2,
                vocab_size=101,
                max_position_embeddings=40,
                rope_parameters={"rope_type": "default", "rope_theta": 500.0},
                initializer_range=0.3,
                bos_token_id=None,
                eos_token_id=None,
            )
        ),  # fmt: skip
        "llama-tied-bias": lambda: tf.LlamaForCausalLM(
            tf.LlamaConfig(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=1,
                vocab_size=101,
                attention_bias=True,
                mlp_bias=True,
                tie_word_embeddings=True,
                initializer_range=0.3,
                bos_token_id=None,
                eos_token_id=None,
            )
        ),  # fmt: skip
        "mistral": lambda: tf.MistralForCausalLM(  # the window (4) is shorter than the 13-token rows
            tf.MistralConfig(hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=6,
                             num_key_value_heads=2, vocab_size=101, max_position_embeddings=40, sliding_window=4,
                             initializer_range=0.3, bos_token_id=None, eos_token_id=None)
        ),  # fmt: skip
        "bert": lambda: tf.BertForMaskedLM(tf.BertConfig(**ENCODER)),
        "roberta": lambda: tf.RobertaForMaskedLM(  # 40 positions after the padding offset of 2
            tf.RobertaConfig(**ENCODER, max_position_embeddings=42, type_vocab_size=1, pad_token_id=1)
        ),
        "deberta": lambda: tf.DebertaV2ForMaskedLM(tf.DebertaV2Config(**DEBERTA, legacy=False)),
        "deberta-legacy": lambda: tf.DebertaV2ForMaskedLM(tf.DebertaV2Config(**DEBERTA, legacy=True)),
    }


ENCODER = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, vocab_size=101,
               initializer_range=0.3)  # wide weights: attention moves the logits (at 0.02 a wrong index in it passed)
# DeBERTa-v3's shape at a tiny size: distances of 13 tokens reach past the 4 exact buckets into the
# log-spaced ones.
DEBERTA = dict(**ENCODER, max_position_embeddings=40, type_vocab_size=2, relative_attention=True, position_buckets=8,
               max_relative_positions=32, pos_att_type=["p2c", "c2p"], share_att_key=True, norm_rel_ebd="layer_norm",
               position_biased_input=False, hidden_act="gelu", layer_norm_eps=1e-7)  # fmt: skip


def perturb(model):
    """Random init leaves norms at 1 and biases at 0, which would hide swapped or dropped ones."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name.lower() or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.2)


def inputs():
    ids = torch.randint(2, 101, (3, 13))  # RoBERTa numbers positions past its padding id (1) anywhere
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 5:] = 0
    ids[mask == 0] = 1
    types = torch.zeros_like(ids)
    types[:, 6:] = 1
    return ids, mask, types


@pytest.mark.parametrize("name", list(hf_models()))
def test_from_hf_then_to_hf_give_the_same_logits(name):
    hf = hf_models()[name]().eval()
    perturb(hf)
    ids, mask, types = inputs()
    kwargs = {"token_type_ids": types} if name.startswith(("bert", "deberta")) else {}  # RoBERTa has one type
    cfg, ours = from_hf(hf)
    ours.eval()
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, **kwargs).logits
        got = ours(ids, attention_mask=mask, **kwargs)
        back = to_hf(ours)(input_ids=ids, attention_mask=mask, **kwargs).logits
    keep = mask.bool()
    torch.testing.assert_close(got[keep], expected[keep], atol=ATOL, rtol=0)
    torch.testing.assert_close(back[keep], expected[keep], atol=ATOL, rtol=0)
    assert (expected[keep].abs().max() > 0.1).item()  # logits are not trivially zero


@pytest.mark.parametrize("name", list(hf_models()))
def test_our_random_model_survives_a_round_trip_through_hf(name):
    cfg, _ = from_hf(hf_models()[name]())
    ours = Transformer(cfg).eval()
    perturb(ours)
    ids, mask, _ = inputs()
    with torch.no_grad():
        a = ours(ids, attention_mask=mask)
        _, again = from_hf(to_hf(ours))
        b = again.eval()(ids, attention_mask=mask)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert again.cfg == cfg


def test_config_mapping_preserves_shape_choices():
    cfg, _ = from_hf(hf_models()["llama-gqa"]())
    assert (cfg.num_kv_heads, cfg.rope_base, cfg.mlp, cfg.norm, cfg.tie_embeddings) == (
        2,
        500.0,
        "swiglu",
        "rmsnorm",
        False,
    )
    cfg, _ = from_hf(hf_models()["bert"]())
    assert (cfg.arch, cfg.norm_position, cfg.type_vocab_size, cfg.norm_eps) == ("encoder", "post", 2, 1e-12)
    cfg, ours = from_hf(hf := hf_models()["roberta"]())
    assert (cfg.arch, cfg.max_seq_len, cfg.type_vocab_size) == ("encoder", 40, 1)  # 42 rows less the offset
    assert torch.equal(ours.embed.positions.weight, hf.roberta.embeddings.position_embeddings.weight[2:])


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(position="alibi"), "no HF gpt2 model has this architecture"),
        (dict(position="rope", mlp="gelu"), "no HF llama model"),
        (dict(arch="encoder", norm_position="pre"), "no HF bert model"),
        (dict(num_kv_heads=2), "'kv_heads': 2"),
        (dict(linear_attention="performer"), "'linear_attention': 'performer'"),  # HF's GPT-2 would run softmax
        (dict(position="alibi", sliding_window=8), "'sliding_window': 8"),  # only LLaMA's shape has Mistral's window
        (dict(position="rope", mlp="swiglu", norm="rmsnorm", sliding_window=8, bias=True), "'bias': True"),  # Mistral
    ],
)
def test_unsupported_architectures_are_refused_clearly(kw, message):
    cfg = ModelConfig(**{**dict(vocab_size=50, d_model=32, num_layers=1, num_heads=4, mlp="gelu_tanh"), **kw})
    with pytest.raises(ValueError, match=message):
        family_of(cfg)


@pytest.mark.parametrize("name", list(hf_models()))
def test_an_hf_folder_is_read_tensor_by_tensor_with_or_without_the_base_prefix(name, tmp_path):
    """Fine-tuning from an HF folder reads its safetensors lazily (FromHF over ShardedWeights); hub
    checkpoints saved from the base model have names without its prefix (``h.0...``)."""
    from safetensors.torch import save_file

    from pretrain.model.hf import FromHF, config_from_hf
    from pretrain.shards import ShardedWeights

    hf = hf_models()[name]()
    perturb(hf)
    cfg, ours = from_hf(hf)
    expected = ours.state_dict()
    state = {k: v.contiguous().clone() for k, v in hf.state_dict().items()
             if not (cfg.tie_embeddings and k in {"lm_head.weight", "cls.predictions.decoder.weight",
                                                  "lm_head.decoder.weight"})}  # fmt: skip
    for prefixed in (True, False):
        folder = tmp_path / str(prefixed)
        folder.mkdir()
        base = ("transformer.", "model.", "bert.", "roberta.", "deberta.")
        names = state if prefixed else {k.split(".", 1)[1] if k.startswith(base) else k: v for k, v in state.items()}
        for tied in ("cls.predictions.decoder.bias", "lm_head.decoder.bias"):  # the bias, stored once
            names.pop(tied, None)
        save_file(dict(names), str(folder / "model.safetensors"))
        lazy = FromHF(config_from_hf(hf.config), ShardedWeights(folder), hf.config)
        assert set(lazy) == set(expected) - cfg.tied_output_keys
        for key in lazy:
            assert lazy.shape(key) == tuple(expected[key].shape), key
            torch.testing.assert_close(lazy[key], expected[key], atol=0, rtol=0, msg=key)


@pytest.mark.parametrize("name", ["bert", "roberta", "deberta"])
def test_init_from_an_hf_encoder_folder_reads_its_weights_as_from_hf_does(name, tmp_path):
    """What `init_from: FOLDER` opens (finetune.weights.load_pretrained): the safetensors read
    lazily, RoBERTa's position rows after its padding offset, the folder's tokenizer."""
    from tokenizers import Tokenizer, models

    from finetune.weights import load_pretrained

    hf = hf_models()[name]()
    perturb(hf)
    hf.save_pretrained(tmp_path)
    vocab = {f"t{i}": i for i in range(101)}
    tok = tf.PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t3")),
                                     pad_token="t1", mask_token="t4", cls_token="t5", sep_token="t6")  # fmt: skip
    tok.save_pretrained(tmp_path)
    pre = load_pretrained(str(tmp_path))
    cfg, ours = from_hf(hf)
    assert pre.model_cfg == cfg and len(pre.tokenizer) == 101
    assert pre.source == f"HF {hf.config.model_type} model {tmp_path}"
    weights = pre.state_dict()
    assert set(ours.state_dict()) - set(weights) == cfg.tied_output_keys
    for key, tensor in weights.items():
        torch.testing.assert_close(tensor, ours.state_dict()[key], atol=0, rtol=0, msg=key)


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa", "bert"])
def test_init_from_an_hf_folder_of_pickled_files_maps_them_tensor_by_tensor(name, tmp_path, monkeypatch):
    """A hub folder with only ``pytorch_model.bin`` (or its shards and index; older BERT files name a
    LayerNorm's tensors gamma and beta) is memory-mapped with weights-only loading and read tensor by
    tensor, as safetensors are: transformers' whole model is never built. One that holds more than
    tensors is refused by name, its payload never run."""
    from finetune.weights import load_pretrained
    from pretrain.config import ConfigError

    hf = hf_models()[name]()
    perturb(hf)
    cfg, ours = from_hf(hf)
    expected = ours.state_dict()
    state = {k: v.contiguous().clone() for k, v in hf.state_dict().items()}
    if name == "bert":
        state = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
                 for k, v in state.items()}  # fmt: skip
    for auto in (tf.AutoModelForCausalLM, tf.AutoModelForMaskedLM, tf.AutoModel):
        monkeypatch.setattr(auto, "from_pretrained", lambda *a, **k: pytest.fail("transformers' model was built"))
    names = sorted(state)
    for layout in ("one file", "shards"):
        folder = tmp_path / layout.replace(" ", "-")
        hf.config.save_pretrained(folder)
        _word_tokenizer(folder)
        if layout == "one file":
            torch.save(state, folder / "pytorch_model.bin")
        else:
            halves = {"pytorch_model-00001-of-00002.bin": names[::2], "pytorch_model-00002-of-00002.bin": names[1::2]}
            for file, keys in halves.items():
                torch.save({k: state[k] for k in keys}, folder / file)
            where = {k: file for file, keys in halves.items() for k in keys}
            (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": where}))
        pre = load_pretrained(str(folder))
        assert pre.model_cfg == cfg
        weights = pre.state_dict()
        assert set(expected) - set(weights) == cfg.tied_output_keys
        for key, tensor in weights.items():
            torch.testing.assert_close(tensor, expected[key], atol=0, rtol=0, msg=key)

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))

    torch.save({**state, "extra": Payload()}, tmp_path / "one-file" / "pytorch_model.bin")
    refused = f"refusing to load {tmp_path / 'one-file' / 'pytorch_model.bin'}: it holds more than tensors and plain " \
              "data (it asks for posix.system)"  # fmt: skip
    with pytest.raises(ConfigError, match=re.escape(refused)):
        load_pretrained(str(tmp_path / "one-file"))
    assert not (tmp_path / "PWNED").exists()
    (tmp_path / "one-file" / "pytorch_model.bin").unlink()
    with pytest.raises(ConfigError, match="the folder has a config.json but no weights"):
        load_pretrained(str(tmp_path / "one-file"))


def _word_tokenizer(folder):
    from tokenizers import Tokenizer, models

    vocab = {f"t{i}": i for i in range(101)}
    tok = tf.PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t3")),
                                     pad_token="t1", mask_token="t4", cls_token="t5", sep_token="t6",
                                     eos_token="t2")  # fmt: skip
    tok.save_pretrained(folder)


@pytest.mark.parametrize("head", ["classifier", "none"])
def test_init_from_an_hf_folder_without_an_lm_head_reads_the_stack(head, tmp_path):
    """BertForSequenceClassification and BertModel (and LlamaModel) folders hold the stack without
    an LM head: fine-tuning a classifier reads the stack from them; the head is not looked for."""
    from finetune.weights import load_pretrained

    hf_cfg = tf.BertConfig(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, max_position_embeddings=40, num_labels=3)  # fmt: skip
    masked = tf.BertForMaskedLM(hf_cfg)
    perturb(masked)
    if head == "classifier":
        body, state = tf.BertForSequenceClassification(hf_cfg), masked.state_dict()
    else:  # the base model's names have no "bert." (and it adds a pooler)
        body, state = tf.BertModel(hf_cfg), {k.removeprefix("bert."): v for k, v in masked.state_dict().items()}
    missing, _ = body.load_state_dict(state, strict=False)  # the same stack
    assert all(k.startswith(("classifier.", "bert.pooler.", "pooler.")) for k in missing), missing
    body.save_pretrained(tmp_path)
    _word_tokenizer(tmp_path)
    pre = load_pretrained(str(tmp_path))
    _, ours = from_hf(masked)
    weights = pre.state_dict()
    assert pre.body_only and set(ours.state_dict()) - set(weights) == {k for k in ours.state_dict() if "head." in k}
    for key, tensor in weights.items():
        torch.testing.assert_close(tensor, ours.state_dict()[key], atol=0, rtol=0, msg=key)
    llama = tf.LlamaModel(tf.LlamaConfig(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=40,
                                         tie_word_embeddings=False))  # fmt: skip
    llama.save_pretrained(tmp_path / "llama")
    _word_tokenizer(tmp_path / "llama")
    assert load_pretrained(str(tmp_path / "llama")).body_only


@pytest.mark.parametrize("name", ["bert", "deberta"])
def test_a_classifier_from_an_hf_folder_starts_from_its_pooler_as_transformers_does(name, tmp_path):
    """BertForSequenceClassification.from_pretrained keeps a checkpoint's pooler (BERT's, trained
    with next-sentence prediction) and DeBERTa's ContextPooler: so does task.head=hf; a linear
    head has none, and init_random draws it afresh."""
    from finetune.config import load_finetune_config
    from finetune.tasks import FinetuneTask

    hf_cfg = tf.BertConfig(**ENCODER, num_labels=3) if name == "bert" else tf.DebertaV2Config(**DEBERTA, num_labels=3)
    hf = (tf.BertForSequenceClassification if name == "bert" else tf.DebertaV2ForSequenceClassification)(hf_cfg)
    perturb(hf)
    hf.save_pretrained(tmp_path)
    _word_tokenizer(tmp_path)
    want = hf.bert.pooler.dense if name == "bert" else hf.pooler.dense

    def built(*overrides):
        task = FinetuneTask(load_finetune_config(None, [f"init_from={tmp_path}", "task.kind=classify", *overrides]))
        task.labels = ["a", "b", "c"]
        return task, task.build_model()

    task, model = built()
    assert task.pooler_from_folder
    torch.testing.assert_close(model.pooler.weight, want.weight, atol=0, rtol=0)
    torch.testing.assert_close(model.pooler.bias, want.bias, atol=0, rtol=0)
    assert built("task.head=linear")[1].pooler is None
    task, model = built("init_random=true")
    assert not task.pooler_from_folder and not torch.equal(model.pooler.weight, want.weight)


def test_init_from_an_hf_folder_without_a_tokenizer_says_so(tmp_path):
    from finetune.weights import load_pretrained
    from pretrain.config import ConfigError

    hf_models()["gpt2"]().save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=r"the folder has weights but no tokenizer \(none of \['tokenizer.json'"):
        load_pretrained(str(tmp_path))


def test_deberta_v3_base_has_the_shape_of_microsofts():
    """configs/model/deberta-v3-base.yaml against transformers' DebertaV2ForMaskedLM of the config
    microsoft/deberta-v3-base ships (both on the meta device): the same parameters."""
    from pretrain.config import load_config

    cfg = load_config("configs/model/deberta-v3-base.yaml").model
    hf_cfg = tf.DebertaV2Config(
        vocab_size=128100, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        max_position_embeddings=512, type_vocab_size=0, relative_attention=True, position_buckets=256,
        max_relative_positions=-1, pos_att_type=["p2c", "c2p"], share_att_key=True, norm_rel_ebd="layer_norm",
        position_biased_input=False, hidden_act="gelu", layer_norm_eps=1e-7, legacy=False,
    )  # fmt: skip
    with torch.device("meta"):
        ours = Transformer(cfg)
        hf = tf.DebertaV2ForMaskedLM(hf_cfg)
    assert config_from_hf(hf_cfg) == cfg
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731 - shared tensors once
    assert count(ours) == count(hf)


@pytest.mark.parametrize(
    "kw, what",
    [(dict(position_biased_input=True), "'position_biased_input': True"),  # DeBERTa v1's absolute positions
     (dict(share_att_key=False), "'share_att_key': False"),  # separate distance projections
     (dict(conv_kernel_size=3), "'conv_kernel_size': 3"),  # deberta-v2-xlarge's convolution
     (dict(pos_att_type=["c2p"]), "'pos_att_type': ['c2p']")],
)  # fmt: skip
def test_deberta_variants_we_do_not_build_are_refused_by_name(kw, what):
    with pytest.raises(ValueError, match="DeBERTa with .*" + what.replace("[", r"\[").replace("]", r"\]")):
        config_from_hf(tf.DebertaV2Config(**{**DEBERTA, **kw}))


@pytest.mark.parametrize("kind", ["tag", "qa"])
@pytest.mark.parametrize("name", ["gpt2", "llama-tied-bias", "mistral", "bert", "deberta"])
def test_a_head_on_every_token_is_transformers_class_for_it_with_the_same_logits(name, kind):
    """A tagger's or question answerer's checkpoint (our body, a linear head per token) as the export
    writes it: the body under the LM class's names (or the class's own) without the LM head, the
    head as XForTokenClassification or XForQuestionAnswering names it."""
    from finetune.tasks import Classifier
    from pretrain.export import head_tensors, hf_head_config
    from pretrain.model.hf import hf_config, token_head

    cfg, _ = from_hf(hf_models()[name]())
    labels = ["B-A", "I-A", "B-B", "I-B", "O"] if kind == "tag" else ["start", "end"]
    torch.manual_seed(0)
    ours = Classifier(Transformer(cfg), num_labels=len(labels), pooling=None, dropout=0.0).eval()
    perturb(ours)
    hf_cfg = hf_config(cfg)
    hf_head_config(hf_cfg, cfg, labels, {"kind": kind, "classifier_dropout": 0.0})
    hf = getattr(tf, token_head(cfg, kind)[0])(hf_cfg).eval()
    tensors = dict((n, make()) for n, make in head_tensors(cfg, ours.state_dict(), kind))
    missing, unexpected = hf.load_state_dict(tensors, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    ids, mask, _ = inputs()
    keep = mask.bool()
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=mask)
        theirs = out.logits if kind == "tag" else torch.stack([out.start_logits, out.end_logits], -1)
        torch.testing.assert_close(theirs[keep], ours(ids, attention_mask=mask)[keep], atol=ATOL, rtol=0)
    assert hf.config.id2label[len(labels) - 1] == labels[-1] and hf.config.num_labels == len(labels)


@pytest.mark.parametrize("name", ["gpt2", "llama-tied-bias", "mistral", "bert", "deberta"])
def test_a_sequence_classifier_is_transformers_class_for_it_with_the_same_logits(name):
    """A classifier fine-tuned with task.head=hf (the default), as the export writes it: BERT's pooler
    (dense, tanh) and DeBERTa's (dense, GELU) on the first token, GPT-2's and LLaMA's bias-free
    score on the last that is not padding, under XForSequenceClassification's names."""
    from finetune.config import TaskConfig
    from finetune.tasks import Classifier, classify_head
    from pretrain.export import head_tensors, hf_head_config
    from pretrain.model.hf import hf_config, sequence_head

    cfg, _ = from_hf(hf_models()[name]())
    labels = ["neg", "neutral", "pos"]
    seq = sequence_head(cfg)
    torch.manual_seed(0)
    head = classify_head(cfg, TaskConfig(kind="classify"))
    assert head == {"pooler": seq.pooler, "bias": seq.bias}
    assert seq.pooling == ("first" if cfg.arch == "encoder" else "last")
    ours = Classifier(Transformer(cfg), len(labels), seq.pooling, 0.0, **head).eval()
    perturb(ours)
    hf_cfg = hf_config(cfg)
    hf_cfg.pad_token_id = 1  # inputs() pads with 1; the decoders' classes find the last real token by it
    hf_head_config(hf_cfg, cfg, labels, {"kind": "classify", "classifier_dropout": 0.0})
    hf = getattr(tf, seq.cls)(hf_cfg).eval()
    tensors = dict((n, make()) for n, make in head_tensors(cfg, ours.state_dict(), "classify"))
    missing, unexpected = hf.load_state_dict(tensors, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    ids, mask, _ = inputs()
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids, attention_mask=mask).logits, ours(ids, attention_mask=mask),
                                   atol=ATOL, rtol=0)  # fmt: skip
    assert hf.config.id2label[2] == "pos" and hf.config.num_labels == 3


def test_a_classifier_of_no_hf_family_or_with_a_linear_head_keeps_a_linear_layer_with_a_bias():
    from finetune.config import TaskConfig
    from finetune.tasks import classify_head

    linear = {"pooler": None, "bias": True}
    bert, _ = from_hf(hf_models()["bert"]())
    assert classify_head(bert, TaskConfig(kind="classify", head="linear")) == linear
    alibi = ModelConfig(vocab_size=101, d_model=32, num_layers=1, num_heads=4, max_seq_len=16, position="alibi")
    assert classify_head(alibi, TaskConfig(kind="classify")) == linear
    t5 = ModelConfig(vocab_size=101, d_model=32, num_layers=1, num_heads=4, max_seq_len=16, arch="encoder-decoder",
                     position="relative", norm="rmsnorm")  # fmt: skip
    assert classify_head(t5, TaskConfig(kind="classify")) == linear

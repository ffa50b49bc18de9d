"""Exchange with HF transformers: GPT-2 (GPT2LMHeadModel), LLaMA (LlamaForCausalLM), BERT
(BertForMaskedLM) and DeBERTa v2/v3 (DebertaV2ForMaskedLM), both ways, weights included; RoBERTa
(RobertaForMaskedLM) is read as the BERT family it is (its position table starts two rows late,
after fairseq's padding offset), and written back as BERT; Mistral (MistralForCausalLM) is the
LLaMA family with a sliding window, and a LLaMA-shaped model with one is written as Mistral.

    cfg, model = from_hf(hf_model)
    hf_model = to_hf(model)

Each family is a config mapping plus a table of (our parameter, HF parameters, transposed):
where we fuse matrices (q/k/v, gate/up) ours is the row-wise concatenation of HF's, and GPT-2's
Conv1D stores weights transposed. transformers is imported only when a conversion runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import NamedTuple

import torch

from .config import ModelConfig
from .transformer import Transformer

FAMILIES = ("gpt2", "llama", "bert", "deberta")
MODEL_TYPES = {"gpt2": "gpt2", "llama": "llama", "mistral": "llama", "bert": "bert", "roberta": "bert",
               "deberta-v2": "deberta"}  # fmt: skip
"""HF model_type -> the family we read it as."""


def family_of(cfg: ModelConfig) -> str:
    """The HF family whose architecture this config has, or a ValueError saying what differs."""
    same = dict(sliding_window=None, global_tokens=0, linear_attention=None, scale_embeddings=False, memory_len=0)
    if cfg.arch == "encoder" and cfg.position == "disentangled":
        family = "deberta"  # its MLM head always multiplies by the token embedding
        want = dict(norm="layernorm", norm_position="post", mlp="gelu", bias=True, tie_embeddings=True)
    elif cfg.arch == "encoder":
        family = "bert"
        want = dict(position="learned", norm="layernorm", norm_position="post", mlp="gelu", bias=True)
    elif cfg.position == "rope":
        family = "llama"
        want = dict(norm="rmsnorm", norm_position="pre", mlp="swiglu", rotary_fraction=1.0, type_vocab_size=0)
    else:
        family = "gpt2"
        want = dict(position="learned", norm="layernorm", norm_position="pre", mlp="gelu_tanh", bias=True)
        want.update(type_vocab_size=0)
    if family != "llama":
        want["kv_heads"] = cfg.num_heads
    want.update(same)
    if family == "llama" and cfg.sliding_window:  # Mistral: a window, no biases
        del want["sliding_window"]
        want["bias"] = False
    off = {k: getattr(cfg, k) for k, v in want.items() if getattr(cfg, k) != v}
    if off:
        raise ValueError(
            f"no HF {family} model has this architecture: {off} where {family} has "
            f"{ {k: want[k] for k in off} }; supported families: {list(FAMILIES)}"
        )
    return family


# -- configs

_GPT2_ACT = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


def _config_from_hf(hf_cfg) -> ModelConfig:
    kind = hf_cfg.model_type
    common = dict(vocab_size=hf_cfg.vocab_size, tie_embeddings=bool(getattr(hf_cfg, "tie_word_embeddings", True)))
    if kind == "gpt2":
        if getattr(hf_cfg, "scale_attn_by_inverse_layer_idx", False) or getattr(
            hf_cfg, "reorder_and_upcast_attn", False
        ):
            raise ValueError("GPT-2 with scale_attn_by_inverse_layer_idx or reorder_and_upcast_attn is not supported")
        return ModelConfig(
            arch="decoder", d_model=hf_cfg.n_embd, num_layers=hf_cfg.n_layer, num_heads=hf_cfg.n_head,
            ffn_hidden_size=hf_cfg.n_inner, max_seq_len=hf_cfg.n_positions, position="learned",
            norm="layernorm", norm_eps=hf_cfg.layer_norm_epsilon, norm_position="pre",
            mlp=_GPT2_ACT.get(hf_cfg.activation_function, hf_cfg.activation_function),
            bias=True, dropout=hf_cfg.resid_pdrop, attention_dropout=hf_cfg.attn_pdrop,
            init_std=hf_cfg.initializer_range, **common,
        )  # fmt: skip
    if kind in ("llama", "mistral"):
        rope = getattr(hf_cfg, "rope_parameters", None) or {"rope_theta": getattr(hf_cfg, "rope_theta", 10000.0)}
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"LLaMA rope_type={rope['rope_type']!r}: only the default RoPE is supported")
        if getattr(hf_cfg, "attention_bias", False) != getattr(hf_cfg, "mlp_bias", False):
            raise ValueError("LLaMA configs with attention_bias != mlp_bias are not supported")
        head_dim = getattr(hf_cfg, "head_dim", None) or hf_cfg.hidden_size // hf_cfg.num_attention_heads
        if head_dim != hf_cfg.hidden_size // hf_cfg.num_attention_heads or hf_cfg.hidden_act != "silu":
            raise ValueError(f"{kind} configs need head_dim = hidden_size / heads and hidden_act='silu'")
        return ModelConfig(
            arch="decoder", d_model=hf_cfg.hidden_size, num_layers=hf_cfg.num_hidden_layers,
            num_heads=hf_cfg.num_attention_heads, num_kv_heads=hf_cfg.num_key_value_heads,
            ffn_hidden_size=hf_cfg.intermediate_size, max_seq_len=hf_cfg.max_position_embeddings,
            position="rope", rope_base=float(rope["rope_theta"]),
            rotary_fraction=float(rope.get("partial_rotary_factor", 1.0)),
            norm="rmsnorm", norm_eps=hf_cfg.rms_norm_eps, norm_position="pre", mlp="swiglu",
            bias=bool(getattr(hf_cfg, "attention_bias", False)), attention_dropout=float(hf_cfg.attention_dropout),
            sliding_window=getattr(hf_cfg, "sliding_window", None) or None,
            init_std=hf_cfg.initializer_range, **common,
        )  # fmt: skip
    if kind in ("bert", "roberta"):
        if getattr(hf_cfg, "position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{kind} with relative position embeddings is not supported")
        return ModelConfig(
            arch="encoder", d_model=hf_cfg.hidden_size, num_layers=hf_cfg.num_hidden_layers,
            num_heads=hf_cfg.num_attention_heads, ffn_hidden_size=hf_cfg.intermediate_size,
            max_seq_len=hf_cfg.max_position_embeddings - position_offset(hf_cfg),
            type_vocab_size=hf_cfg.type_vocab_size,
            position="learned", norm="layernorm", norm_eps=hf_cfg.layer_norm_eps, norm_position="post",
            mlp=hf_cfg.hidden_act, bias=True, dropout=hf_cfg.hidden_dropout_prob,
            attention_dropout=hf_cfg.attention_probs_dropout_prob, init_std=hf_cfg.initializer_range,
            scaled_residual_init=False, **common,
        )  # fmt: skip
    if kind == "deberta-v2":
        return _deberta_config(hf_cfg, common)
    raise ValueError(f"HF model_type={kind!r} is not supported; supported: {list(MODEL_TYPES)}")


def _deberta_config(hf_cfg, common: dict) -> ModelConfig:
    """DeBERTa v2/v3 as released (v3: relative attention over 256 log buckets, shared q/k matrices
    for the distances, no absolute positions); a ValueError naming what a variant has beside."""
    want = dict(relative_attention=True, position_biased_input=False, share_att_key=True, conv_kernel_size=0,
                pos_att_type=["c2p", "p2c"], norm_rel_ebd="layer_norm", embedding_size=hf_cfg.hidden_size)
    have = {k: getattr(hf_cfg, k, None) for k in want}
    have["pos_att_type"] = sorted(have["pos_att_type"] or [])
    have["norm_rel_ebd"] = "|".join(sorted(x.strip() for x in (have["norm_rel_ebd"] or "none").split("|")))
    have["embedding_size"] = have["embedding_size"] or hf_cfg.hidden_size
    have["conv_kernel_size"] = have["conv_kernel_size"] or 0
    off = {k: v for k, v in have.items() if v != want[k]}
    if hf_cfg.position_buckets < 1:
        off["position_buckets"] = hf_cfg.position_buckets
    if off:
        raise ValueError(f"DeBERTa with {off} is not supported; the released v3 models have "
                         f"{ {k: want[k] for k in off if k in want} or {'position_buckets': 256} }")  # fmt: skip
    max_relative = hf_cfg.max_relative_positions
    return ModelConfig(
        arch="encoder", d_model=hf_cfg.hidden_size, num_layers=hf_cfg.num_hidden_layers,
        num_heads=hf_cfg.num_attention_heads, ffn_hidden_size=hf_cfg.intermediate_size,
        max_seq_len=hf_cfg.max_position_embeddings, type_vocab_size=hf_cfg.type_vocab_size,
        position="disentangled", relative_num_buckets=hf_cfg.position_buckets,
        relative_max_distance=max_relative if max_relative > 0 else hf_cfg.max_position_embeddings,
        norm="layernorm", norm_eps=hf_cfg.layer_norm_eps, norm_position="post", mlp=hf_cfg.hidden_act,
        bias=True, dropout=hf_cfg.hidden_dropout_prob, attention_dropout=hf_cfg.attention_probs_dropout_prob,
        init_std=hf_cfg.initializer_range, scaled_residual_init=False, **common,
    )  # fmt: skip


def position_offset(hf_cfg) -> int:
    """Rows of an HF position table before position 0: RoBERTa numbers positions from its padding
    id + 1 (fairseq's convention); the others from 0."""
    return hf_cfg.pad_token_id + 1 if hf_cfg.model_type == "roberta" else 0


def _config_to_hf(cfg: ModelConfig):
    import transformers as tf

    family = family_of(cfg)
    if family == "gpt2":
        return tf.GPT2Config(
            vocab_size=cfg.vocab_size, n_embd=cfg.d_model, n_layer=cfg.num_layers, n_head=cfg.num_heads,
            n_inner=cfg.ffn_hidden_size, n_positions=cfg.max_seq_len, layer_norm_epsilon=cfg.norm_eps,
            activation_function="gelu_new", resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
            attn_pdrop=cfg.attention_dropout, initializer_range=cfg.init_std,
            tie_word_embeddings=cfg.tie_embeddings, bos_token_id=None, eos_token_id=None,
        )  # fmt: skip
    if family == "llama" and cfg.sliding_window:
        return tf.MistralConfig(
            vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.ffn_size,
            num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, head_dim=cfg.head_dim,
            num_key_value_heads=cfg.kv_heads, max_position_embeddings=cfg.max_seq_len,
            rms_norm_eps=cfg.norm_eps, rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_base},
            sliding_window=cfg.sliding_window, attention_dropout=cfg.attention_dropout,
            tie_word_embeddings=cfg.tie_embeddings, initializer_range=cfg.init_std,
            bos_token_id=None, eos_token_id=None,
        )  # fmt: skip
    if family == "llama":
        return tf.LlamaConfig(
            vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.ffn_size,
            num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
            num_key_value_heads=cfg.kv_heads, max_position_embeddings=cfg.max_seq_len,
            rms_norm_eps=cfg.norm_eps, rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_base},
            attention_bias=cfg.bias, mlp_bias=cfg.bias, attention_dropout=cfg.attention_dropout,
            tie_word_embeddings=cfg.tie_embeddings, initializer_range=cfg.init_std,
            bos_token_id=None, eos_token_id=None,
        )  # fmt: skip
    if family == "deberta":
        return tf.DebertaV2Config(
            vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads, intermediate_size=cfg.ffn_size,
            max_position_embeddings=cfg.max_seq_len, type_vocab_size=cfg.type_vocab_size,
            layer_norm_eps=cfg.norm_eps, hidden_act="gelu", hidden_dropout_prob=cfg.dropout,
            attention_probs_dropout_prob=cfg.attention_dropout, initializer_range=cfg.init_std,
            relative_attention=True, position_buckets=cfg.relative_num_buckets,
            max_relative_positions=cfg.relative_max_distance, pos_att_type=["p2c", "c2p"], share_att_key=True,
            norm_rel_ebd="layer_norm", position_biased_input=False, legacy=False, pad_token_id=0,
        )  # fmt: skip
    return tf.BertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, intermediate_size=cfg.ffn_size,
        max_position_embeddings=cfg.max_seq_len, type_vocab_size=max(cfg.type_vocab_size, 1),
        layer_norm_eps=cfg.norm_eps, hidden_act="gelu", hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.attention_dropout, initializer_range=cfg.init_std,
        tie_word_embeddings=cfg.tie_embeddings, pad_token_id=0,
    )  # fmt: skip


# -- parameter tables: (ours, (hf, ...), hf stores it transposed)


def _weights_and_biases(ours: str, hf: tuple[str, ...], bias: bool, transposed: bool = False):
    yield f"{ours}.weight", tuple(f"{h}.weight" for h in hf), transposed
    if bias:
        yield f"{ours}.bias", tuple(f"{h}.bias" for h in hf), False


def _table(family: str, cfg: ModelConfig, kind: str | None = None):
    """``kind``: the HF model_type, where it names its tensors differently from ``family``'s
    (roberta), or ``deberta-legacy`` for a DeBERTa whose MLM head has BERT's names."""
    b = cfg.bias
    if family == "gpt2":
        yield "embed.tokens.weight", ("transformer.wte.weight",), False
        yield "embed.positions.weight", ("transformer.wpe.weight",), False
        for i in range(cfg.num_layers):
            h, o = f"transformer.h.{i}", f"layers.{i}"
            yield from _weights_and_biases(f"{o}.attn_norm", (f"{h}.ln_1",), True)
            yield from _weights_and_biases(f"{o}.attn.qkv", (f"{h}.attn.c_attn",), True, transposed=True)
            yield from _weights_and_biases(f"{o}.attn.proj", (f"{h}.attn.c_proj",), True, transposed=True)
            yield from _weights_and_biases(f"{o}.mlp_norm", (f"{h}.ln_2",), True)
            yield from _weights_and_biases(f"{o}.mlp.fc", (f"{h}.mlp.c_fc",), True, transposed=True)
            yield from _weights_and_biases(f"{o}.mlp.proj", (f"{h}.mlp.c_proj",), True, transposed=True)
        yield from _weights_and_biases("norm", ("transformer.ln_f",), True)
        yield "head.weight", ("lm_head.weight",), False
    elif family == "llama":
        yield "embed.tokens.weight", ("model.embed_tokens.weight",), False
        for i in range(cfg.num_layers):
            h, o = f"model.layers.{i}", f"layers.{i}"
            yield f"{o}.attn_norm.weight", (f"{h}.input_layernorm.weight",), False
            qkv = tuple(f"{h}.self_attn.{p}_proj" for p in "qkv")
            yield from _weights_and_biases(f"{o}.attn.qkv", qkv, b)
            yield from _weights_and_biases(f"{o}.attn.proj", (f"{h}.self_attn.o_proj",), b)
            yield f"{o}.mlp_norm.weight", (f"{h}.post_attention_layernorm.weight",), False
            yield from _weights_and_biases(f"{o}.mlp.fc", (f"{h}.mlp.gate_proj", f"{h}.mlp.up_proj"), b)
            yield from _weights_and_biases(f"{o}.mlp.proj", (f"{h}.mlp.down_proj",), b)
        yield "norm.weight", ("model.norm.weight",), False
        yield "head.weight", ("lm_head.weight",), False
    elif family == "deberta":
        yield from _deberta_table(cfg, legacy_head=kind == "deberta-legacy")
    else:
        base = "roberta" if kind == "roberta" else "bert"
        e = f"{base}.embeddings"
        yield "embed.tokens.weight", (f"{e}.word_embeddings.weight",), False
        yield "embed.positions.weight", (f"{e}.position_embeddings.weight",), False
        if cfg.type_vocab_size:
            yield "embed.token_types.weight", (f"{e}.token_type_embeddings.weight",), False
        yield from _weights_and_biases("embed.norm", (f"{e}.LayerNorm",), True)
        yield from _bert_layers(cfg, base, ("query", "key", "value"))
        if kind == "roberta":
            yield from _weights_and_biases("head.dense", ("lm_head.dense",), True)
            yield from _weights_and_biases("head.norm", ("lm_head.layer_norm",), True)
            yield "head.decoder.weight", ("lm_head.decoder.weight",), False
            yield "head.decoder.bias", ("lm_head.bias",), False
        else:
            yield from _weights_and_biases("head.dense", ("cls.predictions.transform.dense",), True)
            yield from _weights_and_biases("head.norm", ("cls.predictions.transform.LayerNorm",), True)
            yield "head.decoder.weight", ("cls.predictions.decoder.weight",), False
            yield "head.decoder.bias", ("cls.predictions.bias",), False


def _bert_layers(cfg: ModelConfig, base: str, qkv: tuple[str, str, str]):
    """BERT's post-norm layers as BERT, RoBERTa and DeBERTa name them (``qkv``: the names of the
    three attention matrices)."""
    for i in range(cfg.num_layers):
        h, o = f"{base}.encoder.layer.{i}", f"layers.{i}"
        yield from _weights_and_biases(f"{o}.attn.qkv", tuple(f"{h}.attention.self.{p}" for p in qkv), True)
        yield from _weights_and_biases(f"{o}.attn.proj", (f"{h}.attention.output.dense",), True)
        yield from _weights_and_biases(f"{o}.attn_norm", (f"{h}.attention.output.LayerNorm",), True)
        yield from _weights_and_biases(f"{o}.mlp.fc", (f"{h}.intermediate.dense",), True)
        yield from _weights_and_biases(f"{o}.mlp.proj", (f"{h}.output.dense",), True)
        yield from _weights_and_biases(f"{o}.mlp_norm", (f"{h}.output.LayerNorm",), True)


def _deberta_table(cfg: ModelConfig, legacy_head: bool):
    """DebertaV2ForMaskedLM: BERT's layer names with q/k/v as *_proj, the distance table and its norm
    in the encoder, and the MLM head as DeBERTa wrote it (``lm_predictions``, what the released
    checkpoints hold) or, with ``legacy_head``, as transformers' default class names it (``cls``)."""
    e = "deberta.embeddings"
    yield "embed.tokens.weight", (f"{e}.word_embeddings.weight",), False
    if cfg.type_vocab_size:
        yield "embed.token_types.weight", (f"{e}.token_type_embeddings.weight",), False
    yield from _weights_and_biases("embed.norm", (f"{e}.LayerNorm",), True)
    yield "position.embedding.weight", ("deberta.encoder.rel_embeddings.weight",), False
    yield from _weights_and_biases("position.norm", ("deberta.encoder.LayerNorm",), True)
    yield from _bert_layers(cfg, "deberta", ("query_proj", "key_proj", "value_proj"))
    head = "cls.predictions" if legacy_head else "lm_predictions.lm_head"
    transform = f"{head}.transform" if legacy_head else head
    yield from _weights_and_biases("head.dense", (f"{transform}.dense",), True)
    yield from _weights_and_biases("head.norm", (f"{transform}.LayerNorm",), True)
    yield "head.decoder.weight", (f"{head}.decoder.weight" if legacy_head else f"{e}.word_embeddings.weight",), False
    yield "head.decoder.bias", (f"{head}.bias",), False


def config_from_hf(hf_cfg) -> ModelConfig:
    """Our config for a transformers config, or a ValueError saying what is not supported."""
    cfg = _config_from_hf(hf_cfg)
    family = family_of(cfg)
    if family != MODEL_TYPES.get(hf_cfg.model_type):
        raise ValueError(f"{hf_cfg.model_type} model mapped to a {family}-shaped config")
    return cfg


LEGACY_NAMES = {"LayerNorm.weight": "LayerNorm.gamma", "LayerNorm.bias": "LayerNorm.beta"}
"""What transformers renames in every model it loads: older BERT files' names for a LayerNorm's tensors."""


class Renamed(Mapping):
    """Our tensors by name, each made when asked from an HF state dict or a lazy source of one (such
    as pretrain.shards.ShardedWeights over an HF folder). ``table``: our name -> (the HF tensors it
    concatenates row-wise, whether each is stored transposed); ``skip``: HF name -> rows before
    position 0 (left out); ``scale``: our name -> a factor on its first HF tensor (in fp32). A name
    saved without the base model's prefix (``h.0...`` for ``transformer.h.0...``, as older hub
    checkpoints have them) is found too."""

    def __init__(self, hf: Mapping, table: dict[str, tuple[tuple[str, ...], bool]], skip: dict[str, int] | None = None,
                 scale: dict[str, float] | None = None):  # fmt: skip
        self._hf, self._table, self._skip, self._scale = hf, table, skip or {}, scale or {}

    def _key(self, hf_name: str) -> str:
        """The name as the source has it: with the base model's prefix or without, and a LayerNorm's
        ``weight``/``bias`` also as the ``gamma``/``beta`` of older BERT files (transformers renames
        them as it loads); a KeyError naming it where it has none of these."""
        for name in dict.fromkeys((hf_name, hf_name.split(".", 1)[-1])):
            if name in self._hf:
                return name
            for ours, older in LEGACY_NAMES.items():
                if name.endswith(ours) and name.removesuffix(ours) + older in self._hf:
                    return name.removesuffix(ours) + older
        raise KeyError(f"the weights have no {hf_name}")

    def has_hf(self, hf_name: str) -> bool:
        try:
            return bool(self._key(hf_name))
        except KeyError:
            return False

    def __contains__(self, name: object) -> bool:  # Mapping's would make the tensor
        return name in self._table

    def hf(self, hf_name: str) -> torch.Tensor:
        """The source's tensor of that HF name (its rows before position 0 left out)."""
        return self._hf[self._key(hf_name)][self._skip.get(hf_name, 0) :]

    def __getitem__(self, name: str) -> torch.Tensor:
        hf_names, transposed = self._table[name]
        parts = [self.hf(h).t() if transposed else self.hf(h) for h in hf_names]
        if name in self._scale:
            parts = [p.float() for p in parts]
            parts[0] = parts[0] * self._scale[name]
        return (torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]).contiguous()

    def shape(self, name: str) -> tuple[int, ...]:
        """Without reading the data where the source can say (a header)."""
        hf_names, transposed = self._table[name]
        shapes = [tuple(self._source_shape(h)) for h in hf_names]
        shapes = [(s[0] - self._skip.get(h, 0), *s[1:]) for h, s in zip(hf_names, shapes, strict=True)]
        shapes = [s[::-1] if transposed else s for s in shapes]
        return (sum(s[0] for s in shapes), *shapes[0][1:])

    def _source_shape(self, hf_name: str):
        key = self._key(hf_name)
        return self._hf.shape(key) if hasattr(self._hf, "shape") else self._hf[key].shape

    def __iter__(self):
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)


class FromHF(Renamed):
    """The tensors of our decoder or encoder (GPT-2, LLaMA, BERT, DeBERTa families) from theirs: fused
    matrices concatenated, GPT-2's transposed ones turned. A tied output matrix is not listed.
    ``hf_cfg``: the HF config, where the names or the position rows differ from the family's own
    (RoBERTa)."""

    def __init__(self, cfg: ModelConfig, hf: Mapping, hf_cfg=None):
        self._width = cfg.d_model
        kind = hf_cfg.model_type if hf_cfg is not None else None
        if kind == "deberta-v2" and "cls.predictions.bias" in hf:  # transformers' legacy=True head
            kind = "deberta-legacy"
        table = {name: (hf_names, transposed) for name, hf_names, transposed in _table(family_of(cfg), cfg, kind)
                 if name not in cfg.tied_output_keys}  # fmt: skip
        offset = position_offset(hf_cfg) if hf_cfg is not None else 0
        positions = table.get("embed.positions.weight")
        super().__init__(hf, table, skip={positions[0][0]: offset} if positions and offset else None)
        heads = [name for name in table if name.startswith("head.")]
        self.body_only = bool(heads) and not any(self.has_hf(h) for name in heads for h in table[name][0])
        """The folder holds the stack without its LM head (BertModel, BertForSequenceClassification,
        LlamaModel): ``head.*`` is not listed."""
        if self.body_only:
            self._table = {name: v for name, v in table.items() if name not in heads}

    def pooler(self) -> dict | None:
        """The folder's dense layer on the first token, {"weight", "bias"}, or None: BERT's and
        RoBERTa's pooler (pretrained with next-sentence prediction, or a classifier's), a DeBERTa
        classifier's ContextPooler. transformers' XForSequenceClassification starts from it."""
        name = next((k for k in self._hf if k.endswith("pooler.dense.weight")), None)
        if name is None or tuple(self._hf[name].shape) != (self._width, self._width):  # a wider ContextPooler: not ours
            return None
        return {"weight": self._hf[name], "bias": self._hf[name.removesuffix("weight") + "bias"]}


def from_hf(hf_model) -> tuple[ModelConfig, Transformer]:
    """Our config and model holding the same weights as ``hf_model`` (same dtype, on CPU)."""
    cfg = config_from_hf(hf_model.config)
    hf_sd = hf_model.state_dict()
    model = Transformer(cfg).to(hf_sd[next(iter(hf_sd))].dtype)
    ours = dict(FromHF(cfg, hf_sd, hf_model.config))
    for key in cfg.tied_output_keys:
        ours[key] = ours["embed.tokens.weight"]
    model.load_state_dict(ours, strict=True)
    return cfg, model


def hf_tensors(cfg: ModelConfig, ours: Mapping, take: Callable = lambda t: t,
               body_only: bool = False) -> Iterator[tuple[str, Callable]]:  # fmt: skip
    """(HF name, make the tensor) for every tensor of the HF model, from our tensors by name,
    ``take`` turning each into a tensor when it is made (for lazy sources): an export streams
    them one at a time. A tied output matrix is left out (transformers ties it when it loads).
    ``body_only``: the stack without its LM head (a tagger's body, under the same names)."""
    family = family_of(cfg)
    q_dim, kv_dim = cfg.num_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim

    def part(name: str, index: int, count: int, transposed: bool):
        def make():
            whole = take(ours[name])
            sizes = (q_dim, kv_dim, kv_dim) if count == 3 else [whole.shape[0] // count] * count
            piece = whole.split(sizes, dim=0)[index] if count > 1 else whole
            return (piece.t() if transposed else piece).contiguous()

        return make

    for name, hf_names, transposed in _table(family, cfg):
        if name in cfg.tied_output_keys or (body_only and name.startswith("head.")):
            continue
        for i, h in enumerate(hf_names):
            yield h, part(name, i, len(hf_names), transposed)
    if family == "bert" and not cfg.type_vocab_size:  # BERT always has a segment table; ours adds nothing
        yield "bert.embeddings.token_type_embeddings.weight", lambda: torch.zeros(1, cfg.d_model)


def row_part(ours: Mapping, name: str, index: int, count: int, take: Callable = lambda t: t,
             then: Callable = lambda t: t) -> Callable[[], torch.Tensor]:  # fmt: skip
    """Makes, when called, part ``index`` of our tensor ``name`` cut row-wise into ``count`` equal
    parts (one of the HF tensors a fused matrix holds), ``then`` applied; ``take`` turns what
    ``ours`` holds into a tensor (a lazy source's)."""

    def make() -> torch.Tensor:
        whole = take(ours[name])
        return then(whole.split(whole.shape[0] // count, dim=0)[index]).contiguous()

    return make


def filled(hf_cls, hf_cfg, makes: Mapping[str, Callable], dtype: torch.dtype):
    """A model of ``hf_cls`` holding what ``makes`` makes for each name of its state dict, in eval
    mode; a tied parameter that ``makes`` gives a tensor of its own is untied (see saved_names)."""
    hf = hf_cls(hf_cfg)
    for name in _untied(hf, makes):
        module, attr = name.rsplit(".", 1)
        setattr(hf.get_submodule(module), attr, torch.nn.Parameter(makes[name]()))
    hf.load_state_dict({k: makes[k]() for k in hf.state_dict()}, strict=True)
    return hf.to(dtype).eval()


def saved_names(hf_cls, hf_cfg, makes: Mapping[str, Callable] | None = None) -> list[str]:
    """The names transformers saves a model of ``hf_cls`` under, in its order: each parameter once
    (a tied one under its first name; under each of its names where ``makes`` gives them tensors of
    their own, which transformers then reads untied), then the buffers it keeps in its state dict.
    Read from a model built on the meta device, so nothing is allocated."""
    with torch.device("meta"):
        model = hf_cls(hf_cfg)
    kept = model.state_dict()
    untied = _untied(model, makes or {})
    return [n for n, _ in model.named_parameters() if n not in untied] + untied + \
        [n for n, _ in model.named_buffers() if n in kept]  # fmt: skip


def _untied(model, makes: Mapping[str, Callable]) -> list[str]:
    """The names of ``model``'s tied parameters that ``makes`` makes apart from the name they are
    tied to (the first under which the model lists the parameter)."""
    first: dict[int, str] = {}
    untied = []
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) not in first:
            first[id(param)] = name
        elif name in makes and makes[name] is not makes.get(first[id(param)]):
            untied.append(name)
    return untied


def _class_prefix(cfg: ModelConfig, family: str) -> str:
    if family == "llama" and cfg.sliding_window:
        return "Mistral"
    return {"gpt2": "GPT2", "llama": "Llama", "bert": "Bert", "deberta": "DebertaV2"}[family]


class SequenceHead(NamedTuple):
    """transformers' XForSequenceClassification for a model's family, as finetune's Classifier
    builds it (task.head=hf). Its body goes under the LM class's names."""

    cls: str
    pooling: str
    """The token it reads: first ([CLS]) or last (the last that is not padding)."""
    pooler: str | None
    """The activation of its dense layer on that token (BERT's pooler, DeBERTa's ContextPooler); None: none."""
    pooler_name: str | None
    """That layer's name in the class."""
    head: str
    """The name of the linear layer that gives the logits."""
    bias: bool


def sequence_head(cfg: ModelConfig) -> SequenceHead | None:
    """The sequence classifier of this model's HF family; None for a model of none (and for an
    encoder-decoder, whose HF classes classify the decoder's output at the last end-of-text)."""
    if cfg.arch == "encoder-decoder":
        return None
    try:
        family = family_of(cfg)
    except ValueError:
        return None
    name = f"{_class_prefix(cfg, family)}ForSequenceClassification"
    if family == "bert":
        return SequenceHead(name, "first", "tanh", "bert.pooler.dense", "classifier", True)
    if family == "deberta":
        return SequenceHead(name, "first", "gelu", "pooler.dense", "classifier", True)
    return SequenceHead(name, "last", None, None, "score", False)


def token_head(cfg: ModelConfig, kind: str) -> tuple[str, str, str | None]:
    """(the transformers class of a fine-tuning ``kind`` whose head reads every token, tag or qa,
    with this model's body; its head's name; the name its body goes under where it is not the LM
    class's). Each is the body, then a linear layer with a bias, as ours."""
    family = family_of(cfg)
    shape = _class_prefix(cfg, family)
    if kind == "qa":  # LLaMA's keeps the name its first release gave the body
        return f"{shape}ForQuestionAnswering", "qa_outputs", "transformer" if shape == "Llama" else None
    return f"{shape}ForTokenClassification", "score" if family == "llama" else "classifier", None


def hf_config(cfg: ModelConfig):
    """The transformers config of the HF class this model maps to."""
    return _config_to_hf(cfg)


def to_hf(model: Transformer):
    """The transformers model (GPT2LMHeadModel, LlamaForCausalLM or MistralForCausalLM,
    BertForMaskedLM or DebertaV2ForMaskedLM) with our weights."""
    import transformers as tf

    cfg = model.cfg
    family = family_of(cfg)
    hf_cls = {"gpt2": tf.GPT2LMHeadModel, "llama": tf.LlamaForCausalLM, "bert": tf.BertForMaskedLM,
              "deberta": tf.DebertaV2ForMaskedLM}[family]  # fmt: skip
    if family == "llama" and cfg.sliding_window:
        hf_cls = tf.MistralForCausalLM
    hf_model = hf_cls(_config_to_hf(cfg)).to(model.embed.tokens.weight.dtype)
    out = {name: make().clone() for name, make in hf_tensors(cfg, model.state_dict())}
    if family == "bert":
        out["cls.predictions.decoder.bias"] = out["cls.predictions.bias"]
    missing, _ = hf_model.load_state_dict(out, strict=False)
    missing = [k for k in missing if not (cfg.tie_embeddings and k in _hf_tied_keys(family))]
    if missing:
        raise RuntimeError(f"no weights for HF parameters {missing}")
    if cfg.tie_embeddings:
        hf_model.tie_weights()
    return hf_model.eval()


def _hf_tied_keys(family: str) -> set[str]:
    return {"lm_head.weight", "cls.predictions.decoder.weight"}

"""Exchange with HF transformers' T5ForConditionalGeneration (T5 and T5 v1.1), both ways.

    cfg, model = t5_from_hf(hf_model)
    hf_model = t5_to_hf(model)

Where T5 differs from our stacks the conversion folds the difference into the weights, so both
compute the same function:
- T5 does not scale attention scores by 1/sqrt(head_dim) (its init does): our query rows are
  T5's times sqrt(head_dim).
- The original T5 multiplies the decoder's output by d_model**-0.5 before its output layer
  (transformers: config.scale_decoder_outputs; T5 v1.1 does not): we keep that scale in our output
  matrix. An output layer that is neither the embedding nor the embedding times d_model**-0.5 (T5
  v1.1's and FLAN-T5's are their own) is written as T5's own ``lm_head.weight``, unscaled, which
  transformers reads untied.
- T5's relative bias lives in the first block of each stack; ours is each stack's position module.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

from .config import ModelConfig
from .hf import Renamed, filled, row_part
from .seq2seq import EncoderDecoder

ACTS = {"relu": "relu", "gated-gelu": "geglu_tanh"}


def t5_config_from_hf(hf_cfg) -> ModelConfig:
    proj = hf_cfg.feed_forward_proj
    if proj not in ACTS:
        raise ValueError(f"T5 feed_forward_proj={proj!r} is not supported; use one of {list(ACTS)}")
    if hf_cfg.d_kv * hf_cfg.num_heads != hf_cfg.d_model:
        raise ValueError(f"T5 d_kv={hf_cfg.d_kv} x num_heads={hf_cfg.num_heads} must equal d_model={hf_cfg.d_model}")
    return ModelConfig(
        arch="encoder-decoder", vocab_size=hf_cfg.vocab_size, d_model=hf_cfg.d_model, num_layers=hf_cfg.num_layers,
        num_decoder_layers=hf_cfg.num_decoder_layers, num_heads=hf_cfg.num_heads, ffn_hidden_size=hf_cfg.d_ff,
        max_seq_len=getattr(hf_cfg, "n_positions", None) or 512, position="relative",
        relative_num_buckets=hf_cfg.relative_attention_num_buckets,
        relative_max_distance=hf_cfg.relative_attention_max_distance, norm="rmsnorm",
        norm_eps=hf_cfg.layer_norm_epsilon, norm_position="pre", mlp=ACTS[proj], bias=False, tie_embeddings=False,
        dropout=0.0, attention_dropout=0.0,
    )  # fmt: skip


def _pairs(cfg: ModelConfig) -> list[tuple[str, list[str], float]]:
    """(our parameter, the T5 parameters it concatenates row-wise, the factor on the first rows)."""
    q_scale = math.sqrt(cfg.head_dim)
    mlp_in = ["wi_0", "wi_1"] if cfg.gated else ["wi"]
    bias = "block.0.layer.0.SelfAttention.relative_attention_bias.weight"  # the first block's, shared
    out = [("embed.tokens.weight", ["shared.weight"], 1.0),
           ("encoder_position.embedding.weight", [f"encoder.{bias}"], 1.0),
           ("decoder_position.embedding.weight", [f"decoder.{bias}"], 1.0),
           ("encoder_norm.weight", ["encoder.final_layer_norm.weight"], 1.0),
           ("decoder_norm.weight", ["decoder.final_layer_norm.weight"], 1.0),
           ("head.weight", ["lm_head.weight"], 1.0)]  # fmt: skip
    for stack, n in (("encoder", cfg.num_layers), ("decoder", cfg.decoder_layers)):
        mlp_layer = 1 if stack == "encoder" else 2
        for i in range(n):
            t5, ours = f"{stack}.block.{i}.layer", f"{stack}.{i}"
            attn = f"{t5}.0.SelfAttention"
            out += [(f"{ours}.attn_norm.weight", [f"{t5}.0.layer_norm.weight"], 1.0),
                    (f"{ours}.attn.qkv.weight", [f"{attn}.q.weight", f"{attn}.k.weight", f"{attn}.v.weight"], q_scale),
                    (f"{ours}.attn.proj.weight", [f"{attn}.o.weight"], 1.0),
                    (f"{ours}.mlp_norm.weight", [f"{t5}.{mlp_layer}.layer_norm.weight"], 1.0),
                    (f"{ours}.mlp.fc.weight", [f"{t5}.{mlp_layer}.DenseReluDense.{w}.weight" for w in mlp_in], 1.0),
                    (f"{ours}.mlp.proj.weight", [f"{t5}.{mlp_layer}.DenseReluDense.wo.weight"], 1.0)]  # fmt: skip
            if stack == "decoder":
                cross = f"{t5}.1.EncDecAttention"
                out += [(f"{ours}.cross_norm.weight", [f"{t5}.1.layer_norm.weight"], 1.0),
                        (f"{ours}.cross_attn.q.weight", [f"{cross}.q.weight"], q_scale),
                        (f"{ours}.cross_attn.kv.weight", [f"{cross}.k.weight", f"{cross}.v.weight"], 1.0),
                        (f"{ours}.cross_attn.proj.weight", [f"{cross}.o.weight"], 1.0)]  # fmt: skip
    return out


def t5_tensors(cfg: ModelConfig, hf_cfg, sd: Mapping) -> Renamed:
    """Our EncoderDecoder's tensors by name, each made when asked from T5ForConditionalGeneration's
    (``sd``: its state dict, or an HF folder's weights read lazily). The output layer is the
    folder's ``lm_head.weight`` where it has one (T5 v1.1, FLAN-T5), else the shared embedding, as
    transformers loads it."""
    table = {name: (tuple(keys), False) for name, keys, _ in _pairs(cfg)}
    scale = {name: first for name, _, first in _pairs(cfg) if first != 1.0}
    if "lm_head.weight" not in sd:  # a tied folder stores only shared.weight
        table["head.weight"] = (("shared.weight",), False)
    if getattr(hf_cfg, "scale_decoder_outputs", hf_cfg.tie_word_embeddings):  # the original T5's output scale
        scale["head.weight"] = cfg.d_model**-0.5
    return Renamed(sd, table, scale=scale)


def t5_from_hf(hf_model) -> tuple[ModelConfig, EncoderDecoder]:
    """A T5ForConditionalGeneration -> (our config, our EncoderDecoder with its weights)."""
    cfg = t5_config_from_hf(hf_model.config)
    sd = hf_model.state_dict()
    model = EncoderDecoder(cfg).to(sd["shared.weight"].dtype)
    model.load_state_dict(dict(t5_tensors(cfg, hf_model.config, sd)), strict=True)  # copied in the model's dtype
    return cfg, model.eval()


def t5_config(cfg: ModelConfig, **options):
    """The T5Config of our encoder-decoder's shape (``options`` added); a ValueError naming what T5
    has no equivalent of."""
    from transformers import T5Config

    act = {v: k for k, v in ACTS.items()}.get(cfg.mlp)
    want = dict(position="relative", norm="rmsnorm", norm_position="pre", bias=False, scale_embeddings=False,
                sliding_window=None, global_tokens=0, linear_attention=None, kv_heads=cfg.num_heads,
                act=act is not None)  # fmt: skip
    have = {k: (getattr(cfg, k) if k != "act" else act is not None) for k in want}
    off = {k: have[k] for k in want if have[k] != want[k]}
    if off:
        raise ValueError(f"T5 has no equivalent of {off}: it needs {dict((k, want[k]) for k in off)}")
    return T5Config(vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.head_dim, d_ff=cfg.ffn_size,
                    num_layers=cfg.num_layers, num_decoder_layers=cfg.decoder_layers, num_heads=cfg.num_heads,
                    relative_attention_num_buckets=cfg.relative_num_buckets,
                    relative_attention_max_distance=cfg.relative_max_distance, dropout_rate=0.0,
                    layer_norm_epsilon=cfg.norm_eps, feed_forward_proj=act, **options)  # fmt: skip


def _t5_makes(cfg: ModelConfig, ours: Mapping, names, take: Callable = lambda t: t) -> dict[str, Callable]:
    """T5's tensors of ours, each made when asked (T5 name -> make), for our parameters ``names``:
    the scale on T5's query rows undone, the fused matrices split; ``take`` turns what ``ours``
    holds into a tensor (a lazy source's)."""
    makes = {}
    for name, keys, first in _pairs(cfg):
        if name not in names:
            continue
        for i, key in enumerate(keys):
            unscale = (lambda t, first=first: t / first) if i == 0 else (lambda t: t)
            makes[key] = row_part(ours, name, i, len(keys), take, unscale)
    return makes


def t5_tagger_weights(cfg: ModelConfig, body: Mapping, head: Mapping, take: Callable = lambda t: t) -> dict:
    """T5ForTokenClassification's tensors, each made when asked (every name of its state dict ->
    make), for our encoder-decoder's tagger (task.kind tag): its encoder (``body``, our names ->
    tensors; the decoder is not part of it) and its linear layer (``head``: weight and bias), ``take``
    turning what they hold into tensors. T5's class reads the encoder's output as ours does."""
    t5_config(cfg)  # what T5 has no equivalent of is a ValueError
    encoder = {n for n, _, _ in _pairs(cfg) if n.startswith(("embed.", "encoder"))}
    makes = {f"transformer.{k}": make for k, make in _t5_makes(cfg, body, encoder, take).items()}
    makes["transformer.encoder.embed_tokens.weight"] = makes["transformer.shared.weight"]
    for part in ("weight", "bias"):
        makes[f"classifier.{part}"] = row_part(head, part, 0, 1, take)
    return makes


def t5_hf_weights(cfg: ModelConfig, ours: Mapping, take: Callable = lambda t: t) -> tuple[object, dict[str, Callable]]:
    """T5ForConditionalGeneration's config for our encoder-decoder (relative positions, RMSNorm, no
    biases), and its tensors each made when asked (every name of its state dict -> make) from ours
    by name, ``take`` turning what ``ours`` holds into a tensor: an export streams them (see
    pretrain.model.hf.saved_names: an output layer of its own is saved as ``lm_head.weight``). A
    ValueError names what T5 has no equivalent of."""
    t5_config(cfg)  # what T5 has no equivalent of, before anything else
    embedding = take(ours["embed.tokens.weight"])
    head = embedding if "head.weight" in cfg.tied_output_keys else take(ours["head.weight"])
    scaled = not torch.equal(head, embedding) and torch.allclose(head, embedding * cfg.d_model**-0.5, rtol=1e-6,
                                                                 atol=0.0)  # fmt: skip
    own = not scaled and not torch.equal(head, embedding)  # T5 v1.1's and FLAN-T5's output layer
    del embedding, head
    hf_cfg = t5_config(cfg, tie_word_embeddings=scaled, decoder_start_token_id=0, pad_token_id=0)
    names = {n for n, _, _ in _pairs(cfg)} - (set() if own else {"head.weight"})  # a tied head: the embedding
    makes = _t5_makes(cfg, ours, names, take)
    for tied in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"):
        makes.setdefault(tied, makes["shared.weight"])
    return hf_cfg, makes


def t5_to_hf(model: EncoderDecoder):
    """Our EncoderDecoder (relative positions, RMSNorm, no biases) -> T5ForConditionalGeneration."""
    from transformers import T5ForConditionalGeneration

    hf_cfg, makes = t5_hf_weights(model.cfg, model.state_dict())
    return filled(T5ForConditionalGeneration, hf_cfg, makes, next(model.parameters()).dtype)

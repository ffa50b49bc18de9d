"""Exchange with HF transformers' BartForConditionalGeneration, both ways.

    cfg, model = bart_from_hf(hf_model)
    hf_model = bart_to_hf(model)

BART (Lewis et al. 2019) is the original encoder-decoder with GPT's choices: learned positions
(each stack its own table), post-norm blocks with a LayerNorm on the embeddings (each stack its
own), GELU, biases everywhere and the output layer tied to the shared token embedding. Our
EncoderDecoder with that config computes the same function; the differences are of layout:
- BART's position tables have two rows before position 0 (fairseq's padding offset) that no input
  reads: ours is the table from its third row; back in BART the two rows are zero.
- BART adds ``final_logits_bias`` (a buffer, zero unless a checkpoint sets it) to the logits; ours
  has no output bias, so a nonzero one is refused.
- BART's LayerNorms have eps 1e-5, whatever the config says.
- Both stacks look tokens up in the shared table; a BART whose stacks have tables of their own
  (transformers unties them with tie_word_embeddings false) is refused unless they are equal.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from .config import ModelConfig
from .hf import Renamed, filled, row_part
from .seq2seq import EncoderDecoder

ACTS = {"gelu": "gelu", "relu": "relu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
OFFSET = 2  # rows of BART's position tables before position 0
SHAPE = dict(arch="encoder-decoder", position="learned", norm="layernorm", norm_eps=1e-5, norm_position="post",
             bias=True, sliding_window=None, global_tokens=0, linear_attention=None, type_vocab_size=0)  # fmt: skip


def bart_config_from_hf(hf_cfg) -> ModelConfig:
    """Our config for a transformers BartConfig, or a ValueError saying what has no equivalent."""
    act = hf_cfg.activation_function
    if act not in ACTS:
        raise ValueError(f"BART activation_function={act!r} is not supported; use one of {list(ACTS)}")
    pairs = {"attention heads": (hf_cfg.encoder_attention_heads, hf_cfg.decoder_attention_heads),
             "ffn dims": (hf_cfg.encoder_ffn_dim, hf_cfg.decoder_ffn_dim)}  # fmt: skip
    for what, (enc, dec) in pairs.items():
        if enc != dec:
            raise ValueError(f"BART with encoder {what} {enc} and decoder {what} {dec}: both stacks must match")
    return ModelConfig(
        **SHAPE, vocab_size=hf_cfg.vocab_size, d_model=hf_cfg.d_model, num_layers=hf_cfg.encoder_layers,
        num_decoder_layers=hf_cfg.decoder_layers, num_heads=hf_cfg.encoder_attention_heads,
        ffn_hidden_size=hf_cfg.encoder_ffn_dim, max_seq_len=hf_cfg.max_position_embeddings, mlp=ACTS[act],
        tie_embeddings=bool(getattr(hf_cfg, "tie_word_embeddings", True)),
        scale_embeddings=bool(hf_cfg.scale_embedding), dropout=float(hf_cfg.dropout),
        attention_dropout=float(hf_cfg.attention_dropout), init_std=float(hf_cfg.init_std),
        scaled_residual_init=False,
    )  # fmt: skip


def check_bart_shape(cfg: ModelConfig) -> None:
    """A ValueError naming what this config has that BART does not."""
    have = {**{k: getattr(cfg, k) for k in SHAPE}, "mlp": cfg.mlp, "kv_heads": cfg.kv_heads}
    want = {**SHAPE, "mlp": f"one of {sorted(set(ACTS.values()))}", "kv_heads": cfg.num_heads}
    off = {k: v for k, v in have.items() if (v not in ACTS.values() if k == "mlp" else v != want[k])}
    if off:
        raise ValueError(f"BART has no equivalent of {off}: it needs {({k: want[k] for k in off})}")


def _pairs(cfg: ModelConfig) -> list[tuple[str, list[str]]]:
    """(our tensor, the BART tensors it concatenates row-wise); position tables without the offset."""
    out = [("embed.tokens.weight", ["model.shared.weight"])]
    if not cfg.tie_embeddings:
        out.append(("head.weight", ["lm_head.weight"]))
    for stack, ours, n in (("encoder", "embed", cfg.num_layers), ("decoder", "decoder_embed", cfg.decoder_layers)):
        out.append((f"{ours}.positions.weight", [f"model.{stack}.embed_positions.weight"]))
        out += [(f"{ours}.norm.{w}", [f"model.{stack}.layernorm_embedding.{w}"]) for w in ("weight", "bias")]
        for i in range(n):
            bart, our = f"model.{stack}.layers.{i}", f"{stack}.{i}"
            modules = [("attn.qkv", [f"self_attn.{p}_proj" for p in "qkv"]), ("attn.proj", ["self_attn.out_proj"]),
                       ("attn_norm", ["self_attn_layer_norm"]), ("mlp.fc", ["fc1"]), ("mlp.proj", ["fc2"]),
                       ("mlp_norm", ["final_layer_norm"])]  # fmt: skip
            if stack == "decoder":
                modules += [("cross_attn.q", ["encoder_attn.q_proj"]), ("cross_attn.kv", ["encoder_attn.k_proj",
                            "encoder_attn.v_proj"]), ("cross_attn.proj", ["encoder_attn.out_proj"]),
                            ("cross_norm", ["encoder_attn_layer_norm"])]  # fmt: skip
            for w in ("weight", "bias"):
                out += [(f"{our}.{m}.{w}", [f"{bart}.{b}.{w}" for b in parts]) for m, parts in modules]
    return out


def bart_tensors(cfg: ModelConfig, hf_cfg, sd: Mapping) -> Renamed:
    """Our EncoderDecoder's tensors by name, each made when asked from BartForConditionalGeneration's
    (``sd``: its state dict, or an HF folder's safetensors read lazily, with names from BartModel
    too); a ValueError, reading only the tensors it is about, for what ours cannot hold."""
    table = {name: (tuple(keys), False) for name, keys in _pairs(cfg)}
    positions = [k for keys, _ in table.values() for k in keys if k.endswith("embed_positions.weight")]
    tensors = Renamed(sd, table, skip=dict.fromkeys(positions, OFFSET))
    if "final_logits_bias" in sd and sd["final_logits_bias"].any():
        raise ValueError("this BART adds a nonzero final_logits_bias to its logits; our output layer has no bias")
    shared = None
    for stack in ("encoder", "decoder"):  # transformers unties them too when tie_word_embeddings is false
        name = f"model.{stack}.embed_tokens.weight"
        if tensors.has_hf(name):
            shared = tensors.hf("model.shared.weight") if shared is None else shared
            if not torch.equal(tensors.hf(name), shared):
                raise ValueError(f"this BART's {stack} looks tokens up in a table of its own (model.{stack}."
                                 "embed_tokens differs from model.shared); ours has one token table for both stacks")
    return tensors


def bart_from_hf(hf_model) -> tuple[ModelConfig, EncoderDecoder]:
    """A BartForConditionalGeneration -> (our config, our EncoderDecoder with its weights)."""
    cfg = bart_config_from_hf(hf_model.config)
    ours = dict(bart_tensors(cfg, hf_model.config, hf_model.state_dict()))
    model = EncoderDecoder(cfg).to(ours["embed.tokens.weight"].dtype)
    if cfg.tie_embeddings:
        ours["head.weight"] = ours["embed.tokens.weight"]
    model.load_state_dict(ours, strict=True)
    return cfg, model.eval()


def bart_config_to_hf(cfg: ModelConfig):
    from transformers import BartConfig

    check_bart_shape(cfg)
    act = {"gelu": "gelu", "relu": "relu", "gelu_tanh": "gelu_new"}[cfg.mlp]
    return BartConfig(vocab_size=cfg.vocab_size, d_model=cfg.d_model, encoder_layers=cfg.num_layers,
                      decoder_layers=cfg.decoder_layers, encoder_attention_heads=cfg.num_heads,
                      decoder_attention_heads=cfg.num_heads, encoder_ffn_dim=cfg.ffn_size,
                      decoder_ffn_dim=cfg.ffn_size, max_position_embeddings=cfg.max_seq_len,
                      activation_function=act, scale_embedding=cfg.scale_embeddings, dropout=0.0,
                      attention_dropout=0.0, activation_dropout=0.0, init_std=cfg.init_std,
                      tie_word_embeddings=cfg.tie_embeddings, forced_eos_token_id=None)  # fmt: skip


def bart_hf_weights(cfg: ModelConfig, ours: Mapping,
                    take: Callable = lambda t: t) -> tuple[object, dict[str, Callable]]:  # fmt: skip
    """BartForConditionalGeneration's config for our encoder-decoder of BART's shape (learned
    positions, post-norm LayerNorm, biases), and its tensors each made when asked (every name of its
    state dict -> make) from ours by name, ``take`` turning what ``ours`` holds into a tensor: an
    export streams them (see pretrain.model.hf.saved_names). A ValueError names what BART has no
    equivalent of."""
    hf_cfg = bart_config_to_hf(cfg)

    def padded(positions: torch.Tensor) -> torch.Tensor:
        return torch.cat([positions.new_zeros(OFFSET, cfg.d_model), positions])

    makes = {"final_logits_bias": lambda: torch.zeros(1, cfg.vocab_size)}
    for name, keys in _pairs(cfg):
        for i, key in enumerate(keys):
            positions = key.endswith("embed_positions.weight")  # zero rows before position 0, which no input reads
            makes[key] = row_part(ours, name, i, len(keys), take, padded if positions else (lambda t: t))
    tied = ["model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight"]
    tied += ["lm_head.weight"] if cfg.tie_embeddings else []
    makes.update(dict.fromkeys(tied, makes["model.shared.weight"]))
    return hf_cfg, makes


def bart_to_hf(model: EncoderDecoder):
    """Our EncoderDecoder of BART's shape -> BartForConditionalGeneration."""
    from transformers import BartForConditionalGeneration

    hf_cfg, makes = bart_hf_weights(model.cfg, model.state_dict())
    return filled(BartForConditionalGeneration, hf_cfg, makes, next(model.parameters()).dtype)

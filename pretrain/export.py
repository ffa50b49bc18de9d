"""python -m pretrain.export RUN_OR_CHECKPOINT_DIR OUT_DIR [--max-shard-mib 5120]

Writes, from the newest complete checkpoint of a run (or the checkpoint given):
  OUT_DIR/consolidated/  the fp32 weights gathered from the ZeRO shards by DeepSpeed's zero_to_fp32
                         (lazy mode), as model.safetensors or, past --max-shard-mib, as
                         model-0000i-of-0000n.safetensors + model.safetensors.index.json;
                         config.yaml, tokenizer/
  OUT_DIR/hf/            an HF transformers directory (config.json, the weights laid out the same
                         way, tokenizer) for the GPT-2, LLaMA, BERT and DeBERTa families, T5 and
                         BART; a fine-tuned head as the family's class for it
                         (XForSequenceClassification, XForTokenClassification,
                         XForQuestionAnswering; T5ForTokenClassification)
Tensors are read and written one at a time, a shard at most held in memory.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path

import torch

from pretrain import checkpoint as ckpt
from pretrain.config import ConfigError, exit_on_config_error, load_config, save_config


def consolidated_tensors(tag_dir: Path) -> dict:
    """The fp32 tensors of a checkpoint by name, whatever its ZeRO stage and world size, read lazily:
    files are memory-mapped and a tensor is gathered from the ZeRO shards (DeepSpeed's zero_to_fp32
    lazy mode) only when ``materialize`` asks for it, so no process need hold the whole model."""
    from pretrain import safe_load

    cfg = ckpt.saved_config(tag_dir)
    try:
        if cfg.deepspeed.zero_stage == 0:  # no ZeRO shards: the module states hold the full model
            tensors = safe_load.load(tag_dir / "mp_rank_00_model_states.pt", map_location="cpu", mmap=True)["module"]
        else:
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            with safe_load.restricted_torch_load():
                tensors = get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name,
                                                                   lazy_mode=True)  # fmt: skip
        from pretrain.adapters import MergedAdapters, has_adapters

        if has_adapters(tensors):  # a LoRA fine-tuning checkpoint: read as the merged model
            return MergedAdapters(tensors, float(ckpt.saved_task(tag_dir).get("lora_alpha", 16.0)))
        return tensors
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: say which checkpoint, in one line
        raise ConfigError(f"checkpoint {tag_dir} cannot be read ({type(e).__name__}: {str(e)[:300]})") from None


def materialize(tensor) -> torch.Tensor:
    """A tensor from a lazy source (a memory-mapped tensor, or zero_to_fp32's gathered pseudo-tensor)."""
    return tensor.contiguous()


def consolidated_state_dict(tag_dir: Path) -> dict[str, torch.Tensor]:
    """The full fp32 state dict of a checkpoint, in memory."""
    try:
        return {name: materialize(t) for name, t in consolidated_tensors(tag_dir).items()}
    except Exception as e:  # noqa: BLE001 - a shard cut short shows when its tensors are read
        raise ConfigError(f"checkpoint {tag_dir} cannot be read ({type(e).__name__}: {str(e)[:300]})") from None


def load_weights(model, tensors, gather=None, skip: tuple[str, ...] = ()) -> None:
    """Copy named tensors (a state dict, or a lazy source: see consolidated_tensors) into ``model``
    one at a time. ``gather(params)`` (ZeRO-3, see pretrain.engine.partitioned_construction) makes
    each partitioned parameter whole while rank 0 writes it; the other ranks read nothing. A tied
    output matrix may be absent; anything else missing or extra is an error, before any copy.
    Parameters whose names start with one of ``skip`` are left as they are (a classifier's body
    has no LM head)."""
    import contextlib

    import torch.distributed as dist

    own = {k: p for k, p in model.named_parameters() if not k.startswith(skip)}  # tied: once
    saved = model.state_dict().keys()  # saved buffers (a Performer's draw) beside them: never partitioned
    buffers = [k for k, _ in model.named_buffers() if k in saved and not k.startswith(skip)]
    tied = model.cfg.tied_output_keys
    names = set(tensors.keys())
    missing = sorted(set(own) - names) + sorted(set(buffers) - names)
    unexpected = sorted(names - set(own) - set(buffers) - tied)
    if missing or unexpected:
        raise ConfigError(f"the weights do not fit the model: missing {missing}, unexpected {unexpected}")
    if buffers:  # through load_state_dict, so a module sees what it loads
        model.load_state_dict({k: materialize(tensors[k]) for k in buffers}, strict=False)
    writer = gather is None or not dist.is_initialized() or dist.get_rank() == 0
    for name, param in own.items():
        with gather([param]) if gather is not None else contextlib.nullcontext():
            if writer:
                with torch.no_grad():
                    param.copy_(materialize(tensors[name]).to(param.dtype))


def body_lacks(model_cfg) -> tuple[str, ...]:
    """Name prefixes of what a classifier's body leaves out: the LM head, and an encoder-decoder's
    decoder (its blocks, position module, norms and position table: all named ``decoder...``)."""
    return ("head.", "decoder") if model_cfg.arch == "encoder-decoder" else ("head.",)


class BodyWeights(Mapping):
    """A classification checkpoint's tensors seen as its body's: ``body.X`` as ``X``, the head left out."""

    def __init__(self, tensors: Mapping):
        self._tensors = tensors
        self._names = [k.removeprefix("body.") for k in tensors if k.startswith("body.")]

    def __getitem__(self, name: str):
        return self._tensors["body." + name]

    def shape(self, name: str) -> tuple[int, ...]:
        return shape_of(self._tensors, "body." + name)

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def load_model(state_dict: dict, model_cfg):
    """Our model with a consolidated state dict (a tied output matrix may be absent)."""
    from pretrain.model import build_model

    model = build_model(model_cfg)
    load_weights(model, state_dict)
    return model


def export(source: str | Path, out: str | Path, max_shard_bytes: int = 5 * 2**30) -> dict[str, Path]:
    """Stream a checkpoint into OUT/consolidated and OUT/hf tensor by tensor: each tensor is read
    from the ZeRO shards when its turn comes and written into safetensors files of at most
    ``max_shard_bytes``, so no process holds the whole model."""
    from pretrain.data.tokenizer import load_tokenizer
    from pretrain.model.hf import family_of, hf_config, hf_tensors
    from pretrain.shards import write_sharded

    tag_dir = ckpt.resolve(source, best=True)
    out = Path(out)
    folder = tag_dir.parent if tag_dir.parent.name == "checkpoints" else tag_dir  # a run's, or a lone checkpoint
    if out.resolve().is_relative_to(folder.resolve()):
        raise ConfigError(f"{out}: inside {folder}, where an export would be taken for (and pruned as) part of a "
                          "checkpoint; export to another folder")  # fmt: skip
    task = ckpt.saved_task(tag_dir)
    headed = (tag_dir / "labels.json").exists()  # a head on every token (tag, qa) or on the pooled one (classify)
    cfg = ckpt.saved_config(tag_dir)
    kind = task.get("kind", "classify")  # a fine-tuning run always writes it; a bare labels.json is a classifier's
    if headed and kind == "classify":
        check_sequence_head(tag_dir, cfg.model, task)
    print(f"exporting {ckpt.describe(tag_dir)}")
    tensors = consolidated_tensors(tag_dir)
    check_fits(BodyWeights(tensors) if headed else tensors, cfg.model, skip=body_lacks(cfg.model) if headed else ())
    tok = load_tokenizer(tag_dir / "tokenizer", what=f"the tokenizer of checkpoint {tag_dir}")
    cons = out / "consolidated"
    tied = cfg.model.tied_output_keys  # one tensor, stored once
    try:
        write_sharded(((name, lambda t=t: materialize(t)) for name, t in tensors.items() if name not in tied),
                      cons, max_shard_bytes)  # fmt: skip
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - a shard cut short shows when its tensors are read
        raise ConfigError(f"checkpoint {tag_dir} cannot be read ({type(e).__name__}: {str(e)[:300]})") from None
    save_config(cfg, cons / "config.yaml")
    tok.model_max_length = cfg.model.max_seq_len  # what the positions allow (transformers' default is 1e30)
    if cfg.model.type_vocab_size:  # BERT's segments: a tokenizer returns what model_input_names lists, and
        names = ["input_ids", "token_type_ids", "attention_mask"]  # ours, trained with tokenizers, lists no types
        tok.model_input_names, tok.init_kwargs["model_input_names"] = names, names  # (init_kwargs: saved)
    tok.save_pretrained(str(cons / "tokenizer"))
    written = {"checkpoint": tag_dir, "consolidated": cons}
    if cfg.model.arch == "encoder-decoder" and headed:  # a tagger or a question answerer: the encoder's output read
        if kind != "tag":
            print("no HF export: transformers' T5ForQuestionAnswering reads the decoder's output; this question "
                  "answerer reads the encoder's")  # fmt: skip
            return written
        labels = json.loads((tag_dir / "labels.json").read_text())
        return {**written, **_export_t5_tagger(tensors, cfg, tok, labels, task, out / "hf", max_shard_bytes)}
    if cfg.model.arch == "encoder-decoder":
        return {**written, **_export_seq2seq(cons, cfg, tok, out / "hf", max_shard_bytes)}
    try:
        family_of(cfg.model)
    except ValueError as e:
        print(f"no HF export: {e}")
        return written
    hf_dir = out / "hf"
    hf_cfg, ids = hf_config(cfg.model), special_token_ids(tok)
    for name, value in ids.items():
        setattr(hf_cfg, name, value)
    if headed:
        hf_head_config(hf_cfg, cfg.model, json.loads((tag_dir / "labels.json").read_text()), {**task, "kind": kind})
    hf_cfg.save_pretrained(str(hf_dir))
    if cfg.model.arch == "decoder" and not headed:  # generate() and pipelines stop at end-of-text and pad with it
        from transformers import GenerationConfig

        GenerationConfig(**ids).save_pretrained(str(hf_dir))
    write_sharded(head_tensors(cfg.model, tensors, kind) if headed else
                  hf_tensors(cfg.model, tensors, materialize),
                  hf_dir, max_shard_bytes)  # fmt: skip
    tok.save_pretrained(str(hf_dir))
    written["hf"] = hf_dir
    return written


def check_sequence_head(tag_dir: Path, model_cfg, task: dict) -> None:
    """A ConfigError unless a classifier's checkpoint (task.kind classify) is its model's HF sequence
    classifier: task.head=hf, a model of an HF family, and the pooling that class reads."""
    from pretrain.model.hf import family_of, sequence_head

    hf, head = sequence_head(model_cfg), ckpt.saved_head(task)
    pooling = task.get("pooling", "auto")
    pooling = hf.pooling if hf and pooling == "auto" else pooling
    if model_cfg.arch == "encoder-decoder":
        why = "an encoder-decoder's classifier reads its encoder alone, which no transformers class classifies"
    elif hf is None:
        try:
            family_of(model_cfg)
        except ValueError as e:
            why = str(e)
    elif head != "hf":
        why = (f"it was trained with task.head={head} (a linear layer with a bias), which {hf.cls} does not have; "
               "fine-tune with task.head=hf")  # fmt: skip
    elif pooling != hf.pooling:
        why = f"it pools the {pooling} token(s), and {hf.cls} reads the {hf.pooling}; fine-tune with task.pooling=auto"
    else:
        return
    raise ConfigError(f"{tag_dir} is a classifier's checkpoint that no transformers class computes: {why}. "
                      "python -m finetune.predict and finetune.evaluate read the checkpoint itself, and init_from "
                      "starts another fine-tuning from it")  # fmt: skip


def hf_head_config(hf_cfg, model_cfg, labels: list[str], task: dict) -> None:
    """A transformers config made that of a fine-tuning head: its class, the head's outputs by
    name (the labels; the tags; start and end), the dropout."""
    from pretrain.model.hf import sequence_head, token_head

    kind = task["kind"]
    hf_cfg.architectures = [sequence_head(model_cfg).cls if kind == "classify" else token_head(model_cfg, kind)[0]]
    hf_cfg.id2label = dict(enumerate(labels))
    hf_cfg.label2id = {name: i for i, name in enumerate(labels)}
    dropout = float(task.get("classifier_dropout", 0.1))
    hf_cfg.classifier_dropout = dropout
    if kind == "classify":
        hf_cfg.problem_type = "single_label_classification"
    if kind == "classify" and hf_cfg.model_type == "deberta-v2":  # its ContextPooler: no dropout of ours before it
        hf_cfg.cls_dropout, hf_cfg.pooler_dropout = dropout, 0.0
        hf_cfg.pooler_hidden_size, hf_cfg.pooler_hidden_act = model_cfg.d_model, "gelu"


def head_tensors(model_cfg, tensors: Mapping, kind: str):
    """(HF name, make the tensor) for the checkpoint of a fine-tuning head (task.kind classify, tag
    or qa): its body under the LM class's names (or the one the class gives it) without the LM
    head, then the head (and a sequence classifier's pooler) as the class names it."""
    from pretrain.model.hf import hf_tensors, sequence_head, token_head

    bias = True
    if kind == "classify":
        seq = sequence_head(model_cfg)
        head, base, bias = seq.head, None, seq.bias
        if seq.pooler_name:
            for part in ("weight", "bias"):
                yield f"{seq.pooler_name}.{part}", lambda part=part: materialize(tensors[f"pooler.{part}"])
    else:
        _, head, base = token_head(model_cfg, kind)
    for name, make in hf_tensors(model_cfg, BodyWeights(tensors), materialize, body_only=True):
        yield (f"{base}.{name.split('.', 1)[1]}" if base else name), make
    for part in ("weight", "bias") if bias else ("weight",):
        yield f"{head}.{part}", lambda part=part: materialize(tensors[f"classifier.{part}"])


def _export_seq2seq(consolidated: Path, cfg, tok, hf_dir: Path, max_shard_bytes: int) -> dict[str, Path]:
    """An encoder-decoder as T5ForConditionalGeneration (relative positions) or
    BartForConditionalGeneration (learned positions), streamed as the other families are: each
    tensor made from the consolidated weights when its turn comes, under the names (and in the
    order) transformers saves them."""
    import transformers

    from pretrain.model.hf import saved_names
    from pretrain.model.hf_bart import bart_hf_weights
    from pretrain.model.hf_t5 import t5_hf_weights
    from pretrain.shards import ShardedWeights, write_sharded

    bart = cfg.model.position == "learned"
    cls = transformers.BartForConditionalGeneration if bart else transformers.T5ForConditionalGeneration
    try:
        hf_cfg, makes = (bart_hf_weights if bart else t5_hf_weights)(cfg.model, ShardedWeights(consolidated),
                                                                     materialize)  # fmt: skip
    except ValueError as e:
        print(f"no HF export: {e}")
        return {}
    ids = special_token_ids(tok)
    for name, value in ids.items():
        setattr(hf_cfg, name, value)
    hf_cfg.decoder_start_token_id = ids.get("pad_token_id", 0)
    hf_cfg.architectures, hf_cfg.dtype = [cls.__name__], torch.float32  # the consolidated weights' dtype
    hf_cfg.save_pretrained(str(hf_dir))
    generation = transformers.GenerationConfig.from_model_config(hf_cfg)
    generation.update(**ids, decoder_start_token_id=hf_cfg.decoder_start_token_id)
    generation.save_pretrained(str(hf_dir))
    write_sharded(((name, makes[name]) for name in saved_names(cls, hf_cfg, makes)), hf_dir, max_shard_bytes)
    tok.save_pretrained(str(hf_dir))
    return {"hf": hf_dir}


def _export_t5_tagger(tensors: Mapping, cfg, tok, labels: list[str], task: dict, hf_dir: Path,
                      max_shard_bytes: int) -> dict[str, Path]:  # fmt: skip
    """An encoder-decoder's tagger as T5ForTokenClassification (T5's encoder, then a linear layer,
    as ours), streamed tensor by tensor."""
    from transformers import T5ForTokenClassification

    from pretrain.model.hf import saved_names
    from pretrain.model.hf_t5 import t5_config, t5_tagger_weights
    from pretrain.shards import write_sharded

    try:
        hf_cfg = t5_config(cfg.model, architectures=["T5ForTokenClassification"], id2label=dict(enumerate(labels)),
                           label2id={name: i for i, name in enumerate(labels)},
                           classifier_dropout=float(task.get("classifier_dropout", 0.1)),
                           **special_token_ids(tok))  # fmt: skip
    except ValueError as e:
        print(f"no HF export: {e}")
        return {}
    head = {part: tensors[f"classifier.{part}"] for part in ("weight", "bias")}
    makes = t5_tagger_weights(cfg.model, BodyWeights(tensors), head, materialize)
    hf_cfg.dtype = torch.float32  # the consolidated weights'
    hf_cfg.save_pretrained(str(hf_dir))
    write_sharded(((name, makes[name]) for name in saved_names(T5ForTokenClassification, hf_cfg)), hf_dir,
                  max_shard_bytes)  # fmt: skip
    tok.save_pretrained(str(hf_dir))
    return {"hf": hf_dir}


def special_token_ids(tok) -> dict[str, int]:
    """bos/eos/pad token ids of a tokenizer, as transformers' configs name them (those it has)."""
    ids = {f"{name}_token_id": getattr(tok, f"{name}_token_id", None) for name in ("bos", "eos", "pad")}
    return {k: v for k, v in ids.items() if v is not None}


def shape_of(tensors, name: str) -> tuple[int, ...]:
    """A tensor's shape from a source, without reading its data where the source can tell."""
    return tuple(tensors.shape(name) if hasattr(tensors, "shape") else tensors[name].shape)


def check_fits(tensors, model_cfg, skip: tuple[str, ...] = ()) -> None:
    """The names and shapes a model of ``model_cfg`` has are all there (read from the meta device),
    but for those starting with one of ``skip``."""
    from pretrain.model import build_model

    with torch.device("meta"):
        model = build_model(model_cfg)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith(skip)}
    tied = model_cfg.tied_output_keys
    missing = sorted(set(own) - set(tensors) - tied)
    unexpected = sorted(set(tensors) - set(own))
    wrong = [k for k in set(own) & set(tensors) if shape_of(tensors, k) != own[k]]
    if missing or unexpected or wrong:
        raise ConfigError(f"the weights do not fit the model: missing {missing}, unexpected {unexpected}, "
                          f"other shape {sorted(wrong)}")  # fmt: skip


def load_consolidated(folder: str | Path):
    """(RunConfig, model) from an export's consolidated/ folder."""
    from pretrain.shards import ShardedWeights

    folder = Path(folder)
    cfg = load_config(folder / "config.yaml")
    return cfg, load_model(ShardedWeights(folder), cfg.model)


@exit_on_config_error
def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m pretrain.export", description=__doc__.splitlines()[0])
    ap.add_argument("source", help="a run directory or checkpoint")
    ap.add_argument("out")
    ap.add_argument("--max-shard-mib", type=float, default=5 * 1024.0, help="largest safetensors file (MiB)")
    ns = ap.parse_args(sys.argv[1:] if argv is None else argv)
    if ns.max_shard_mib <= 0:
        raise ConfigError(f"--max-shard-mib {ns.max_shard_mib}: must be > 0")
    from pretrain.files import writable_folder

    writable_folder("OUT", ns.out)
    for what, path in export(ns.source, ns.out, int(ns.max_shard_mib * 2**20)).items():
        print(f"{what}: {path}")


if __name__ == "__main__":
    main()

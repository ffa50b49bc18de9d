"""Where a fine-tuning run's weights and tokenizer come from: a pretraining run or checkpoint
(DeepSpeed shards of any ZeRO stage and world size, consolidated by zero_to_fp32), an export's
consolidated folder, or an HF transformers directory."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from pretrain import checkpoint as ckpt
from pretrain.config import ConfigError
from pretrain.export import BodyWeights, body_lacks
from pretrain.model import ModelConfig
from pretrain.shards import PickledWeights, ShardedWeights, has_pickled_weights, has_weights


@dataclass
class Pretrained:
    model_cfg: ModelConfig
    tensors: Callable[[], Mapping]
    """Opens the weights: name -> tensor, read lazily where the format allows (memory-mapped
    safetensors, DeepSpeed shards through zero_to_fp32's lazy mode); see pretrain.export.load_weights."""
    tokenizer: object
    source: str
    body_only: bool = False
    """A classifier's checkpoint: the stack without its LM head (``head.*`` is not there), and for an
    encoder-decoder without its decoder."""
    prompt_template: str | list[str] | None = None
    """A fine-tuning checkpoint's task.prompt_template: how its prompts were written from columns."""
    prompt_column: str | None = None
    """A generation fine-tuning checkpoint's task.prompt_column (generate, seq2seq): the column a
    record of prompts holds its prompt in."""
    pooler: Mapping | None = None
    """An HF folder's pooler ({"weight", "bias"}; see pretrain.model.hf.FromHF.pooler), which a
    sequence classifier with that head (task.head=hf) starts from, as transformers' does."""

    @property
    def skip(self) -> tuple[str, ...]:
        """What load_weights leaves alone: what a classifier's body does not have."""
        return body_lacks(self.model_cfg) if self.body_only else ()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor in memory (single-process tools: generate, inspect)."""
        from pretrain.export import materialize

        return {name: materialize(t) for name, t in self.tensors().items()}


def load_pretrained(init_from: str, best: bool = False) -> Pretrained:
    """Shape, tokenizer and a way to open the weights; the weights themselves are not read here.
    ``best``: from a run directory, its ``best`` checkpoint where there is one (else the newest)."""
    from pretrain.data.tokenizer import load_tokenizer

    path = Path(init_from)
    if not path.exists():
        raise ConfigError(f"init_from={init_from!r}: no such file or directory")
    if has_weights(path) and (path / "config.yaml").exists():  # an export's consolidated/
        from pretrain.config import load_config

        cfg = load_config(path / "config.yaml")
        tok = load_tokenizer(path / "tokenizer", what=f"the tokenizer of export {path}")
        return _opened(cfg.model, lambda: ShardedWeights(path), tok, f"consolidated export {path}")
    if (path / "config.json").exists():  # an HF transformers directory
        return _from_hf_dir(path)
    tag_dir = ckpt.resolve(path, best=best)  # names the newest complete checkpoint when given a partial one
    from pretrain.export import consolidated_tensors

    cfg = ckpt.saved_config(tag_dir)
    tensors = consolidated_tensors(tag_dir)  # opened (memory-mapped) now: a refused or unfit file stops us here
    tok = load_tokenizer(tag_dir / "tokenizer", what=f"the tokenizer of checkpoint {tag_dir}")
    pre = _opened(cfg.model, lambda: tensors, tok, ckpt.describe(tag_dir))
    task = ckpt.saved_task(tag_dir)
    pre.prompt_template = task.get("prompt_template")
    if task.get("kind") in ("generate", "seq2seq"):
        pre.prompt_column = task.get("prompt_column", "prompt")
    return pre


def _opened(model_cfg: ModelConfig, open_tensors: Callable[[], Mapping], tok, source: str,
            body_only: bool = False) -> Pretrained:  # fmt: skip
    """Checked against the model's names and shapes now, before any process starts. ``open_tensors``
    opens the weights, here and for each reader after (afresh where the source maps files, so the
    pages one reader touched are let go when it is done). ``body_only``: the weights are known to
    lack the LM head (an HF folder of a base model or a classifier)."""
    from pretrain.export import check_fits

    tensors = open_tensors()
    if any(k.startswith("body.") for k in tensors):
        whole, body_only = open_tensors, True

        def open_tensors():
            return BodyWeights(whole())

        tensors = BodyWeights(tensors)
    try:
        check_fits(tensors, model_cfg, skip=body_lacks(model_cfg) if body_only else ())
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return Pretrained(model_cfg, open_tensors, tok, source, body_only)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "spiece.model",
                   "tokenizer.model")  # fmt: skip
"""What transformers saves of a tokenizer (fast or slow, BPE, WordPiece or SentencePiece)."""


def _from_hf_dir(path: Path) -> Pretrained:
    """An HF folder: our config from its config.json, our tensors made from its weights one at a time
    (pretrain.model.hf.FromHF; t5_tensors and bart_tensors for encoder-decoders), read from its
    safetensors, or memory-mapped from its pickled ``pytorch_model.bin`` files."""
    import transformers

    from pretrain.model.hf import FromHF, config_from_hf
    from pretrain.model.hf_bart import bart_config_from_hf, bart_tensors
    from pretrain.model.hf_t5 import t5_config_from_hf, t5_tensors

    hf_cfg = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    if not has_weights(path) and not has_pickled_weights(path):
        raise ConfigError(f"init_from={str(path)!r}: the folder has a config.json but no weights (model.safetensors, "
                          "pytorch_model.bin, or an index of their shards)")  # fmt: skip

    def weights():
        return ShardedWeights(path) if has_weights(path) else PickledWeights(path)

    if not any((path / name).exists() for name in TOKENIZER_FILES):
        raise ConfigError(f"init_from={str(path)!r}: the folder has weights but no tokenizer (none of "
                          f"{list(TOKENIZER_FILES)}); save the model's tokenizer beside them "
                          "(tokenizer.save_pretrained(FOLDER))")  # fmt: skip
    tok = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    source = f"HF {hf_cfg.model_type} model {path}"
    seq2seq = {"t5": (t5_config_from_hf, t5_tensors), "bart": (bart_config_from_hf, bart_tensors)}
    try:
        if hf_cfg.model_type in seq2seq:
            config_of, tensors_of = seq2seq[hf_cfg.model_type]
            model_cfg = config_of(hf_cfg)
            return _opened(model_cfg, lambda: tensors_of(model_cfg, hf_cfg, weights()), tok, source)
        model_cfg = config_from_hf(hf_cfg)
        tensors = FromHF(model_cfg, weights(), hf_cfg)
        pre = _opened(model_cfg, lambda: FromHF(model_cfg, weights(), hf_cfg), tok, source, tensors.body_only)
        pre.pooler = tensors.pooler()
        return pre
    except (ValueError, KeyError) as e:
        raise ConfigError(f"init_from={str(path)!r}: {e.args[0] if isinstance(e, KeyError) else e}") from None

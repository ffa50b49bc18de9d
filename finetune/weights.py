"""Where a fine-tuning run's weights and tokenizer come from: a pretraining run or checkpoint
(DeepSpeed shards of any ZeRO stage and world size, consolidated by zero_to_fp32), an export's
consolidated folder, or an HF transformers directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from pretrain import checkpoint as ckpt
from pretrain.config import ConfigError
from pretrain.model import ModelConfig


@dataclass
class Pretrained:
    model_cfg: ModelConfig
    state_dict: dict[str, torch.Tensor]
    tokenizer: object
    source: str


def load_pretrained(init_from: str) -> Pretrained:
    from pretrain.data.tokenizer import load_tokenizer

    path = Path(init_from)
    if not path.exists():
        raise ConfigError(f"init_from={init_from!r}: no such file or directory")
    if (path / "model.safetensors").exists() and (path / "config.yaml").exists():  # an export's consolidated/
        from safetensors.torch import load_file

        from pretrain.config import load_config

        cfg = load_config(path / "config.yaml")
        tok = load_tokenizer(path / "tokenizer", what=f"the tokenizer of export {path}")
        return Pretrained(cfg.model, load_file(str(path / "model.safetensors")), tok,
                          f"consolidated export {path}")  # fmt: skip
    if (path / "config.json").exists():  # an HF transformers directory
        return _from_hf_dir(path)
    tag_dir = ckpt.resolve(path)  # names the newest complete checkpoint when given a partial one
    from pretrain.export import consolidated_state_dict

    state = consolidated_state_dict(tag_dir)  # a ConfigError naming the checkpoint when it cannot be read
    tok = load_tokenizer(tag_dir / "tokenizer", what=f"the tokenizer of checkpoint {tag_dir}")
    cfg = ckpt.saved_config(tag_dir)
    return Pretrained(cfg.model, state, tok, f"checkpoint {tag_dir}")


def _from_hf_dir(path: Path) -> Pretrained:
    import transformers

    from pretrain.model.hf import from_hf

    hf_cfg = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    auto = transformers.AutoModelForMaskedLM if hf_cfg.model_type == "bert" else transformers.AutoModelForCausalLM
    try:
        hf_model = auto.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
        model_cfg, model = from_hf(hf_model)
    except ValueError as e:
        raise ConfigError(f"init_from={str(path)!r}: {e}") from None
    tok = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return Pretrained(model_cfg, model.state_dict(), tok, f"HF {hf_cfg.model_type} model {path}")

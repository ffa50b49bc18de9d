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
from pretrain.model import ModelConfig


@dataclass
class Pretrained:
    model_cfg: ModelConfig
    tensors: Callable[[], Mapping]
    """Opens the weights: name -> tensor, read lazily where the format allows (memory-mapped
    safetensors, DeepSpeed shards through zero_to_fp32's lazy mode); see pretrain.export.load_weights."""
    tokenizer: object
    source: str

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor in memory (single-process tools: generate, inspect)."""
        from pretrain.export import materialize

        return {name: materialize(t) for name, t in self.tensors().items()}


class SafetensorsFile(Mapping):
    """The tensors of a .safetensors file by name, each read (memory-mapped) when asked for."""

    def __init__(self, path: Path):
        from safetensors import safe_open

        self._file = safe_open(str(path), framework="pt")

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._file.get_tensor(name)

    def __iter__(self):
        return iter(self._file.keys())

    def __len__(self) -> int:
        return len(self._file.keys())


def load_pretrained(init_from: str) -> Pretrained:
    """Shape, tokenizer and a way to open the weights; the weights themselves are not read here."""
    from pretrain.data.tokenizer import load_tokenizer

    path = Path(init_from)
    if not path.exists():
        raise ConfigError(f"init_from={init_from!r}: no such file or directory")
    if (path / "model.safetensors").exists() and (path / "config.yaml").exists():  # an export's consolidated/
        from pretrain.config import load_config

        cfg = load_config(path / "config.yaml")
        tok = load_tokenizer(path / "tokenizer", what=f"the tokenizer of export {path}")
        return Pretrained(cfg.model, lambda: SafetensorsFile(path / "model.safetensors"), tok,
                          f"consolidated export {path}")  # fmt: skip
    if (path / "config.json").exists():  # an HF transformers directory
        return _from_hf_dir(path)
    tag_dir = ckpt.resolve(path)  # names the newest complete checkpoint when given a partial one
    from pretrain.export import consolidated_tensors

    tok = load_tokenizer(tag_dir / "tokenizer", what=f"the tokenizer of checkpoint {tag_dir}")
    cfg = ckpt.saved_config(tag_dir)
    return Pretrained(cfg.model, lambda: consolidated_tensors(tag_dir), tok, f"checkpoint {tag_dir}")


def _from_hf_dir(path: Path) -> Pretrained:
    """HF weights are converted through transformers' own model class, so they are read here, whole."""
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
    state = model.state_dict()
    return Pretrained(model_cfg, lambda: state, tok, f"HF {hf_cfg.model_type} model {path}")

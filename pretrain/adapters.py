"""Checkpoints of LoRA fine-tuning (finetune.lora) read as plain weights: each adapted linear
layer's LoRA A/B merged into its base weight by peft, tensor by tensor, under the plain names
(``X.weight`` for ``X.base_layer.weight``). Every reader of checkpoints goes through
pretrain.export.consolidated_tensors, which puts this in front where adapters are present."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

BASE = ".base_layer."


def has_adapters(tensors: Mapping) -> bool:
    return any(".lora_A." in name for name in tensors.keys())


class MergedAdapters(Mapping):
    """``tensors`` with every adapter merged (lazily: a merged weight is made when asked for)."""

    def __init__(self, tensors: Mapping, alpha: float):
        self._tensors, self.alpha = tensors, alpha
        names = list(tensors.keys())
        self._adapted = {n.split(BASE)[0] for n in names if BASE in n}
        self._names = [n.replace(BASE, ".") for n in names if ".lora_" not in n]

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __getitem__(self, name: str):
        module, _, leaf = name.rpartition(".")
        if module not in self._adapted:
            return self._tensors[name]
        if leaf != "weight":
            return self._tensors[f"{module}{BASE}{leaf}"]
        return self._merged(module)

    def shape(self, name: str) -> tuple[int, ...]:
        from pretrain.export import shape_of

        module, _, leaf = name.rpartition(".")
        return shape_of(self._tensors, f"{module}{BASE}{leaf}" if module in self._adapted else name)

    def _merged(self, module: str) -> torch.Tensor:
        from peft import LoraConfig, inject_adapter_in_model

        from pretrain.export import materialize

        base = materialize(self._tensors[f"{module}{BASE}weight"])
        a = materialize(self._tensors[f"{module}.lora_A.default.weight"])
        b = materialize(self._tensors[f"{module}.lora_B.default.weight"])
        holder = nn.Module()
        holder.linear = nn.Linear(base.shape[1], base.shape[0], bias=False, device="meta")
        inject_adapter_in_model(LoraConfig(r=a.shape[0], lora_alpha=self.alpha, target_modules=["linear"]), holder)
        holder.to_empty(device="cpu")
        with torch.no_grad():
            holder.linear.base_layer.weight.copy_(base)
            holder.linear.lora_A["default"].weight.copy_(a)
            holder.linear.lora_B["default"].weight.copy_(b)
            holder.linear.merge()  # peft's own merge: base + B @ A * alpha / r
        return holder.linear.base_layer.weight.detach().clone()

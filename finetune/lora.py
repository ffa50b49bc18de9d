"""LoRA fine-tuning with peft: low-rank adapters on the body's linear layers, the base weights
frozen, the task's head trained whole. Checkpoints hold the adapters beside the base weights
(peft's names: ``X.base_layer.weight``, ``X.lora_A.default.weight``, ...); every command that
reads a checkpoint sees them merged into plain weights by peft (pretrain.export.consolidated_tensors),
so predict, evaluate, generate and the HF export need nothing else."""

from __future__ import annotations

from torch import nn


def check_targets(model_cfg, targets: list[str]) -> None:
    """Each target names a linear layer of the model (peft's rule: the module's name, or its last
    dotted parts), or a ConfigError listing what there is; peft would raise in every rank."""
    import re

    import torch

    from pretrain.config import ConfigError
    from pretrain.model import build_model

    with torch.device("meta"):
        names = [n for n, m in build_model(model_cfg).named_modules() if isinstance(m, nn.Linear)]
    for target in targets:
        if not any(n == target or n.endswith("." + target) for n in names):
            kinds = sorted({re.sub(r"^(.*\.)?\d+\.", "", n) for n in names})  # layers.3.attn.qkv -> attn.qkv
            raise ConfigError(f"task.lora_targets: {target!r} names no linear layer of the model; its linear layers "
                              f"are {kinds}")  # fmt: skip


def lora_config(rank: int, alpha: float, dropout: float, targets: list[str]):
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets))


def add_adapters(body: nn.Module, task, gather=None, seed: int = 0) -> None:
    """Put adapters on ``task.lora_targets`` of ``body`` (a Transformer) and train only them.

    peft then draws the adapters' initial weights again, layer by layer, from a generator seeded
    by ``seed`` (the global one is left as it was): the same adapters whether the model is whole
    or was built partitioned (``gather``, ZeRO-3: each adapter is made whole for it, rank 0's
    values kept), where peft's own draw at creation met empty shards."""
    import contextlib

    import torch
    from peft import inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    inject_adapter_in_model(lora_config(task.lora_rank, task.lora_alpha, task.lora_dropout, task.lora_targets), body)
    for name, p in body.named_parameters():
        p.requires_grad_(".lora_" in name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in body.modules():
            if isinstance(module, LoraLayer):
                params = [p for n, p in module.named_parameters() if n.startswith(("lora_A", "lora_B"))]
                with gather(params) if gather is not None else contextlib.nullcontext():
                    module.reset_lora_parameters("default", True)

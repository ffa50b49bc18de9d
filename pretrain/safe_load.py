"""Loading checkpoint files without running code from them.

``torch.load(..., weights_only=False)`` unpickles whatever a file holds, so a checkpoint folder
handed to a user could run code on their machine. Every load here is ``weights_only=True``: tensors,
containers and numbers, plus the few DeepSpeed classes its shards hold (``ALLOWED``, found with
``torch.serialization.get_unsafe_globals_in_checkpoint`` on shards of every ZeRO stage, fp32 and
bf16). Anything else is refused, naming the file and the global it asked for.

- ``load(path)``: one file.
- ``install(engine)``: DeepSpeed's checkpoint-engine interface, which ``engine.load_checkpoint``
  reads its shards through, set to ``load``.
- ``restricted_torch_load()``: for DeepSpeed's loaders that call ``torch.load`` themselves
  (zero_to_fp32, universal checkpoints; ``python -m pretrain.safe_load MODULE ...`` runs a tool such
  as ds_to_universal so), ``torch.load`` made safe for the scope.
"""

from __future__ import annotations

import contextlib
import pickle
import re
from pathlib import Path

import torch

from pretrain.errors import ConfigError


class UnsafeCheckpointError(ConfigError):
    """A checkpoint file holds objects other than tensors and plain data."""


def _allowed() -> list:
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


_torch_load = torch.load  # the real one, also while restricted_torch_load() is in force


def load(path: str | Path, map_location=None, **kwargs):
    """torch.load with weights_only=True and the DeepSpeed allow-list; a refusal names the file."""
    kwargs.pop("weights_only", None)
    try:
        with torch.serialization.safe_globals(_allowed()):
            return _torch_load(path, map_location=map_location, weights_only=True, **kwargs)
    except pickle.UnpicklingError as e:
        # "Unsupported global: GLOBAL x.y" for a class; "unsupported GLOBAL x.y whose module x is blocked" (os, posix)
        found = re.search(r"unsupported (?:global: )?GLOBAL (\S+)", str(e), re.IGNORECASE)
        what = f"it asks for {found.group(1)}" if found else str(e).splitlines()[-1][:200]
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it holds more than tensors and plain data ({what}); "
            "only load checkpoints you made yourself, or exports (safetensors)"
        ) from None


@contextlib.contextmanager
def restricted_torch_load():
    """Within the scope every ``torch.load`` (DeepSpeed's own included) is ``load`` above."""
    torch.load = load
    try:
        yield
    finally:
        torch.load = _torch_load


def install(engine) -> None:
    """Make a DeepSpeed engine read its checkpoints through ``load`` (its checkpoint-engine interface)."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class SafeCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location=None):
            return load(path, map_location=map_location)

    if type(engine.checkpoint_engine) is TorchCheckpointEngine:
        engine.checkpoint_engine = SafeCheckpointEngine(engine._config)


def _legacy_globals() -> list:
    """What rank_state_*.pt files of earlier versions hold besides tensors: numpy's RNG key."""
    import numpy as np

    return [np.core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_legacy_rank_state(path: Path) -> dict:
    """A rank_state_*.pt written by an earlier version (torch.save of the RNG states)."""
    with torch.serialization.safe_globals(_legacy_globals()):
        return load(path)


if __name__ == "__main__":  # python -m pretrain.safe_load MODULE ARGS...: run a DeepSpeed tool with safe loads
    import runpy
    import sys

    module, sys.argv = sys.argv[1], [sys.argv[1], *sys.argv[2:]]
    with restricted_torch_load():
        runpy.run_module(module, run_name="__main__", alter_sys=True)

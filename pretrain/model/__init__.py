"""The Transformer family: imports torch and its own config only.

ModelConfig is importable without torch (the launcher validates configs without it); the modules
are loaded on first use.
"""

from .config import ModelConfig

_LAZY = {
    "KVCache": ".attention",
    "Transformer": ".transformer",
    "EncoderDecoder": ".seq2seq",
    "pool": ".transformer",
    "count_parameters": ".flops",
    "flops_per_token": ".flops",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ModelConfig", *_LAZY]

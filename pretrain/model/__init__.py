"""The Transformer family: imports torch and its own config only.

ModelConfig is importable without torch (the launcher validates configs without it); the modules
are loaded on first use.
"""

from .config import ModelConfig

_LAZY = {
    "KVCache": ".attention",
    "redrawing_layers": ".attention",
    "Transformer": ".transformer",
    "EncoderDecoder": ".seq2seq",
    "pool": ".transformer",
    "count_parameters": ".flops",
    "flops_per_token": ".flops",
}


def build_model(cfg: ModelConfig, gather=None):
    """The model a config describes: EncoderDecoder for arch=encoder-decoder, else Transformer."""
    from .seq2seq import EncoderDecoder
    from .transformer import Transformer

    return (EncoderDecoder if cfg.arch == "encoder-decoder" else Transformer)(cfg, gather)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ModelConfig", "build_model", *_LAZY]

"""python -m pretrain.export RUN_OR_CHECKPOINT_DIR OUT_DIR

Writes, from the newest complete checkpoint of a run (or the checkpoint given):
  OUT_DIR/consolidated/  model.safetensors (one fp32 state dict, gathered from the ZeRO shards
                         by DeepSpeed's zero_to_fp32), config.yaml, tokenizer/
  OUT_DIR/hf/            an HF transformers directory (config.json, model.safetensors, tokenizer)
                         for the GPT-2, LLaMA and BERT families
"""

from __future__ import annotations

import sys
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
            return safe_load.load(tag_dir / "mp_rank_00_model_states.pt", map_location="cpu", mmap=True)["module"]
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        with safe_load.restricted_torch_load():
            return get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name, lazy_mode=True)
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


def load_weights(model, tensors, gather=None) -> None:
    """Copy named tensors (a state dict, or a lazy source: see consolidated_tensors) into ``model``
    one at a time. ``gather(params)`` (ZeRO-3, see pretrain.engine.partitioned_construction) makes
    each partitioned parameter whole while rank 0 writes it; the other ranks read nothing. A tied
    output matrix may be absent; anything else missing or extra is an error, before any copy."""
    import contextlib

    import torch.distributed as dist

    own = dict(model.named_parameters())  # a tied matrix once, as the embedding
    tied = {"head.weight", "head.decoder.weight"} if model.cfg.tie_embeddings else set()
    names = set(tensors.keys())
    missing, unexpected = sorted(set(own) - names), sorted(names - set(own) - tied)
    if missing or unexpected:
        raise ConfigError(f"the weights do not fit the model: missing {missing}, unexpected {unexpected}")
    writer = gather is None or not dist.is_initialized() or dist.get_rank() == 0
    for name, param in own.items():
        with gather([param]) if gather is not None else contextlib.nullcontext():
            if writer:
                with torch.no_grad():
                    param.copy_(materialize(tensors[name]).to(param.dtype))


def load_model(state_dict: dict, model_cfg):
    """Our Transformer with a consolidated state dict (a tied output matrix may be absent)."""
    from pretrain.model import Transformer

    model = Transformer(model_cfg)
    load_weights(model, state_dict)
    return model


def export(source: str | Path, out: str | Path) -> dict[str, Path]:
    from safetensors.torch import save_file

    from pretrain.data.tokenizer import load_tokenizer
    from pretrain.model.hf import family_of, to_hf

    tag_dir = ckpt.resolve(source)
    cfg = ckpt.saved_config(tag_dir)
    model = load_model(consolidated_state_dict(tag_dir), cfg.model).eval()
    tok = load_tokenizer(tag_dir / "tokenizer", what=f"the tokenizer of checkpoint {tag_dir}")
    out = Path(out)
    cons = out / "consolidated"
    cons.mkdir(parents=True, exist_ok=True)
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    if cfg.model.tie_embeddings:  # one tensor, stored once
        weights.pop(model_output_key(cfg.model))
    save_file(weights, str(cons / "model.safetensors"))
    save_config(cfg, cons / "config.yaml")
    tok.save_pretrained(str(cons / "tokenizer"))
    written = {"checkpoint": tag_dir, "consolidated": cons}
    try:
        family_of(cfg.model)
    except ValueError as e:
        print(f"no HF export: {e}")
        return written
    hf_dir = out / "hf"
    to_hf(model).save_pretrained(str(hf_dir))
    tok.save_pretrained(str(hf_dir))
    written["hf"] = hf_dir
    return written


def model_output_key(model_cfg) -> str:
    return "head.weight" if model_cfg.causal else "head.decoder.weight"


def load_consolidated(folder: str | Path):
    """(RunConfig, model) from an export's consolidated/ folder."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = load_config(folder / "config.yaml")
    return cfg, load_model(load_file(str(folder / "model.safetensors")), cfg.model)


@exit_on_config_error
def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__.strip(), file=sys.stderr)
        sys.exit(2)
    for what, path in export(*args).items():
        print(f"{what}: {path}")


if __name__ == "__main__":
    main()

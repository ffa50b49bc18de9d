"""The run configuration: YAML files -> typed dataclasses -> dotted overrides -> validation.

    cfg = load_config("configs/pretrain/default.yaml", ["model.num_layers=4", "train.lr=3e-4"])

A YAML file may build on others with ``base: path.yaml`` (or a list; paths relative to the file):
the bases are merged first, in order, then the file on top. Every user error raises ConfigError,
whose message names the key, the value and what would be valid; command-line entry points print
it and exit with status 2.

Each component receives its own section (``cfg.model``, ``cfg.train``, ...), never the tree. This
module imports no torch, so the launcher can validate a job without it.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pretrain.data.config import DataConfig
from pretrain.model.config import ModelConfig


class ConfigError(ValueError):
    """A user error in a config file or override."""


@dataclass
class TrainConfig:
    seed: int = 1234
    lr: float = 3e-4
    """Peak learning rate, reached after warmup."""
    warmup_steps: int = 100
    max_steps: int = 1000
    micro_batch_size: int = 8
    """Sequences per process per forward/backward."""
    global_batch_size: int | None = None
    """Sequences per optimizer step across all processes; None means micro_batch_size * world size."""
    weight_decay: float = 0.1
    grad_clip: float = 1.0

    def validate(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr}: must be > 0")
        for name in ("warmup_steps", "max_steps", "micro_batch_size", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 0")
        if self.micro_batch_size < 1 or self.max_steps < 1:
            raise ValueError(f"micro_batch_size={self.micro_batch_size}, max_steps={self.max_steps}: both must be >= 1")
        if self.global_batch_size is not None and self.global_batch_size % self.micro_batch_size:
            raise ValueError(
                f"global_batch_size={self.global_batch_size}: must be a multiple of "
                f"micro_batch_size={self.micro_batch_size}"
            )


@dataclass
class DeepSpeedSection:
    zero_stage: int = 2
    """ZeRO stage: 0 (plain data parallel), 1 (optimizer states), 2 (+ gradients), 3 (+ parameters)."""
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"

    def validate(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage={self.zero_stage}: must be 0, 1, 2 or 3")


@dataclass
class LogConfig:
    every_steps: int = 10
    """Console and dashboard metrics every N optimizer steps."""

    def validate(self) -> None:
        if self.every_steps < 1:
            raise ValueError(f"every_steps={self.every_steps}: must be >= 1")


@dataclass
class RunConfig:
    name: str = "run"
    """The run directory is output_dir/name."""
    output_dir: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    log: LogConfig = field(default_factory=LogConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def validate(self) -> None:
        """Checks that span sections (each section checks itself first)."""
        if self.model.position == "learned" and self.data.seq_len > self.model.max_seq_len:
            raise ConfigError(
                f"data.seq_len={self.data.seq_len}: longer than the model's {self.model.max_seq_len} learned "
                f"positions (model.max_seq_len); use data.seq_len <= {self.model.max_seq_len}"
            )


# -- YAML files and the `base:` chain


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML file with its bases merged under it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    resolved = path.resolve()
    if resolved in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, resolved))
        raise ConfigError(f"config bases form a cycle: {chain}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
    bases = data.pop("base", None) or []
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = deep_merge(merged, read_yaml(path.parent / base, (*_seen, resolved)))
    return deep_merge(merged, data)


def deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``a.b.c=value`` strings on top of a raw config mapping; values are parsed as YAML."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value (e.g. train.lr=3e-4)")
        try:
            value = yaml.safe_load(raw) if raw else None
        except yaml.YAMLError:
            value = raw
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is a value, not a section")
        node[leaf] = value
    return data


# -- typed conversion


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, checking every key and value type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in data:
        if key not in names:
            full = f"{where}.{key}" if where else key
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"did you mean '{(where + '.') if where else ''}{close[0]}'?" if close else f"valid keys: {names}"
            raise ConfigError(f"unknown key '{full}'; {hint}")
    kwargs = {}
    for name in names:
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], f"{where}.{name}" if where else name)
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        try:
            obj.validate()
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError(f"{where + '.' if where else ''}{e}") from None
    return obj


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}={value!r}: expected {_describe(tp)}")
    if origin is Literal:
        if value in args:
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where}={value!r}: must be one of {list(args)}{hint}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}={value!r}: expected a list")
        item = args[0] if args else Any
        return origin(_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}={value!r}: expected a mapping")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{where}={value!r}: expected {_describe(tp)}")


def _describe(tp: Any) -> str:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


# -- the public API


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML file (and its bases), apply dotted overrides, type and validate everything."""
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, list(overrides or []))
    cfg = from_dict(RunConfig, data)
    cfg.validate()
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(to_yaml(cfg))
    tmp.replace(path)
    return path


def parse_cli(argv: list[str]) -> RunConfig:
    """``CONFIG.yaml [dotted.key=value ...]`` -> RunConfig. A first argument with '=' in it is an
    override, and the defaults are used."""
    if argv and "=" not in argv[0]:
        return load_config(argv[0], argv[1:])
    return load_config(None, argv)


def exit_on_config_error(fn):
    """Decorator for entry points: a ConfigError becomes one line on stderr and exit status 2."""

    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ConfigError as e:
            print(f"config error: {e}", file=sys.stderr)
            sys.exit(2)

    return wrapper


@exit_on_config_error
def main(argv: list[str] | None = None) -> None:
    """python -m pretrain.config CONFIG.yaml [overrides]: print the resolved, validated config."""
    print(to_yaml(parse_cli(sys.argv[1:] if argv is None else argv)), end="")


if __name__ == "__main__":
    main()

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

import atexit
import dataclasses
import difflib
import json
import math
import os
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pretrain.data.config import DataConfig
from pretrain.errors import ConfigError  # re-exported: the commands import it from here
from pretrain.model.config import KERNELS_WITH_PADDING, ModelConfig


@dataclass
class TrainConfig:
    seed: int = 1234
    """Seed of the initial weights and the data order (dropout adds the rank)."""
    lr: float = 3e-4
    """Peak learning rate, reached after warmup."""
    min_lr_ratio: float = 0.1
    """The decay ends at lr * min_lr_ratio."""
    decay: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate shape after warmup: cosine or linear down to lr * min_lr_ratio at max_steps, or constant."""
    warmup_steps: int = 100
    """Optimizer steps of linear warmup from ~0 to lr."""
    max_steps: int = 1000
    """Optimizer steps in the whole run (the learning-rate schedule ends here)."""
    stop_at_step: int | None = None
    """End this invocation after this step, with a checkpoint, leaving the schedule (max_steps) as it
    is: run a long job in pieces, or stop early and resume later as if it had never stopped."""
    micro_batch_size: int = 8
    """Sequences per process per forward/backward."""
    global_batch_size: int | None = None
    """Sequences per optimizer step across all processes; None means micro_batch_size * world size.
    The gradient accumulation steps follow: global / (micro * world)."""
    weight_decay: float = 0.1
    """AdamW decay, applied to matrices only (never to norms, biases or embeddings)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    """AdamW's (beta1, beta2): 0.95 for beta2 is the usual choice for LM pretraining."""
    eps: float = 1e-8
    """AdamW's epsilon (added to the root of the second moment)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 disables clipping."""
    eval_every: int = 100
    """Validation loss every N steps (and at the end); 0 disables it."""
    eval_batches: int | None = 20
    """Micro-batches per rank in each evaluation (at most one pass over the validation data);
    null: the whole validation set, every example scored exactly once (fine-tuning's default)."""
    early_stopping_patience: int | None = None
    """End the run after this many evaluations in a row without improving the task's metric
    (fine-tuning: accuracy or validation loss; pretraining: val_loss); the best checkpoint stays
    named `best`. null: never."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass: less memory, ~30% more compute."""
    compile: bool = False
    """torch.compile the model (GPU only)."""
    max_nonfinite: int = 5
    """Stop after this many non-finite losses in a row (each one is skipped by all ranks)."""
    deterministic: bool = False
    """torch.use_deterministic_algorithms: bit-exact resumes at some cost in speed."""
    dist_timeout_s: float = 1800.0
    """How long a collective waits for the other processes before the run fails with an error
    (a dead node or a cut link ends the job instead of hanging it)."""
    resume: str = "auto"
    """auto: continue from the newest complete checkpoint of the run directory, if any;
    never: refuse to start over an existing checkpoint; or a checkpoint directory to start from."""

    def validate(self) -> None:
        if not 0 < self.lr <= 1:
            raise ValueError(f"lr={self.lr}: must be in (0, 1] (AdamW learning rates are around 1e-5 to 1e-2)")
        if self.dist_timeout_s <= 0:
            raise ValueError(f"dist_timeout_s={self.dist_timeout_s}: must be > 0 seconds")
        for name in ("warmup_steps", "weight_decay", "grad_clip", "eval_every", "eps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 0")
        if self.stop_at_step is not None and self.stop_at_step < 1:
            raise ValueError(f"stop_at_step={self.stop_at_step}: must be >= 1 or null")
        for name in ("micro_batch_size", "max_steps", "eval_batches", "max_nonfinite", "early_stopping_patience"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio={self.min_lr_ratio}: must be in [0, 1]")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas={self.betas}: must be two numbers in [0, 1)")
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
    """fp16 uses dynamic loss scaling; bf16 and fp32 need none."""
    offload_optimizer: bool = False
    """Keep optimizer states (and the step) on the CPU: ZeRO stage 1 or more."""
    offload_params: bool = False
    """Keep parameters on the CPU between uses: ZeRO stage 3 only."""
    overlap_comm: bool = True
    """ZeRO 1-3: overlap gradient reduction with the backward pass."""
    contiguous_gradients: bool = True
    """ZeRO 1-3: copy gradients into one buffer as they are made (less fragmentation)."""
    reduce_bucket_size: int = 50_000_000
    """ZeRO 1-3: elements reduced at once; larger is faster and takes more memory."""
    allgather_bucket_size: int = 50_000_000
    """ZeRO 1-2: elements gathered at once after the optimizer step."""
    initial_scale_power: int = 16
    """fp16: the first loss scale is 2**initial_scale_power."""
    config_file: str | None = None
    """A DeepSpeed JSON whose sections override the generated ones (merged key by key)."""

    def validate(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage={self.zero_stage}: must be 0, 1, 2 or 3")
        if self.offload_params and self.zero_stage != 3:
            raise ValueError(f"offload_params=true needs zero_stage=3, not {self.zero_stage}")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer=true needs zero_stage 1, 2 or 3, not 0")
        if self.config_file is not None and not Path(self.config_file).is_file():
            raise ValueError(f"config_file={self.config_file!r}: no such file")


@dataclass
class CheckpointConfig:
    every_steps: int = 500
    """Save every N optimizer steps, and always at the end; 0 saves at the end only."""
    keep_last: int = 3
    """Complete checkpoints to keep (the newest is never deleted)."""

    def validate(self) -> None:
        if self.every_steps < 0 or self.keep_last < 1:
            raise ValueError(
                f"every_steps={self.every_steps}, keep_last={self.keep_last}: need every_steps >= 0, keep_last >= 1"
            )


@dataclass
class LogConfig:
    every_steps: int = 10
    """Console and dashboard metrics every N optimizer steps."""
    progress_bar: bool = True
    """A tqdm bar on rank 0 (off in logs that are files)."""
    tensorboard: bool = True
    """Write TensorBoard events under RUN/tensorboard."""
    wandb: Literal["auto", "online", "offline", "off"] = "auto"
    """auto: online when logged in to wandb, offline (sync later) otherwise."""
    wandb_project: str = "pretrain"
    """The wandb project runs are logged to."""
    peak_tflops: float | None = None
    """Peak dense TFLOP/s of one device for MFU; None looks the GPU up in a table."""
    inspect_every: int = 0
    """Every N evaluations, attention entropy and mean attended distance per layer and head (two
    validation sequences, 256 tokens, eager kernel for that pass) into TensorBoard as heatmaps; 0: off."""

    def validate(self) -> None:
        if self.every_steps < 1:
            raise ValueError(f"every_steps={self.every_steps}: must be >= 1")
        if self.inspect_every < 0:
            raise ValueError(f"inspect_every={self.inspect_every}: must be >= 0 (0: off)")


@dataclass
class RunConfig:
    name: str = "run"
    """The run directory is output_dir/name."""
    output_dir: str = "runs"
    """Folder holding run directories."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The Transformer's shape (pretrain.model.config.ModelConfig)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Sources, tokenizer, packing and batching (pretrain.data.config.DataConfig)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimizer, schedule, batch sizes, evaluation and resume."""
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    """ZeRO stage, offload, precision and DeepSpeed's own JSON."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """How often to save and how many to keep."""
    log: LogConfig = field(default_factory=LogConfig)
    """Console, TensorBoard and wandb reporting."""

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def validate(self) -> None:
        """Checks that span sections (each section checks itself first)."""
        self.check_run()
        self.check_model()

    def check_run(self) -> None:
        """The cross-section checks that do not depend on the model's shape."""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            raise ConfigError(
                f"name={self.name!r}: use letters, digits, '.', '_' and '-' (it names a folder, a Slurm job "
                "and Kubernetes objects)"
            )
        if any(c in self.output_dir for c in "\n\r\0"):
            raise ConfigError(f"output_dir={self.output_dir!r}: must not hold line breaks or NUL")
        if self.deepspeed.config_file:
            user = read_deepspeed_json(self.deepspeed.config_file)
            both = [k for k in ("bf16", "fp16") if (user.get(k) or {}).get("enabled", k == self.deepspeed.precision)]
            if len(both) > 1:
                raise ConfigError(
                    f"deepspeed.config_file={self.deepspeed.config_file!r} enables both bf16 and fp16; "
                    "enable at most one (or set deepspeed.precision)"
                )

    def with_model(self, model: ModelConfig) -> RunConfig:
        """This config with ``model`` (a new object, the same one when it is this config's), checked
        against it."""
        if model is self.model:
            return self
        cfg = dataclasses.replace(self, model=model)
        cfg.check_model()
        return cfg

    def check_model(self) -> None:
        """The data and kernel settings against the model's shape."""
        if self.model.arch == "encoder-decoder" and self.data.document_mask:
            raise ConfigError("data.document_mask=true: not for model.arch='encoder-decoder' (span corruption "
                              "reads across the packed documents, as T5 does); set it to false")  # fmt: skip
        if self.data.objective != "span_corruption" and self.model.arch != "encoder-decoder":
            raise ConfigError(f"data.objective={self.data.objective!r}: an encoder-decoder's objective; "
                              f"model.arch={self.model.arch!r} trains as a "
                              f"{'causal' if self.model.causal else 'masked'} LM (drop data.objective)")  # fmt: skip
        # Text infilling's decoder reads a start token and the whole sequence: one position more.
        extra = int(self.model.arch == "encoder-decoder" and self.data.objective == "text_infilling")
        if self.model.position == "learned" and self.data.seq_len + extra > self.model.max_seq_len:
            raise ConfigError(
                f"data.seq_len={self.data.seq_len}: longer than the model's {self.model.max_seq_len} learned "
                f"positions (model.max_seq_len){' with the decoder start token text infilling adds' if extra else ''}"
                f"; use data.seq_len <= {self.model.max_seq_len - extra}"
            )
        if self.data.span_lengths == "poisson" and self.model.attention not in KERNELS_WITH_PADDING:
            raise ConfigError(f"data.span_lengths='poisson' pads the encoder's inputs; model.attention="
                              f"{self.model.attention!r} takes no padding mask (use one of "
                              f"{list(KERNELS_WITH_PADDING)})")  # fmt: skip
        if self.data.document_mask and self.model.memory_len:
            raise ConfigError(f"data.document_mask=true with model.memory_len={self.model.memory_len}: the memory "
                              "carries each row's states across its packed documents, as Transformer-XL reads "
                              "running text; set data.document_mask=false")  # fmt: skip
        if self.data.document_mask and self.model.attention in ("flash", "flash_attn"):
            raise ConfigError(
                f"data.document_mask=true needs an attention kernel that takes masks; "
                f"model.attention={self.model.attention!r} does not (use sdpa, flex or eager)"
            )

    def check_world_size(self, world_size: int) -> int:
        """The gradient accumulation steps for this many data-parallel processes, or a ConfigError."""
        per_step = self.train.micro_batch_size * world_size
        target = self.train.global_batch_size or per_step
        if target % per_step:
            raise ConfigError(
                f"train.global_batch_size={target}: must be a multiple of micro_batch_size x processes = "
                f"{self.train.micro_batch_size} x {world_size} = {per_step}"
            )
        return target // per_step


# -- YAML files and the `base:` chain


# Top-level sections of a DeepSpeed config (docs: deepspeed.ai/docs/config-json), for catching typos:
# DeepSpeed itself ignores keys it does not know.
DEEPSPEED_KEYS = (
    "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "optimizer", "scheduler",
    "fp16", "bf16", "amp", "torch_autocast", "gradient_clipping", "prescale_gradients", "gradient_predivide_factor",
    "sparse_gradients", "zero_optimization", "zero_allow_untested_optimizer", "zero_force_ds_cpu_optimizer",
    "steps_per_print", "wall_clock_breakdown", "memory_breakdown", "dump_state", "flops_profiler",
    "activation_checkpointing", "sparse_attention", "data_efficiency", "curriculum_learning", "comms_logger",
    "tensorboard", "wandb", "csv_monitor", "comet", "elasticity", "aio", "checkpoint", "data_types",
    "communication_data_type", "seq_parallel_communication_data_type", "compression_training", "autotuning",
    "pipeline", "tensor_parallel", "disable_allgather", "graph_harvesting", "use_data_before_expert_parallelism",
    "compile", "nebula", "timers", "weight_quantization", "hybrid_engine", "load_universal_checkpoint",
)  # fmt: skip


def read_deepspeed_json(path: str | Path) -> dict:
    """A user's DeepSpeed JSON: one mapping of known sections, or a ConfigError naming what is wrong."""
    where = f"deepspeed.config_file={str(path)!r}"
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{where}: not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must hold a JSON object of DeepSpeed sections, not a {type(data).__name__}")
    for key in data:
        if key not in DEEPSPEED_KEYS:
            close = difflib.get_close_matches(key, DEEPSPEED_KEYS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "see deepspeed.ai/docs/config-json"
            raise ConfigError(f"{where}: unknown DeepSpeed section {key!r}; {hint}")
    return data


def yaml_problem(e: Exception) -> str:
    """A YAML error in one line: where, what, and while doing what."""
    mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None)
    if mark is None or problem is None:
        return " ".join(str(e).split())
    context = getattr(e, "context", None)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" + (f" ({context})" if context else "")


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
        raise ConfigError(f"{path} is not valid YAML: {yaml_problem(e)}") from None
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
        if isinstance(value, bool) and raw.lower() not in ("true", "false"):
            value = raw  # YAML 1.1 reads on/off/yes/no as booleans; on a command line they are words
        if isinstance(value, dict) and not raw.lstrip().startswith("{"):
            value = raw  # "Q: {question}" is text: a mapping on a command line is written {key: value}
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
        braces = " (YAML reads text in braces as a mapping: quote it, e.g. '\"{name}\"')" if (
            isinstance(value, dict) and str in args) else ""  # fmt: skip
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}={value!r}: expected {_describe(tp)}{braces}")
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
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):
                raise ConfigError(f"{where}={value!r}: must be a finite number")
            return number
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


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, cls: type = None) -> RunConfig:
    """Read a YAML file (and its bases), apply dotted overrides, type and validate everything.
    ``cls`` is RunConfig or a subclass of it (the fine-tuning config)."""
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, list(overrides or []))
    cfg = from_dict(cls or RunConfig, data)
    cfg.validate()
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config atomically (temp file, then rename)."""
    from pretrain.files import write_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, to_yaml(cfg))


def parse_cli(argv: list[str], cls: type = None) -> RunConfig:
    """``CONFIG.yaml [dotted.key=value ...]`` -> RunConfig. A first argument with '=' in it is an
    override, and the defaults are used. The deepspeed launcher's ``--local_rank=N`` is accepted
    (it also sets LOCAL_RANK)."""
    argv = [a for a in argv if not a.startswith(("--local_rank", "--local-rank"))]
    if argv and "=" not in argv[0]:
        return load_config(argv[0], argv[1:], cls)
    return load_config(None, argv, cls)


def exit_on_config_error(fn):
    """Decorator for entry points: a ConfigError becomes one line on stderr and exit status 2, and
    the process, once its command is over, ends without the garbage collector's scans."""

    def wrapper(*args, **kwargs):
        atexit.unregister(_no_collection_at_shutdown)  # registered once, however often called
        atexit.register(_no_collection_at_shutdown)
        try:
            return fn(*args, **kwargs)
        except ConfigError as e:
            if os.environ.get("RANK", "0") == "0":  # every rank finds the same error; one says it
                print(f"config error: {e}", file=sys.stderr)
            if os.environ.get("PRETRAIN_ERROR_FILE"):  # python -m launch reads it: no "resume" advice
                try:
                    with open(os.environ["PRETRAIN_ERROR_FILE"], "a") as f:
                        f.write(f"{e}".replace("\n", " ") + "\n")
                except OSError:
                    pass
            sys.exit(2)

    return wrapper


def _no_collection_at_shutdown() -> None:
    """At interpreter shutdown Python runs full collections over every object of every module
    (torch, DeepSpeed, datasets, transformers: 400,000 the collector tracks), which took 0.75 s
    of a 6 s one-process run. Freezing them first skips those scans; every exit handler, close
    and flush still runs, and only garbage in reference cycles is left to the ending process."""
    import gc

    gc.freeze()


@exit_on_config_error
def main(argv: list[str] | None = None) -> None:
    """python -m pretrain.config CONFIG.yaml [overrides]: print the resolved, validated config
    (checked for WORLD_SIZE processes when that is set)."""
    cfg = parse_cli(sys.argv[1:] if argv is None else argv)
    if "WORLD_SIZE" in os.environ:
        cfg.check_world_size(int(os.environ["WORLD_SIZE"]))
    print(to_yaml(cfg), end="")


if __name__ == "__main__":
    main()

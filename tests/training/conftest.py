"""Real multi-process runs: torchrun + DeepSpeed on CPU with gloo, tiny models, few steps.

Every run is a subprocess in its own process group with a hard timeout: a hang kills the group
and fails the test instead of blocking CI.
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pretrain.files import free_port
from pretrain.status import metric_records

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
       "HF_DATASETS_OFFLINE": "1", "WANDB_SILENT": "true", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip




def command(nproc: int, module: str = "pretrain") -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", module]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_port", str(free_port()), "-m", module]  # fmt: skip


def kill_tree(pid: int) -> None:
    """SIGKILL a launcher and every process under it (torchrun starts workers in sessions of their
    own, so killing its process group would leave them running)."""
    import psutil

    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    procs = [*parent.children(recursive=True), parent]
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)


def kill_once_written(nproc: int, config: Path, marker: Path, timeout: float = 300) -> None:
    """Start a run and SIGKILL all its processes as soon as ``marker`` exists (fails if it never does)."""
    proc = subprocess.Popen([*command(nproc), str(config)], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline = time.time() + timeout
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    kill_tree(proc.pid)
    proc.wait()
    assert marker.exists(), f"the run never wrote {marker}"


def launch(nproc: int, config: Path, *overrides: str, timeout: float = 300, check: bool = True, module="pretrain",
           env_extra: dict | None = None):  # fmt: skip
    proc = subprocess.Popen(
        [*command(nproc, module), str(config), *overrides], cwd=ROOT, env={**ENV, **(env_extra or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        out, _ = proc.communicate()
        pytest.fail(f"run hung for {timeout}s and was killed:\n{out[-4000:]}")
    if check and proc.returncode != 0:
        pytest.fail(f"run failed with exit code {proc.returncode}:\n{out[-6000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


def metrics(run_dir: Path, kind: str = "train") -> dict[int, dict]:
    """The last record of each step (a resumed run writes the steps after its checkpoint again)."""
    return {rec["step"]: rec for rec in metric_records(run_dir, kind)}


def losses(run_dir: Path) -> dict[int, float]:
    return {step: rec["loss"] for step, rec in metrics(run_dir).items()}


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    from pretrain.data.sources import stdlib_files

    folder = tmp_path_factory.mktemp("corpus")
    picked = [f for f in stdlib_files() if Path(f).parent.name in ("json", "email", "logging")]
    for i, f in enumerate(sorted(picked)[:30]):
        shutil.copy(f, folder / f"{i:02d}.txt")
    return folder


@pytest.fixture(scope="session")
def tokenizers(corpus, tmp_path_factory) -> dict[str, Path]:
    """A BPE tokenizer for decoders and a WordPiece one for encoders, trained once."""
    from pretrain.data.config import DataConfig, SourceConfig, TokenizerConfig
    from pretrain.data.sources import load_corpus
    from pretrain.data.tokenizer import save_tokenizer, train_tokenizer

    cfg = DataConfig(sources=[SourceConfig(files=str(corpus))], validation_fraction=0.0, num_proc=1,
                     tokenizer=TokenizerConfig(max_documents=30))  # fmt: skip
    texts = load_corpus(cfg, "train")
    out = {}
    for arch in ("decoder", "encoder"):
        out[arch] = save_tokenizer(train_tokenizer(texts, arch, cfg.tokenizer, 320), tmp_path_factory.mktemp(arch))
    return out


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data_cache")


MODELS = {
    "gpt2": dict(arch="decoder", position="learned", norm="layernorm", mlp="gelu_tanh"),
    "llama": dict(arch="decoder", position="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False,
                  num_kv_heads=2),
    "bert": dict(arch="encoder", position="learned", norm="layernorm", norm_position="post", mlp="gelu",
                 type_vocab_size=2, norm_eps=1e-12),
    # DeBERTa's shape: 32-token rows reach past the 4 exact distances and the log-spaced ones up to 16
    "deberta": dict(arch="encoder", position="disentangled", relative_num_buckets=8, relative_max_distance=16,
                    norm="layernorm", norm_position="post", mlp="gelu", norm_eps=1e-7),
}  # fmt: skip


def write_config(folder: Path, corpus, tokenizers, data_cache, family: str = "gpt2", name: str = "run",
                 **sections) -> Path:  # fmt: skip
    """A tiny run config under ``folder`` (runs in folder/runs); keyword sections update the defaults."""
    arch = MODELS[family]["arch"]
    cfg = {
        "name": name,
        "output_dir": str(folder / "runs"),
        "model": {"vocab_size": 320, "d_model": 32, "num_layers": 2, "num_heads": 4, "max_seq_len": 64,
                  "ffn_hidden_size": 64, **MODELS[family]},
        "data": {"sources": [{"files": str(corpus)}], "seq_len": 32, "cache_dir": str(data_cache),
                 "tokenizer": {"path": str(tokenizers[arch])}, "validation_fraction": 0.15, "num_proc": 1},
        "train": {"max_steps": 10, "micro_batch_size": 4, "lr": 3e-3, "warmup_steps": 2, "eval_every": 0,
                  "seed": 1, "deterministic": True},
        "deepspeed": {"zero_stage": 2, "precision": "fp32"},
        "checkpoint": {"every_steps": 0},
        "log": {"every_steps": 1, "progress_bar": False, "tensorboard": False, "wandb": "off"},
    }  # fmt: skip
    for section, values in sections.items():
        cfg[section] = {**cfg.get(section, {}), **values} if isinstance(values, dict) else values
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def make_config(tmp_path, corpus, tokenizers, data_cache):
    """Write a tiny run config into the test's folder; keyword sections update the defaults."""

    def make(family: str = "gpt2", name: str = "run", **sections) -> Path:
        return write_config(tmp_path, corpus, tokenizers, data_cache, family, name, **sections)

    return make


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory, corpus, tokenizers, data_cache) -> Path:
    """One tiny GPT-2 pretraining run (2 steps, one process) that fine-tuning tests start from and
    only read: made once per test process."""
    folder = tmp_path_factory.mktemp("pretrained")
    launch(1, write_config(folder, corpus, tokenizers, data_cache, name="pre", train={"max_steps": 2}))
    return folder / "runs" / "pre"


@pytest.fixture(scope="session")
def pretrained_encoder(tmp_path_factory, corpus, tokenizers, data_cache) -> Path:
    """The same for encoders: one tiny BERT pretraining run (4 steps, one process), only read."""
    folder = tmp_path_factory.mktemp("pretrained_encoder")
    launch(1, write_config(folder, corpus, tokenizers, data_cache, "bert", name="bert-pre", train={"max_steps": 4}))
    return folder / "runs" / "bert-pre"

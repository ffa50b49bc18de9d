import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pretrain.config import ConfigError, RunConfig, load_config, parse_cli, save_config, to_yaml
from pretrain.model import Transformer, count_parameters

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "configs" / "model"


@pytest.mark.parametrize(
    "name, published, rel_tol",
    [
        ("gpt2-small", 124.44e6, 0.001),  # 124,439,808 with tied embeddings
        ("gpt2-medium", 354.8e6, 0.002),
        ("bert-base", 110e6, 0.01),  # "110M": 109.5M body + MLM head
        ("bert-large", 335e6, 0.01),
        ("deberta-v3-base", 184e6, 0.005),  # "86M backbone" + "98M" embedding (microsoft/deberta-v3-base)
        ("llama-1b", 1.100e9, 0.001),  # TinyLlama-1.1B: 1,100,048,384
        ("llama-7b", 6.738e9, 0.001),  # LLaMA-2-7B: 6,738,415,616
    ],
)
def test_named_sizes_match_published_parameter_counts(name, published, rel_tol):
    cfg = load_config(MODELS / f"{name}.yaml")
    with torch.device("meta"):
        model = Transformer(cfg.model)
    n = count_parameters(model)
    assert abs(n - published) / published < rel_tol, f"{name}: {n:,} vs {published:,.0f}"


def test_gpt2_small_count_is_exact():
    with torch.device("meta"):
        model = Transformer(load_config(MODELS / "gpt2-small.yaml").model)
    assert count_parameters(model) == 124_439_808


def test_base_chain_merges_parent_then_child():
    cfg = load_config(MODELS / "llama-7b.yaml")
    assert (cfg.model.d_model, cfg.model.num_layers, cfg.model.num_kv_heads) == (4096, 32, None)
    assert cfg.model.norm == "rmsnorm" and cfg.model.mlp == "swiglu"  # inherited from llama-1b


def test_base_cycle_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_dotted_overrides_are_typed():
    cfg = load_config(MODELS / "debug.yaml", ["model.num_layers=4", "train.lr=3e-4", "model.num_kv_heads=2"])
    assert cfg.model.num_layers == 4 and isinstance(cfg.model.num_layers, int)
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.lr, float)
    assert cfg.model.kv_heads == 2
    assert load_config(MODELS / "debug.yaml", ["model.num_kv_heads=null"]).model.num_kv_heads is None



def test_a_yaml_file_with_exponent_floats_reads_them_as_numbers(tmp_path):
    """PyYAML (YAML 1.1) reads 3e-4 without a dot as a string; a float field takes it as the number."""
    (tmp_path / "run.yaml").write_text(f"base: {MODELS / 'debug.yaml'}\ntrain:\n  lr: 3e-4\n  weight_decay: 1e-2\n")
    assert yaml.safe_load("lr: 3e-4")["lr"] == "3e-4"  # what the coercion is for
    cfg = load_config(tmp_path / "run.yaml")
    assert cfg.train.lr == 3e-4 and cfg.train.weight_decay == 0.01

@pytest.mark.parametrize(
    "override, message",
    [
        ("model.num_layer=3", "unknown key 'model.num_layer'; did you mean 'model.num_layers'?"),
        ("trian.lr=1", "unknown key 'trian'; did you mean 'train'?"),
        ("model.d_model=abc", "model.d_model='abc': expected an integer"),
        ("model.num_heads=5", "model.num_heads=5: must divide d_model=64"),
        ("model.num_kv_heads=3", "model.num_kv_heads=3: must divide num_heads=4 (valid: [1, 2, 4])"),
        ("data.seq_len=1000", "data.seq_len=1000: longer than the model's 256 learned positions"),
        ("train.lr=-0.1", "train.lr=-0.1: must be in (0, 1]"),
        ("train.lr=1e9", "train.lr=1000000000.0: must be in (0, 1]"),
        ("train.lr=.nan", "train.lr=nan: must be a finite number"),
        ("train.lr=.inf", "train.lr=inf: must be a finite number"),
        ("train.dist_timeout_s=.inf", "train.dist_timeout_s=inf: must be a finite number"),
        ("train.stop_at_step=0", "train.stop_at_step=0: must be >= 1 or null"),
        ("name=a/b", "name='a/b': use letters, digits, '.', '_' and '-'"),
        ("name='run\n#SBATCH --x'", "use letters, digits"),
        ("model.position=rotary", "model.position='rotary': must be one of"),
        ("model.attention=flash", None),  # valid with learned positions
        ("model.position=disentangled", "model.position='disentangled' (DeBERTa) is built for encoders; "
         "arch='decoder' has a causal stack"),
        (("model.arch=encoder", "model.position=disentangled"), None),
        (("model.memory_len=8", "model.segment_len=8", "data.document_mask=true"),
         "data.document_mask=true with model.memory_len=8: the memory carries each row's states across"),
        ("model.dropout=1.5", "model.dropout=1.5: must be in [0, 1)"),
        ("deepspeed.zero_stage=4", "deepspeed.zero_stage=4: must be 0, 1, 2 or 3"),
        ("model.use_bias=true", "did you mean 'model.bias'?"),
        (("model.arch=encoder-decoder", "data.document_mask=true"), "data.document_mask=true: not for model.arch="),
        ("data.objective=text_infilling", "data.objective='text_infilling': an encoder-decoder's objective; "
         "model.arch='decoder' trains as a causal LM"),
        ("data.objective=infilling", "data.objective='infilling': must be one of ['span_corruption', "
         "'text_infilling']"),
        (("model.arch=encoder-decoder", "data.objective=text_infilling", "data.seq_len=256"),
         "data.seq_len=256: longer than the model's 256 learned positions (model.max_seq_len) with the decoder "
         "start token text infilling adds; use data.seq_len <= 255"),
        (("model.arch=encoder-decoder", "data.objective=text_infilling", "data.seq_len=255"), None),
        (("model.arch=encoder-decoder", "data.permute_sentences=true"),
         "data.permute_sentences=true is BART's text infilling noise; objective='span_corruption'"),
        (("model.arch=encoder-decoder", "data.span_lengths=poisson"),
         "data.span_lengths='poisson' is BART's text infilling; objective='span_corruption' numbers its spans"),
        (("model.arch=encoder-decoder", "data.objective=text_infilling", "data.span_lengths=poisson",
          "data.seq_len=255", "model.attention=flash"),
         "data.span_lengths='poisson' pads the encoder's inputs; model.attention='flash'"),
        (("model.arch=encoder-decoder", "data.objective=text_infilling", "data.span_lengths=poisson",
          "data.seq_len=255"), None),
        # the typing rules of pretrain.config._coerce, one case each
        ("model.bias=1", "model.bias=1: expected true or false"),  # no int for a bool
        ("train.lr=true", "train.lr=True: expected a number"),  # no bool for a number
        ("model.num_layers=2.5", "model.num_layers=2.5: expected an integer"),
        ("model.sliding_window=abc", "model.sliding_window='abc': expected an integer"),  # int | None
        ("train.resume=3", "train.resume=3: expected a string"),
        ("data.sources=abc", "data.sources='abc': expected a list"),
        ("model.arch=decodr", "must be one of ['decoder', 'encoder', 'encoder-decoder'] (did you mean 'decoder'?)"),
        (
            "data.sources=[{builtin: python-stdlib, files: x.txt}]",
            "data.sources[0].builtin/files/hub: give exactly one; got ['builtin', 'files']",
        ),
        ("data.sources=[{hub: wikitext, weight: -1}]", "data.sources[0].weight=-1.0: must be > 0"),
        (
            "data.sources=[{builtin: stdlib}]",
            "data.sources[0].builtin='stdlib': must be one of ['python-stdlib']",
        ),
        ("data.tokenizer.kind=sentencepiece", "data.tokenizer.kind='sentencepiece': must be one of"),
    ],
)
def test_bad_values_name_field_value_and_what_is_valid(override, message):
    if message is None:
        load_config(MODELS / "debug.yaml", [override] if isinstance(override, str) else list(override))
        return
    with pytest.raises(ConfigError) as err:
        load_config(MODELS / "debug.yaml", [override] if isinstance(override, str) else list(override))
    assert message in str(err.value)


def test_cli_error_is_one_line_exit_2_without_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "pretrain.config", str(MODELS / "debug.yaml"), "model.num_heads=3"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert (
        proc.stderr.strip() == "config error: model.num_heads=3: must divide d_model=64 (divisors near it: [2, 4, 1])"
    )


def test_an_entry_point_ends_its_process_without_the_collectors_scans():
    """At exit, once however often the entry point ran, and after every handler its command
    registered (the checker is registered first, so it runs last)."""
    code = """
import atexit, gc
import pretrain.config as config
freeze, calls = config._no_collection_at_shutdown, []
config._no_collection_at_shutdown = lambda: (calls.append(1), freeze())
atexit.register(lambda: print("at exit: frozen", gc.get_freeze_count() > 0, "calls", len(calls)))
command = config.exit_on_config_error(lambda: print("frozen", gc.get_freeze_count() > 0))
command()
command()
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.stdout.splitlines() == ["frozen False", "frozen False", "at exit: frozen True calls 1"], proc.stderr


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_yaml_that_does_not_parse_is_one_line_with_its_place(tmp_path):
    (tmp_path / "tabs.yaml").write_text("model:\n\td_model: 64\n")
    (tmp_path / "open.yaml").write_text("model:\n  d_model: [1,\n")
    with pytest.raises(ConfigError, match=r"tabs.yaml is not valid YAML: line 2, column 1: found character '\\t' that "
                                          r"cannot start any token \(while scanning for the next token\)$"):
        load_config(tmp_path / "tabs.yaml")
    with pytest.raises(ConfigError, match=r"open.yaml is not valid YAML: line 3, column 1: expected the node content, "
                                          r"but found '<stream end>' \(while parsing a flow node\)$"):
        load_config(tmp_path / "open.yaml")


def test_the_launcher_names_an_override_without_its_value(capsys):
    from launch.__main__ import main

    with pytest.raises(SystemExit) as stopped:
        main(["local", "configs/model/debug.yaml", "model.d_model"])
    assert stopped.value.code == 2
    said = capsys.readouterr().err.strip().splitlines()
    assert said == ["config error: override 'model.d_model' must look like section.key=value (e.g. train.lr=3e-4)"]
    with pytest.raises(SystemExit):  # anything else unknown stays argparse's usage error
        main(["local", "configs/model/debug.yaml", "--nnodes", "2"])
    assert "unrecognized arguments: --nnodes 2" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(p.stem for p in MODELS.glob("*.yaml")))
def test_resolved_config_round_trips(name, tmp_path):
    cfg = load_config(MODELS / f"{name}.yaml", ["train.lr=2e-4"])
    path = save_config(cfg, tmp_path / "config.yaml")
    text = path.read_text()
    again = load_config(path)
    assert again == cfg
    assert to_yaml(again) == text
    assert yaml.safe_load(text)["train"]["lr"] == 2e-4


def test_off_on_the_command_line_is_a_word_not_a_boolean():
    assert load_config(None, ["log.wandb=off"]).log.wandb == "off"
    assert load_config(None, ["log.tensorboard=false"]).log.tensorboard is False


def test_deepspeed_launchers_local_rank_argument_is_accepted():
    cfg = parse_cli([str(MODELS / "debug.yaml"), "--local_rank=1", "model.num_layers=3"])
    assert cfg.model.num_layers == 3


def test_overrides_without_a_file_use_defaults():
    cfg = parse_cli(["model.num_layers=3"])
    assert cfg.model.num_layers == 3 and cfg.model.d_model == RunConfig().model.d_model


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_main_job_writes_resolved_config_next_to_the_run(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(400)))
    proc = subprocess.run(
        [sys.executable, "-m", "pretrain", str(ROOT / "configs/pretrain/default.yaml"),
         f"output_dir={tmp_path}", "model.num_layers=1", f"data.sources=[{{files: {corpus}}}]",
         f"data.cache_dir={tmp_path / 'cache'}", "data.validation_fraction=0.2", "data.tokenizer.vocab_size=300",
         "train.max_steps=2", "train.eval_every=0", "train.micro_batch_size=2", "log.wandb=off"],
        capture_output=True, text=True, cwd=ROOT, timeout=280,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    written = load_config(tmp_path / "default" / "config.yaml")
    assert written.model.num_layers == 1 and written.output_dir == str(tmp_path) and written.train.max_steps == 2


@pytest.mark.parametrize(
    "name, gpus, accumulation",
    [("default", 2, 1), ("gpt2-small-1node", 8, 4), ("gpt2-small-4nodes", 32, 1), ("llama-1b-1node", 8, 8),
     ("llama-1b-4nodes", 32, 4), ("bert-base", 8, 1)],
)  # fmt: skip
def test_shipped_run_configs_validate_at_their_world_size(name, gpus, accumulation):
    cfg = load_config(ROOT / "configs" / "pretrain" / f"{name}.yaml")
    assert cfg.check_world_size(gpus) == accumulation


def test_every_config_field_has_a_docstring():
    """The README says each field's docstring says what it does: keep it true."""
    import ast

    missing = []
    for path in ("pretrain/config.py", "pretrain/model/config.py", "pretrain/data/config.py", "finetune/config.py",
                 "launch/cluster.py"):  # fmt: skip
        tree = ast.parse((ROOT / path).read_text())
        for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
            for field, after in zip(cls.body, [*cls.body[1:], None], strict=True):
                if isinstance(field, ast.AnnAssign) and not (
                    isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)
                ):  # fmt: skip
                    missing.append(f"{path}: {cls.name}.{field.target.id}")
    assert not missing, missing


def test_zero_buckets_are_fitted_to_the_model_aligned_and_never_grown():
    """ZeRO-1/2 allocate the reduce bucket whole every micro step: no larger than the model, a
    multiple of 1,024 elements (DeepSpeed asserts alignment), and a user's smaller bucket kept."""
    from pretrain.config import DeepSpeedSection, TrainConfig
    from pretrain.engine import buckets_fitted, deepspeed_config

    config = deepspeed_config(DeepSpeedSection(zero_stage=2), TrainConfig(), 2, 1)
    fitted = buckets_fitted(config, 29_440)["zero_optimization"]
    assert fitted["reduce_bucket_size"] == fitted["allgather_bucket_size"] == 29 * 1024  # 29,440 rounded up
    assert config["zero_optimization"]["reduce_bucket_size"] == 50_000_000  # the input is not changed
    small = deepspeed_config(DeepSpeedSection(zero_stage=1, reduce_bucket_size=2048), TrainConfig(), 2, 1)
    assert buckets_fitted(small, 10**9)["zero_optimization"]["reduce_bucket_size"] == 2048
    assert buckets_fitted(deepspeed_config(DeepSpeedSection(zero_stage=0), TrainConfig(), 1, 1), 10) == \
        deepspeed_config(DeepSpeedSection(zero_stage=0), TrainConfig(), 1, 1)  # fmt: skip


def test_a_run_folder_that_cannot_be_made_is_one_line(tmp_path):
    """output_dir or data.cache_dir under a file was a NotADirectoryError traceback in every rank."""
    from pretrain.run import check_run_folders

    (tmp_path / "afile").write_text("")
    fine = [f"output_dir={tmp_path}/a/b", f"data.cache_dir={tmp_path}/c"]
    for field in ("output_dir", "data.cache_dir"):
        cfg = load_config("configs/model/debug.yaml", [*fine, f"{field}={tmp_path}/afile/sub"])
        with pytest.raises(ConfigError, match=rf"^{field}='.*afile/sub': .*afile is a file, not a folder; choose"):
            check_run_folders(cfg)
    check_run_folders(load_config("configs/model/debug.yaml", fine))
    assert not (tmp_path / "a").exists()  # checked, not made

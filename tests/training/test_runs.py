"""End-to-end runs: exports that transformers loads, dashboards, the non-finite guard, and the
errors a user gets for bad settings or a changed model."""

import json
import subprocess
import sys

import pytest
import torch

from pretrain.status import metric_records

from .conftest import ENV, ROOT, launch, losses, metrics

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.mark.parametrize("family, nproc, stage", [("gpt2", 1, 2), ("llama", 2, 3), ("bert", 1, 1), ("deberta", 2, 3)])
def test_export_loads_in_transformers_with_the_same_logits(make_config, tmp_path, family, nproc, stage):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    from pretrain.export import load_consolidated

    masked = family in ("bert", "deberta")
    cfg = make_config(family, name=family, train={"max_steps": 6, "eval_every": 3}, deepspeed={"zero_stage": stage})
    launch(nproc, cfg)
    run_dir = tmp_path / "runs" / family
    if not masked:  # masked LM is too noisy to fall reliably in 6 steps; the weights check below holds
        assert losses(run_dir)[6] < losses(run_dir)[1]
    evals = metrics(run_dir, "eval")
    from pretrain.config import load_config

    vocab = load_config(run_dir / "config.yaml").model.vocab_size
    # above chance, not all right; the masked LM's 6 steps sit near chance, and the WordPiece
    # vocabulary is trained anew each session (tokenizers' trainer orders ties differently), so
    # its accuracy moved between 0.0049 and 0.012 over four sessions: it is held to beat a uniform guess
    floor = (1 if masked else 2) / vocab
    assert sorted(evals) == [3, 6] and floor < evals[6]["val_accuracy"] < 1
    out = tmp_path / "export"
    shard = ["--max-shard-mib", "0.05"] if stage == 3 else []  # the ZeRO-3 run streams into 50 KiB files
    proc = subprocess.run([sys.executable, "-m", "pretrain.export", str(run_dir), str(out), *shard], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for form in ("consolidated", "hf"):
        files = sorted(p.name for p in (out / form).glob("model*.safetensors"))
        if shard:
            assert len(files) >= 3 and (out / form / "model.safetensors.index.json").is_file(), files
            assert all(p.stat().st_size < 0.05 * 2**20 + 40_000 for p in (out / form).glob("model*.safetensors"))
        else:
            assert files == ["model.safetensors"]
    _, ours = load_consolidated(out / "consolidated")
    fresh = type(ours)(ours.cfg)
    assert not torch.allclose(ours.layers[0].mlp.fc.weight, fresh.layers[0].mlp.fc.weight)  # trained weights
    auto = AutoModelForMaskedLM if masked else AutoModelForCausalLM
    hf = auto.from_pretrained(out / "hf").eval()
    tok = AutoTokenizer.from_pretrained(out / "hf")
    enc = tok(["def load(path):\n    return json.load(open(path))", "import logging"], padding=True,
              return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        expected = ours.eval()(enc["input_ids"], attention_mask=enc["attention_mask"])
        got = hf(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    keep = enc["attention_mask"].bool()
    torch.testing.assert_close(got[keep], expected[keep], atol=1e-4, rtol=0)

    # the special tokens and the length travel with the export, so transformers stops where we stop
    assert tok.model_max_length == ours.cfg.max_seq_len
    assert hf.config.pad_token_id == tok.pad_token_id is not None
    if masked:
        assert tok.mask_token == "[MASK]" and tok.cls_token_id is not None and tok.sep_token_id is not None
    else:
        assert hf.config.eos_token_id == hf.generation_config.eos_token_id == tok.eos_token_id is not None
        assert hf.generation_config.pad_token_id == tok.pad_token_id
        from transformers import pipeline

        assert tok.eos_token_id == 0  # trained tokenizers put end-of-text first
        with torch.no_grad():  # all logits 0: greedy picks id 0, end-of-text, at once
            hf.get_output_embeddings().weight.zero_()
        made = pipeline("text-generation", model=hf, tokenizer=tok)("import logging", max_new_tokens=20,
                                                                    do_sample=False, return_tensors=True)  # fmt: skip
        ids = made[0]["generated_token_ids"]
        assert ids[-1] == tok.eos_token_id and len(ids) == len(tok("import logging")["input_ids"]) + 1, ids

    from finetune.weights import load_pretrained  # fine-tuning starts from either export form too

    for form in ("consolidated", "hf"):
        pre = load_pretrained(str(out / form))
        assert pre.model_cfg.d_model == ours.cfg.d_model and len(pre.tokenizer) == len(tok)
        tied = ours.cfg.tied_output_keys
        weights = pre.state_dict()
        assert set(ours.state_dict()) - set(weights) <= tied  # a tied output matrix is stored once
        for name, tensor in weights.items():
            torch.testing.assert_close(tensor, ours.state_dict()[name], msg=f"{form}: {name}")


def test_a_transformer_xl_memory_trains_partitioned_by_segments_and_exports_our_form(make_config, tmp_path):
    """model.memory_len through the command a user types: ZeRO-3 on 2 processes, 32-token rows run as
    4 segments of 8 with a memory of 8; the export keeps our form (HF has no such model) and the
    exported model's by-segment forward equals the cached decoding of the same text."""
    from pretrain.export import load_consolidated

    memory = {"position": "rope", "memory_len": 8, "segment_len": 8}
    cfg = make_config("gpt2", name="xl", model=memory, train={"max_steps": 6, "eval_every": 3},
                      deepspeed={"zero_stage": 3})  # fmt: skip
    assert "built the model partitioned" in launch(2, cfg).stdout
    run_dir = tmp_path / "runs" / "xl"
    assert losses(run_dir)[6] < losses(run_dir)[1] and sorted(metrics(run_dir, "eval")) == [3, 6]
    proc = subprocess.run([sys.executable, "-m", "pretrain.export", str(run_dir), str(tmp_path / "export")],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0 and "no HF export" in proc.stdout and "'memory_len': 8" in proc.stdout, proc.stdout
    assert not (tmp_path / "export" / "hf").exists()
    _, model = load_consolidated(tmp_path / "export" / "consolidated")
    ids = torch.randint(0, model.cfg.vocab_size, (1, 20))
    with torch.no_grad():
        cache = model.eval().new_cache(1, 20)
        steps = [model(ids[:, t : t + 1], cache=cache, attention_mask=torch.ones(1, t + 1)) for t in range(20)]
        torch.testing.assert_close(torch.cat(steps, dim=1), model(ids), atol=1e-5, rtol=0)


def test_performer_redraws_its_features_in_training_and_the_draw_travels_with_checkpoints(make_config, tmp_path):
    """linear_attention_redraw=2 under ZeRO-3 on 2 processes: 5 steps end on draw 2 ((5 - 1) // 2),
    which the checkpoint keeps and the export carries."""
    from pretrain.export import load_consolidated

    performer = {"position": "rope", "linear_attention": "performer", "linear_attention_dim": 16,
                 "linear_attention_redraw": 2}  # fmt: skip
    cfg = make_config("gpt2", name="perf", model=performer, train={"max_steps": 5}, deepspeed={"zero_stage": 3})
    launch(2, cfg)
    run_dir = tmp_path / "runs" / "perf"
    assert sorted(losses(run_dir)) == list(range(1, 6))
    proc = subprocess.run([sys.executable, "-m", "pretrain.export", str(run_dir), str(tmp_path / "export")],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    _, model = load_consolidated(tmp_path / "export" / "consolidated")
    assert [int(layer.attn.draw) for layer in model.layers] == [2, 2]
    assert [layer.attn._draw for layer in model.layers] == [2, 2]  # the features it makes are draw 2's


def test_dashboards_get_the_metrics_and_the_config(make_config, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_config(name="dash", train={"max_steps": 4, "eval_every": 2},
                      log={"tensorboard": True, "wandb": "offline", "progress_bar": True, "peak_tflops": 0.5,
                           "every_steps": 1, "inspect_every": 1})  # fmt: skip
    out = launch(2, cfg).stdout
    run_dir = tmp_path / "runs" / "dash"
    # MFU on CPU, from log.peak_tflops: FLOPs of the matmuls per token x tokens/s over 2 x 0.5 TFLOP/s
    from pretrain.config import load_config
    from pretrain.model import Transformer, flops_per_token

    run_cfg = load_config(run_dir / "config.yaml")
    fpt = flops_per_token(Transformer(run_cfg.model), run_cfg.data.seq_len, 1.0)
    train = metric_records(run_dir, "train")
    assert len(train) == 4
    for r in train:
        assert r["mfu"] == pytest.approx(fpt * r["tokens_per_s"] / (2 * 0.5e12), rel=1e-6)
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "eval/val_loss"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert "config/text_summary" in tags["tensors"]
    for name in ("entropy", "distance"):  # per-head attention heatmaps at every evaluation
        assert [e.step for e in events.Images(f"attention/{name}")] == [2, 4]
        assert len(events.Images(f"attention/{name}")[0].encoded_image_string) > 5000
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and "wandb sync" in out
    assert "tensorboard --logdir" in out and out.count("done: step 4;") == 1  # rank 0 only


def test_nonfinite_loss_on_one_rank_is_skipped_by_all(make_config, tmp_path):
    cfg = make_config(name="nan", train={"max_steps": 4})
    env = {"NAN_CALLS": "3", "CHECKSUMS": str(tmp_path)}
    out = launch(2, cfg, module="tests.training.nonfinite_worker", env_extra=env).stdout
    for rank in (0, 1):
        lines = (tmp_path / f"rank{rank}.jsonl").read_text().splitlines()
        sums = {r["call"]: r["checksum"] for r in map(json.loads, lines)}
        assert sums[3] == sums[4], "the skipped batch changed the weights"
        assert sums[2] != sums[3] and sums[4] != sums[5]  # finite batches do change them
    assert "step 3: non-finite loss on 1 rank(s); batch skipped" in out
    assert metrics(tmp_path / "runs" / "nan")[4]["skipped_batches"] == 1


def test_nonfinite_losses_in_a_row_stop_the_run_naming_the_step(make_config, tmp_path):
    cfg = make_config(name="nan3", train={"max_steps": 6, "max_nonfinite": 3})
    env = {"NAN_CALLS": "3,4,5", "CHECKSUMS": str(tmp_path)}
    proc = launch(2, cfg, module="tests.training.nonfinite_worker", env_extra=env, check=False)
    assert proc.returncode != 0
    assert "3 non-finite losses in a row at step 3" in proc.stdout


def run_quiet(cfg, *overrides, world_size=1):
    env = {**ENV, "WORLD_SIZE": str(world_size)}
    return subprocess.run([sys.executable, "-m", "pretrain", str(cfg), *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.mark.parametrize(
    "overrides, world_size, message",
    [
        (["deepspeed.zero_stage=2", "deepspeed.offload_params=true"], 1,
         "deepspeed.offload_params=true needs zero_stage=3, not 2"),
        (["deepspeed.zero_stage=0", "deepspeed.offload_optimizer=true"], 1, "offload_optimizer=true needs zero_stage"),
        (["train.global_batch_size=12"], 2,
         "train.global_batch_size=12: must be a multiple of micro_batch_size x processes = 4 x 2 = 8"),
        (["deepspeed.config_file=FP16JSON"], 1, "enables both bf16 and fp16"),
        pytest.param(["deepspeed.precision=fp16"], 1,
                     "deepspeed.precision=fp16: DeepSpeed cannot train in fp16 on this machine's CPU (no GPUs)",
                     marks=pytest.mark.skipif(torch.cuda.is_available() or torch.ops.mkldnn._is_mkldnn_fp16_supported(),
                                              reason="this machine has fp16 that DeepSpeed trains with")),
    ],
)  # fmt: skip
def test_impossible_deepspeed_settings_stop_before_anything_starts(make_config, tmp_path, overrides, world_size,
                                                                   message):  # fmt: skip
    (tmp_path / "fp16.json").write_text(json.dumps({"fp16": {"enabled": True}}))
    overrides = [o.replace("FP16JSON", str(tmp_path / "fp16.json")) for o in overrides]
    cfg = make_config(name="bad", deepspeed={"precision": "bf16"})
    proc = run_quiet(cfg, *overrides, world_size=world_size)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert "deepspeed" not in proc.stdout.lower()  # DeepSpeed never started
    assert not (tmp_path / "runs" / "bad").exists()  # the run folder (output_dir/name) was never made


def test_resume_refuses_a_new_shape_and_warns_about_a_new_batch(make_config, tmp_path):
    cfg = make_config(name="shape", train={"max_steps": 3}, checkpoint={"every_steps": 3})
    launch(1, cfg)
    proc = run_quiet(cfg, "model.num_layers=3", "train.max_steps=5")
    assert proc.returncode == 2
    assert "the checkpoint's model has another shape (model.num_layers: 2 -> 3)" in proc.stderr
    out = launch(1, cfg, "train.max_steps=5", "train.micro_batch_size=8").stdout
    assert "warning: global batch changed 4 -> 8 sequences" in out
    assert sorted(losses(tmp_path / "runs" / "shape")) == [1, 2, 3, 4, 5]
    never = run_quiet(cfg, "train.resume=never", "train.max_steps=6")
    assert never.returncode == 2 and "train.resume=never but" in never.stderr


def test_a_deepspeed_config_file_is_merged_section_by_section(make_config, tmp_path):
    """A user's DeepSpeed JSON adds to the generated config key by key: its timers switch on, and
    its one ZeRO key leaves our ZeRO stage (2: the optimizer states go in a file of their own)."""
    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"wall_clock_breakdown": True, "steps_per_print": 1,
                                "zero_optimization": {"reduce_bucket_size": 100000}}))  # fmt: skip
    out = launch(1, make_config(name="merged", train={"max_steps": 2}, deepspeed={"config_file": str(user)})).stdout
    assert "fwd_microstep" in out or "time (ms)" in out, out[-3000:]  # DeepSpeed's own timers, from the file
    saved = tmp_path / "runs" / "merged" / "checkpoints" / "step_00000002"
    assert (saved / "zero_pp_rank_0_mp_rank_00_optim_states.pt").is_file()  # still ZeRO-2
    plain = launch(1, make_config(name="plain", train={"max_steps": 2})).stdout
    assert "fwd_microstep" not in plain and "time (ms)" not in plain

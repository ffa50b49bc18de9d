"""Each benchmark subcommand runs at a tiny size and reports numbers that hang together (no timing
is asserted: speed is read from the benchmark's output, not from a test)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def bench(*args, timeout=300):
    proc = subprocess.run([sys.executable, "-m", "pretrain.bench", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_step_runs_ours_beside_hf_with_the_same_weights_and_reports_mfu(tmp_path):
    out = bench("step", "configs/model/debug.yaml", "--batch", 2, "--seq-len", 32, "--warmup", 1, "--rounds", 2,
                "--peak-tflops", 1.0, "--out", tmp_path)  # fmt: skip
    assert "x HF" in out
    record = json.loads((tmp_path / "step-debug-fp32-sdpa.json").read_text())
    rows = {r["name"]: r for r in record["rows"]}
    assert set(rows) == {"ours", "hf", "nanogpt-style"}  # the debug model is GPT-2 shaped
    for name in ("hf", "nanogpt-style"):  # same model, same batch
        assert rows["ours"]["loss"] == pytest.approx(rows[name]["loss"], abs=1e-4)
    for r in rows.values():
        assert r["tokens_per_s"] == pytest.approx(2 * 32 / (r["step_ms"] / 1e3))
        # MFU on CPU once a peak is given: FLOPs per token x tokens/s over the peak
        assert r["mfu"] == pytest.approx(record["flops_per_token"] * r["tokens_per_s"] / 1e12)
    assert rows["hf"]["vs_hf"] == 1.0 and rows["ours"]["vs_hf"] == pytest.approx(
        rows["hf"]["step_ms"] / rows["ours"]["step_ms"]
    )
    assert rows["ours"]["vs_nanogpt"] == pytest.approx(rows["nanogpt-style"]["step_ms"] / rows["ours"]["step_ms"])
    assert rows["ours"]["saved_gib"] > 0


def test_attention_sweep_shows_eager_keeping_the_score_matrix(tmp_path):
    bench("attention", "--lengths", 128, 256, 512, "--kernels", "eager", "sdpa", "flex", "performer", "linformer",
          "--cases", "causal", "bidirectional", "alibi", "--linear-dim", 32, "--out", tmp_path)  # fmt: skip
    rows = json.loads((tmp_path / "attention.json").read_text())["rows"]
    saved = {(r["case"], r["kernel"], r["seq_len"]): r.get("saved_mib") for r in rows}
    # eager keeps the (T, T) weights of 16 heads for backward: 16 * 256 * 256 * 4 bytes = 4 MiB and more
    assert saved[("causal", "eager", 256)] >= 4.0
    assert saved[("causal", "eager", 256)] > 2 * saved[("causal", "sdpa", 256)]  # sdpa keeps q, k, v, out
    assert saved[("causal", "eager", 256)] > 3 * saved[("causal", "eager", 128)]  # quadratic in T
    assert any(r["kernel"] == "flex" and "no backward on CPU" in r.get("note", "") for r in rows)
    # linear attention keeps memory linear in T; linformer is for bidirectional stacks, no position bias
    for kernel, case in (("performer", "causal"), ("linformer", "bidirectional")):
        assert saved[(case, kernel, 512)] < 2.5 * saved[(case, kernel, 256)], kernel
        assert saved[(case, kernel, 512)] < saved[(case, "eager", 512)] / 2, kernel
    notes = {(r["case"], r["kernel"]): r.get("note", "") for r in rows}
    assert "cannot be causal" in notes[("causal", "linformer")] and "alibi bias" in notes[("alibi", "performer")]
    for name in ("attention-time.png", "attention-memory.png"):
        assert (tmp_path / name).stat().st_size > 10_000


@pytest.mark.slow
def test_zero_runs_real_processes_per_stage(tmp_path):
    bench("zero", "configs/model/debug.yaml", "--steps", 2, "--seq-len", 32, "--only", "zero2", "zero2, 1 process",
          "--out", tmp_path, timeout=400)  # fmt: skip
    record = json.loads((tmp_path / "zero.json").read_text())
    rows = {r["setting"]: r for r in record["rows"]}
    assert rows["zero2"]["processes"] == 2 and rows["zero2, 1 process"]["processes"] == 1
    for r in rows.values():
        assert r["tokens_per_s"] > 0 and r["peak_mib"] > r["base_mib"] > 0
    assert record["weak_scaling"] == pytest.approx(
        rows["zero2"]["tokens_per_s"] / (2 * rows["zero2, 1 process"]["tokens_per_s"])
    )


@pytest.mark.slow
def test_host_memory_of_building_loading_and_exporting(tmp_path):
    bench("host", "configs/model/debug.yaml", "--out", tmp_path, timeout=400)
    record = json.loads((tmp_path / "host.json").read_text())
    rows = {(r["phase"], r["setting"]): r for r in record["rows"]}
    assert set(rows) == {("build", "ZeRO-2"), ("build", "ZeRO-3"), ("load", "ZeRO-2"), ("load", "ZeRO-3"),
                         ("export", "ZeRO-3 checkpoint, streamed"), ("export", "ZeRO-3 checkpoint, whole")}  # fmt: skip
    for r in rows.values():
        assert r["peak_mib"] >= r["base_mib"] > 100 and r["above_base_mib"] == r["peak_mib"] - r["base_mib"]
    assert record["parameters"] > 0 and "host memory" not in record["table"]


def test_gpu_plan_dry_run_completes_every_step(tmp_path):
    bench("gpu", "--dry-run", "--out", tmp_path, timeout=500)
    summary = (tmp_path / "summary.md").read_text()
    assert summary.count(": exit 0") == 3, summary
    assert "skipped" not in summary and "stopped after" not in summary
    assert (tmp_path / "step-debug-fp32-sdpa.json").exists() and (tmp_path / "attention.json").exists()


@pytest.mark.parametrize("family, overrides", [("t5", []), ("bart", ["model.position=learned", "model.norm=layernorm",
                         "model.norm_position=post", "model.mlp=gelu", "model.bias=true", "model.norm_eps=1e-5"])])
def test_step_runs_an_encoder_decoder_beside_its_hf_class(tmp_path, family, overrides):
    """T5's and BART's shapes train beside T5ForConditionalGeneration and BartForConditionalGeneration
    with the same weights and batch (the same first loss); tokens and MFU count source tokens."""
    bench("step", "configs/model/debug-t5.yaml", *overrides, "--batch", 2, "--seq-len", 32, "--warmup", 1,
          "--rounds", 2, "--peak-tflops", 1.0, "--out", tmp_path)  # fmt: skip
    record = json.loads(next(tmp_path.glob("step-debug-t5-*.json")).read_text())
    rows = {r["name"]: r for r in record["rows"]}
    assert set(rows) == {"ours", "hf"}  # no nanoGPT-shaped twin for an encoder-decoder
    assert rows["ours"]["loss"] == pytest.approx(rows["hf"]["loss"], abs=1e-4)
    source = 32 - 5 + 2 + 1  # span corruption and text infilling alike: 5 noise tokens in 2 spans, each one token
    assert rows["ours"]["tokens_per_s"] == pytest.approx(2 * source / (rows["ours"]["step_ms"] / 1e3))

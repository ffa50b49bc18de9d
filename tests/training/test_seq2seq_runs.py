"""The encoder-decoder pretrained with span corruption through `python -m pretrain`: real DeepSpeed
processes, ZeRO-3 built partitioned like ZeRO-2 built whole, exact resume, and an export that
transformers loads as T5ForConditionalGeneration with our logits."""

import json
import subprocess
import sys

import pytest
import torch

from .conftest import ENV, ROOT, launch, losses, metrics

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

T5 = {"arch": "encoder-decoder", "num_decoder_layers": 2, "position": "relative", "norm": "rmsnorm", "norm_eps": 1e-6,
      "mlp": "geglu_tanh", "bias": False, "tie_embeddings": True, "relative_num_buckets": 8,
      "relative_max_distance": 32}  # fmt: skip


def t5_config(make_config, name, **sections):
    data = {"tokenizer": {"path": None, "vocab_size": 320}, "validation_fraction": 0.15}  # trained with sentinels
    return make_config(name=name, model=T5, data=data, **sections)


def test_span_corruption_pretraining_resumes_exactly_and_exports_to_t5(make_config, tmp_path):
    train = {"max_steps": 6, "eval_every": 3, "eval_batches": 2}
    zero3 = t5_config(make_config, "t5", train=train, deepspeed={"zero_stage": 3}, checkpoint={"every_steps": 3})
    out = launch(2, zero3).stdout
    assert "span sentinels among them" in out and "built the model partitioned" in out, out[-2000:]
    run = tmp_path / "runs" / "t5"
    got = losses(run)
    assert sorted(got) == list(range(1, 7)) and got[6] < got[1]
    first = metrics(run)[1]
    # 32 tokens a sequence: 5 noise tokens in 2 spans -> encoder 30 tokens, decoder 8 (spans, sentinels, eos)
    assert first["tokens"] == 2 * 4 * 30
    evals = metrics(run, "eval")
    assert sorted(evals) == [3, 6]
    assert all(0 < e["val_loss"] < 20 and 0 <= e["val_accuracy"] < 1 for e in evals.values())

    launch(2, t5_config(make_config, "t5-zero2", train={**train, "max_steps": 1}))
    assert losses(tmp_path / "runs" / "t5-zero2")[1] == pytest.approx(got[1], rel=1e-6)  # the same initial weights

    step3 = run / "checkpoints" / "step_00000003"
    launch(2, t5_config(make_config, "again", train={**train, "resume": str(step3)}, deepspeed={"zero_stage": 3}))
    again = losses(tmp_path / "runs" / "again")
    assert {s: again[s] for s in (4, 5, 6)} == {s: got[s] for s in (4, 5, 6)}  # bit for bit

    gen = subprocess.run([sys.executable, "-m", "finetune.generate", str(run), "--prompt", "def load(fp):",
                          "--num-beams", "3", "--max-new-tokens", "6"], cwd=ROOT, env=ENV, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert gen.returncode == 0, gen.stderr[-3000:]
    assert json.loads(gen.stdout.splitlines()[-1])["prompt"] == "def load(fp):"

    from transformers import AutoModelForSeq2SeqLM

    from pretrain.checkpoint import saved_config
    from pretrain.export import export, load_model
    from pretrain.shards import ShardedWeights

    written = export(run, tmp_path / "exp")
    hf = AutoModelForSeq2SeqLM.from_pretrained(written["hf"]).eval()
    cfg = json.loads((written["hf"] / "config.json").read_text())
    assert cfg["model_type"] == "t5" and cfg["eos_token_id"] is not None and cfg["decoder_start_token_id"] is not None
    ours = load_model(dict(ShardedWeights(written["consolidated"]).items()), saved_config(step3).model).eval()
    src, tgt = torch.randint(5, 300, (2, 12)), torch.randint(5, 300, (2, 6))
    mask = torch.ones_like(src)
    mask[1, 8:] = 0
    with torch.no_grad():
        want = ours(src, tgt, mask)
        assert torch.allclose(hf(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits, want, atol=1e-4)


def test_seq2seq_fine_tuning_from_a_span_corruption_run(make_config, tmp_path):
    """task.kind=seq2seq on source/target pairs at 2 processes; `finetune.evaluate` scores the run's
    validation data with the loss training reported, and decodes it greedily for exact match."""
    from .test_finetune import finetune_config

    launch(1, t5_config(make_config, "pre", train={"max_steps": 2}))
    words = ["load", "dump", "parse", "scan", "read", "write", "open", "close", "split", "join", "strip", "find"]
    rows = [{"prompt": f"{a} {b}", "response": f"{b} {a}"} for a in words for b in words[:4]]  # swap the words
    data_file = tmp_path / "pairs.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = finetune_config(make_config, "swap", tmp_path / "runs" / "pre", {"kind": "seq2seq"},
                          data={"sources": [{"files": str(data_file)}], "validation_fraction": 0.25},
                          train={"max_steps": 6, "eval_every": 6, "micro_batch_size": 2})  # fmt: skip
    out = launch(2, cfg, module="finetune").stdout
    assert "task seq2seq:" in out, out[-2000:]
    run = tmp_path / "runs" / "swap"
    got = losses(run)
    assert sorted(got) == list(range(1, 7)) and all(0 < v < 20 for v in got.values())
    val = metrics(run, "eval")[6]
    proc = subprocess.run([sys.executable, "-m", "finetune.evaluate", str(run), "--split", "validation", "--out",
                           str(tmp_path / "val.json")], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    scored = json.loads((tmp_path / "val.json").read_text())
    assert scored["task"] == "seq2seq" and scored["examples"] > 0 and 0 <= scored["exact_match"] <= 1
    assert scored["loss"] == pytest.approx(val["val_loss"], rel=1e-5)  # one process scores as training did

    wrong = finetune_config(make_config, "wrong", tmp_path / "runs" / "pre", {"kind": "generate"},
                            data={"sources": [{"files": str(data_file)}]})  # fmt: skip
    refused = launch(1, wrong, module="finetune", check=False)
    assert refused.returncode == 2 and "an encoder-decoder fine-tunes with task.kind=seq2seq" in refused.stdout

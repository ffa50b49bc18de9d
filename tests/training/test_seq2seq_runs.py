"""The encoder-decoder pretrained with span corruption through `python -m pretrain`: real DeepSpeed
processes, ZeRO-3 built partitioned like ZeRO-2 built whole, exact resume after SIGKILL, an export
that transformers loads as T5ForConditionalGeneration with our logits, and fine-tuning from it
(sequence-to-sequence and classification) that beats the same shape from random weights. BART's
shape pretrained with text infilling, exported as BartForConditionalGeneration and fine-tuned from
that HF folder."""

import json
import re
import subprocess
import sys

import pytest
import torch

from .conftest import ENV, ROOT, kill_once_written, launch, losses, metrics

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

T5 = {"arch": "encoder-decoder", "num_decoder_layers": 2, "position": "relative", "norm": "rmsnorm", "norm_eps": 1e-6,
      "mlp": "geglu_tanh", "bias": False, "tie_embeddings": True, "relative_num_buckets": 8,
      "relative_max_distance": 32}  # fmt: skip


# "Attention Is All You Need": sinusoidal positions, post-norm, ReLU; trained here with the flash
# kernel, which takes no padding mask (fine-tuning and batched decoding then run sdpa).
PAPER = {"arch": "encoder-decoder", "position": "sinusoidal", "norm_position": "post", "mlp": "relu",
         "tie_embeddings": True, "attention": "flash"}  # fmt: skip


# BART: learned positions (each stack its own), post-norm with a norm on each stack's embeddings, GELU.
BART = {"arch": "encoder-decoder", "position": "learned", "norm": "layernorm", "norm_position": "post", "mlp": "gelu",
        "tie_embeddings": True}  # fmt: skip


def t5_config(make_config, name, model=T5, data=None, **sections):
    data = {"tokenizer": {"path": None, "vocab_size": 320}, "validation_fraction": 0.15, **(data or {})}  # trained
    return make_config(name=name, model=model, data=data, **sections)


def test_span_corruption_pretraining_resumes_exactly_after_sigkill_and_exports_to_t5(make_config, tmp_path):
    train = {"max_steps": 24, "eval_every": 12, "eval_batches": 2}
    common = dict(train=train, deepspeed={"zero_stage": 3}, checkpoint={"every_steps": 4, "keep_last": 2})
    out = launch(2, t5_config(make_config, "t5", **common)).stdout
    assert "span sentinels among them" in out and "built the model partitioned" in out, out[-2000:]
    run = tmp_path / "runs" / "t5"
    got = losses(run)
    assert sorted(got) == list(range(1, 25)) and got[24] < got[1]
    first = metrics(run)[1]
    # 32 tokens a sequence: 5 noise tokens in 2 spans -> encoder 30 tokens, decoder 8 (spans, sentinels, eos)
    assert first["tokens"] == 2 * 4 * 30
    evals = metrics(run, "eval")
    assert sorted(evals) == [12, 24]
    assert all(0 < e["val_loss"] < 20 and 0 <= e["val_accuracy"] < 1 for e in evals.values())

    launch(2, t5_config(make_config, "t5-zero2", train={**train, "max_steps": 1, "eval_every": 1},
                        log={"tensorboard": True, "inspect_every": 1}))  # fmt: skip
    assert losses(tmp_path / "runs" / "t5-zero2")[1] == pytest.approx(got[1], rel=1e-6)  # the same initial weights
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "runs" / "t5-zero2" / "tensorboard"))
    events.Reload()
    summaries = {"encoder_entropy", "encoder_distance", "decoder_entropy", "decoder_distance", "cross_entropy"}
    assert {t for t in events.Tags()["images"] if t.startswith("attention/")} == {f"attention/{n}" for n in summaries}

    # The same run again, killed (SIGKILL, every process) once its step-4 checkpoint is complete,
    # then started again with the same command: it resumes and gives the same losses bit for bit.
    cfg = t5_config(make_config, "killed", **common)
    killed = tmp_path / "runs" / "killed"
    kill_once_written(2, cfg, killed / "checkpoints" / "step_00000004" / "complete.json")
    assert max(losses(killed)) < 24, "the run finished before it could be killed"
    assert "resuming from" in launch(2, cfg).stdout
    assert losses(killed) == got  # every step, bit for bit

    gen = subprocess.run([sys.executable, "-m", "finetune.generate", str(run), "--prompt", "def load(fp):",
                          "--num-beams", "3", "--max-new-tokens", "6"], cwd=ROOT, env=ENV, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert gen.returncode == 0, gen.stderr[-3000:]
    assert json.loads(gen.stdout.splitlines()[-1])["prompt"] == "def load(fp):"
    look = subprocess.run([sys.executable, "-m", "finetune.inspect", str(run), "--text", "def load(fp):",
                           "--heads", "0", "--out", str(tmp_path / "inspect")], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert look.returncode == 0, look.stderr[-3000:]
    drawn = json.loads((tmp_path / "inspect" / "attention.json").read_text())  # the source, and its own output
    assert drawn["cross"]["keys"] == drawn["encoder"]["tokens"] and len(drawn["cross"]["tokens"]) >= 1
    assert (tmp_path / "inspect" / "cross_layer1_head0.png").stat().st_size > 5000

    from transformers import AutoModelForSeq2SeqLM

    from pretrain.checkpoint import saved_config
    from pretrain.export import export, load_model
    from pretrain.shards import ShardedWeights

    written = export(run, tmp_path / "exp")
    hf = AutoModelForSeq2SeqLM.from_pretrained(written["hf"]).eval()
    hf_cfg = json.loads((written["hf"] / "config.json").read_text())
    assert hf_cfg["model_type"] == "t5" and hf_cfg["eos_token_id"] is not None
    assert hf_cfg["decoder_start_token_id"] is not None
    ours = load_model(dict(ShardedWeights(written["consolidated"]).items()), saved_config(written["checkpoint"]).model)
    ours.eval()
    src, tgt = torch.randint(5, 300, (2, 12)), torch.randint(5, 300, (2, 6))
    mask = torch.ones_like(src)
    mask[1, 8:] = 0
    with torch.no_grad():
        want = ours(src, tgt, mask)
        assert torch.allclose(hf(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits, want, atol=1e-4)

    # The built-in demo task (a function's name from its docstring and body): fine-tuned from the
    # resumed run, and from random weights of the same shape, with the same data and steps.
    from .test_finetune import finetune_config

    task = {"kind": "seq2seq", "builtin": "stdlib-names", "target_len": 48}
    scores = {}
    for name, extra in (("names", {}), ("names-random", {"init_random": True})):
        ft = finetune_config(make_config, name, killed, task, data={"seq_len": 96, "validation_fraction": 0.1},
                             train={"max_steps": 10, "eval_every": 10, "micro_batch_size": 4}, **extra)  # fmt: skip
        out = launch(1, ft, module="finetune").stdout
        assert "task seq2seq:" in out, out[-2000:]
        scores[name] = metrics(tmp_path / "runs" / name, "eval")[10]["val_loss"]
    assert scores["names"] < scores["names-random"] - 0.1, scores

    # A tagger of its encoder exports as T5ForTokenClassification, with the logits predict computes
    from transformers import AutoModelForTokenClassification

    from finetune.predict import load_classifier

    from .test_finetune import function_rows, write_jsonl

    rows = [{"tokens": f.head.split()[:10], "ner_tags": ["B-KW" if w == "def" else "O" for w in f.head.split()[:10]]}
            for f in function_rows()]  # fmt: skip
    data = write_jsonl(tmp_path / "tags.jsonl", rows)
    ft = finetune_config(make_config, "tagger", killed, {"kind": "tag"}, data={"sources": [{"files": str(data)}],
                         "seq_len": 32}, train={"max_steps": 2, "eval_every": 0})  # fmt: skip
    launch(1, ft, module="finetune")
    written = export(tmp_path / "runs" / "tagger", tmp_path / "exp-tagger")
    hf = AutoModelForTokenClassification.from_pretrained(written["hf"]).eval()
    assert type(hf).__name__ == "T5ForTokenClassification" and hf.config.id2label == {0: "B-KW", 1: "O"}
    ours, tok, _, _ = load_classifier(tmp_path / "runs" / "tagger")
    ids = tok([" ".join(rows[0]["tokens"]), " ".join(rows[1]["tokens"][:4])], return_tensors="pt", padding=True)
    with torch.no_grad():
        got = ours(ids["input_ids"], attention_mask=ids["attention_mask"])
        want = hf(**ids).logits
    torch.testing.assert_close(want[ids["attention_mask"].bool()], got[ids["attention_mask"].bool()], atol=1e-5, rtol=0)


def test_the_papers_model_trained_with_flash_fine_tunes_for_seq2seq_and_classification(make_config, tmp_path):
    """Pretrained with attention=flash: task.kind=seq2seq at 2 processes and classification of the
    pooled encoder output (ZeRO-3, 2 processes) run sdpa on their padded batches; `finetune.evaluate` scores the run's
    validation data with the loss training reported and decodes it for exact match and chrF;
    generation of prompts of different lengths and `finetune.predict` work; bad tasks are one line."""
    from .test_finetune import finetune_config, function_rows, write_jsonl

    launch(1, t5_config(make_config, "pre", model=PAPER, train={"max_steps": 2}))
    pre = tmp_path / "runs" / "pre"
    words = ["load", "dump", "parse", "scan", "read", "write", "open", "close", "split", "join", "strip", "find"]
    rows = [{"prompt": f"{a} {b}", "response": f"{b} {a}"} for a in words for b in words[:4]]  # swap the words
    data_file = write_jsonl(tmp_path / "pairs.jsonl", rows)
    cfg = finetune_config(make_config, "swap", pre, {"kind": "seq2seq"},
                          data={"sources": [{"files": str(data_file)}], "validation_fraction": 0.25},
                          train={"max_steps": 6, "eval_every": 6, "micro_batch_size": 2})  # fmt: skip
    out = launch(2, cfg, module="finetune").stdout
    assert "task seq2seq:" in out, out[-2000:]
    assert "attention: sdpa (the checkpoint's flash takes no padding mask" in out
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
    assert 0 <= scored["chrf"] <= 100
    assert scored["loss"] == pytest.approx(val["val_loss"], rel=1e-5)  # one process scores as training did

    prompts = ["def load(fp):", "class JSONDecoder(object): pass"]  # padded to the longer one
    gen = subprocess.run([sys.executable, "-m", "finetune.generate", str(pre), "--greedy", "--max-new-tokens", "4",
                          *(x for p in prompts for x in ("--prompt", p))], cwd=ROOT, env=ENV, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert gen.returncode == 0, gen.stderr[-3000:]
    assert "attention: sdpa (the checkpoint's flash" in gen.stderr
    assert [json.loads(line)["prompt"] for line in gen.stdout.splitlines() if line.startswith("{")] == prompts

    functions = [{"text": f.head + f.body, "label": f.package} for f in function_rows()]
    cls = finetune_config(make_config, "cls", pre, {"kind": "classify"},
                          data={"sources": [{"files": str(write_jsonl(tmp_path / "f.jsonl", functions))}],
                                "validation_fraction": 0.1}, train={"max_steps": 2, "eval_every": 2},
                          deepspeed={"zero_stage": 3})  # fmt: skip
    out = launch(2, cls, module="finetune").stdout  # built partitioned, the decoder dropped before ZeRO sees it
    assert "3 labels" in out and "built the model partitioned" in out, out[-2000:]
    assert 0 <= metrics(tmp_path / "runs" / "cls", "eval")[2]["val_accuracy"] <= 1
    texts = write_jsonl(tmp_path / "texts.jsonl", [{"text": r["text"]} for r in functions[:5]])
    proc = subprocess.run([sys.executable, "-m", "finetune.predict", str(tmp_path / "runs" / "cls"), str(texts)],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    labels = [json.loads(line)["label"] for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(labels) == 5 and set(labels) <= {"email", "json", "logging"}
    # The classifier's checkpoint (the encoder, no decoder or LM head) starts another classifier;
    # a seq2seq task from it is refused by name, before any process starts.
    cls_run = tmp_path / "runs" / "cls"
    again = finetune_config(make_config, "cls-again", cls_run, {"kind": "classify"},
                            data={"sources": [{"files": str(tmp_path / "f.jsonl")}], "validation_fraction": 0.1},
                            train={"max_steps": 1, "eval_every": 1})  # fmt: skip
    assert "3 labels; weights from checkpoint" in launch(1, again, module="finetune").stdout
    from_cls = finetune_config(make_config, "from-cls", cls_run, {"kind": "seq2seq"},
                               data={"sources": [{"files": str(data_file)}]})  # fmt: skip
    refused = launch(1, from_cls, module="finetune", check=False)
    said = refused.stdout
    assert refused.returncode == 2 and "task.kind=seq2seq needs an LM head and the decoder; checkpoint" in said and \
        "holds the stack without them (a classifier's body" in said, said[-2000:]  # fmt: skip

    data = {"sources": [{"files": str(data_file)}]}
    wrong = finetune_config(make_config, "wrong", pre, {"kind": "generate"}, data=data)
    refused = launch(1, wrong, module="finetune", check=False)
    assert refused.returncode == 2 and "an encoder-decoder fine-tunes with task.kind=seq2seq" in refused.stdout
    short = finetune_config(make_config, "short", pre, {"kind": "seq2seq", "target_len": 2}, data=data)
    refused = launch(1, short, module="finetune", check=False)
    assert refused.returncode == 2, refused.stdout[-2000:]
    assert re.search(r"task.target_len=2: (\d+) of the \1 targets in the train data are longer \(the longest has "
                     r"\d+ tokens with its end-of-text\); set task.target_len >= \d+", refused.stdout), refused.stdout
    assert not (tmp_path / "runs" / "short" / "checkpoints").exists()


def test_text_infilling_pretrains_bart_which_exports_to_hf_and_fine_tunes_from_the_hf_folder(make_config, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    from pretrain.checkpoint import saved_config
    from pretrain.export import export, load_model
    from pretrain.shards import ShardedWeights

    data = {"objective": "text_infilling", "noise_density": 0.3, "span_lengths": "poisson",
            "permute_sentences": True}  # BART's own noise: Poisson spans, lines shuffled
    cfg = t5_config(make_config, "bart", model=BART, data=data, train={"max_steps": 8, "eval_every": 8,
                    "eval_batches": 2}, deepspeed={"zero_stage": 3})  # fmt: skip
    out = launch(2, cfg).stdout  # ZeRO-3: the decoder looks its tokens up in the encoder's partitioned table
    assert "(320 tokens, <mask> among them)" in out and "built the model partitioned" in out, out[-2000:]
    run = tmp_path / "runs" / "bart"
    got = losses(run)
    assert sorted(got) == list(range(1, 9)) and got[8] < got[1]
    # 32 tokens a sequence: 10 in Poisson-length spans, each one mask -> encoder inputs of 22 + spans + eos
    # tokens, padded to the longest and counted without the padding; the decoder writes all 32 and eos
    seen = [0] + [metrics(run)[step]["tokens"] for step in range(1, 9)]  # a running count
    tokens = [b - a for a, b in zip(seen, seen[1:], strict=False)]
    assert all(2 * 4 * 24 <= n <= 2 * 4 * 33 for n in tokens) and len(set(tokens)) > 1, tokens
    assert 0 < metrics(run, "eval")[8]["val_loss"] < 20

    written = export(run, tmp_path / "exp")
    hf = AutoModelForSeq2SeqLM.from_pretrained(written["hf"]).eval()
    assert type(hf).__name__ == "BartForConditionalGeneration"
    ours = load_model(dict(ShardedWeights(written["consolidated"]).items()), saved_config(written["checkpoint"]).model)
    src, tgt = torch.randint(5, 300, (2, 12)), torch.randint(5, 300, (2, 6))
    mask = torch.ones_like(src)
    mask[1, 8:] = 0
    with torch.no_grad():
        want = ours.eval()(src, tgt, mask)
        assert torch.allclose(hf(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits, want, atol=1e-5)

    from .test_finetune import finetune_config

    task = {"kind": "seq2seq", "builtin": "stdlib-names", "target_len": 48}
    ft = finetune_config(make_config, "names", written["hf"], task, data={"seq_len": 64, "validation_fraction": 0.1},
                         train={"max_steps": 2, "eval_every": 2, "micro_batch_size": 4})  # fmt: skip
    out = launch(1, ft, module="finetune").stdout
    assert f"weights from HF bart model {written['hf']}" in out, out[-2000:]
    assert 0 < metrics(tmp_path / "runs" / "names", "eval")[2]["val_loss"] < 20

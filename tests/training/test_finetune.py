"""Fine-tuning from real pretraining checkpoints: classification with predict, SFT with generation,
and the errors for bad task data or the wrong checkpoint."""

import json
import re
import shutil
import subprocess
import sys

import pytest
import torch

from pretrain.data.sources import held_out

from .conftest import ENV, ROOT, launch, losses, metrics

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PACKAGES = ("json", "email", "logging")


def function_rows():
    from finetune.demo_data import functions

    return list(functions(PACKAGES))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def finetune_config(make_config, name, init_from, task, data=None, **sections):
    train = {"max_steps": 8, "micro_batch_size": 1, "lr": 2e-3, "warmup_steps": 1, "eval_every": 8,
             "eval_batches": 10_000, **sections.pop("train", {})}  # fmt: skip
    path = make_config(name=name, train=train, data={"validation_fraction": 0.2, "tokenizer": {"path": None},
                       **(data or {})}, **sections)  # fmt: skip
    text = path.read_text() + f"init_from: {init_from}\ntask: {json.dumps(task)}\n"
    path.write_text(text)
    return path


def exported_probabilities(run_dir, out, texts, pairs=None) -> list[dict]:
    """A classifier's run exported (python -m pretrain.export's function), loaded by transformers'
    Auto classes, and run on ``texts`` as training encodes them: each text's label probabilities."""
    import yaml
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from pretrain.export import export

    hf_dir = export(run_dir, out)["hf"]
    model = AutoModelForSequenceClassification.from_pretrained(hf_dir).eval()
    tok = AutoTokenizer.from_pretrained(hf_dir)
    seq_len = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["seq_len"]
    enc = tok(texts, pairs, truncation=True, max_length=seq_len, padding=True, return_tensors="pt")
    assert ("token_type_ids" in enc) == (getattr(model.config, "type_vocab_size", 0) > 0)  # BERT's segments
    with torch.no_grad():
        probs = model(**enc).logits.softmax(-1)
    return [{model.config.id2label[i]: float(v) for i, v in enumerate(p)} for p in probs]


def evaluate_validation(run_dir) -> dict:
    """finetune.evaluate's scores of a fine-tuning run's own validation set, whose loss is the one
    training reported at its last evaluation (step 8)."""
    scores = run_dir.parent / f"{run_dir.name}-scores.json"
    proc = subprocess.run([sys.executable, "-m", "finetune.evaluate", str(run_dir), "--split", "validation",
                           "--out", str(scores)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    scored = json.loads(scores.read_text())
    assert scored["loss"] == pytest.approx(metrics(run_dir, "eval")[8]["val_loss"], rel=1e-5)
    return scored


def test_classification_from_a_zero3_two_process_checkpoint_loaded_by_one(make_config, tmp_path):
    launch(2, make_config(name="pre", deepspeed={"zero_stage": 3}, train={"max_steps": 6}))
    pre = tmp_path / "runs" / "pre"
    rows = [{"text": f.head + f.body, "label": f.package} for f in function_rows()]
    data = write_jsonl(tmp_path / "functions.jsonl", rows)
    task = {"kind": "classify", "classifier_dropout": 0.0}  # no per-rank randomness in the comparison below
    cfg = finetune_config(make_config, "cls", pre, task, train={"global_batch_size": 2},
                          data={"sources": [{"files": str(data)}]}, deepspeed={"zero_stage": 1})  # fmt: skip
    out = launch(1, cfg, module="finetune").stdout
    assert "3 labels; weights from checkpoint" in out and "step_00000006" in out
    run_dir = tmp_path / "runs" / "cls"
    # ZeRO-3 on 2 processes builds the classifier partitioned and streams the weights into it one
    # tensor at a time: it trains like the whole model on one process (same global batch)
    cfg3 = finetune_config(make_config, "cls3", pre, task, train={"global_batch_size": 2},
                           data={"sources": [{"files": str(data)}]}, deepspeed={"zero_stage": 3})  # fmt: skip
    assert "built the model partitioned" in launch(2, cfg3, module="finetune").stdout
    whole, partitioned = losses(run_dir), losses(tmp_path / "runs" / "cls3")
    assert partitioned[1] == pytest.approx(whole[1], rel=1e-6)
    assert partitioned == pytest.approx(whole, rel=1e-4)
    assert json.loads((run_dir / "checkpoints" / "step_00000008" / "labels.json").read_text()) == sorted(PACKAGES)
    final = metrics(run_dir, "eval")[8]
    val_rows = [r for r in rows if held_out(r["text"], 0.2)]
    assert sum(map(sum, final["val_confusion"])) == len(val_rows)  # every validation example, once

    texts = write_jsonl(tmp_path / "val.jsonl", [{"text": r["text"]} for r in val_rows])
    proc = subprocess.run([sys.executable, "-m", "finetune.predict", str(run_dir), str(texts)],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    predictions = [json.loads(line) for line in proc.stdout.splitlines()]  # stdout holds the predictions alone
    assert len(predictions) == len(val_rows)
    assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-4 for p in predictions)
    accuracy = sum(p["label"] == r["label"] for p, r in zip(predictions, val_rows, strict=True)) / len(val_rows)
    assert accuracy == pytest.approx(final["val_accuracy"], abs=1e-9)  # predict agrees with the eval
    # exported as GPT2ForSequenceClassification (bias-free score on the last real token): the same
    # probabilities from transformers, for texts padded in one batch
    hf = exported_probabilities(run_dir, tmp_path / "export", [r["text"] for r in val_rows[:6]])
    for theirs, ours in zip(hf, predictions[:6], strict=True):
        assert theirs == pytest.approx(ours["probabilities"], abs=1e-5)


def test_text_pair_classification_from_csv_with_an_encoder(make_config, tmp_path, pretrained_encoder):
    """Does this body belong to this signature and docstring? Pairs go in as [CLS] a [SEP] b [SEP]
    with token types 0/1, in training, evaluation and predict alike."""
    import csv
    import random

    funcs = function_rows()
    rng = random.Random(0)
    rows = []
    for i, f in enumerate(funcs):
        other = funcs[(i + rng.randrange(1, len(funcs))) % len(funcs)].body
        rows.append({"head": f.head, "body": f.body, "label": "match"})
        rows.append({"head": f.head, "body": other, "label": "mismatch"})
    table = tmp_path / "pairs.csv"
    with open(table, "w", newline="") as f:
        writer = csv.DictWriter(f, ["head", "body", "label"])
        writer.writeheader()
        writer.writerows(rows)
    task = {"kind": "classify", "text_column": "head", "text_pair_column": "body", "max_train_examples": 200}
    cfg = finetune_config(make_config, "pairs", pretrained_encoder, task,
                          data={"sources": [{"files": str(table)}]})  # fmt: skip
    out = launch(1, cfg, module="finetune").stdout
    val_rows = [r for r in rows if held_out(r["head"], 0.2)]  # held out by the text column
    assert f"task classify: 200 training and {len(val_rows)} validation examples, 2 labels; weights from" in out
    run_dir = tmp_path / "runs" / "pairs"
    final = metrics(run_dir, "eval")[8]
    assert sum(map(sum, final["val_confusion"])) == len(val_rows)

    def predict(*extra):
        out_file = tmp_path / f"pred{len(extra)}.jsonl"
        proc = subprocess.run([sys.executable, "-m", "finetune.predict", str(run_dir), str(table), "--out",
                               str(out_file), "--text-column", "head", *extra],
                              cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        return [json.loads(line) for line in out_file.read_text().splitlines()]

    paired = predict()  # the pair column comes from the run's config
    held = [p for p, r in zip(paired, rows, strict=True) if held_out(r["head"], 0.2)]
    accuracy = sum(p["label"] == r["label"] for p, r in zip(held, val_rows, strict=True)) / len(val_rows)
    assert accuracy == pytest.approx(final["val_accuracy"], abs=1e-9)  # predict encodes pairs as training did
    alone = predict("--pair-column", "head")  # the same first texts with another second text
    assert any(a["probabilities"] != p["probabilities"] for a, p in zip(alone, paired, strict=True))
    # exported as BertForSequenceClassification (its pooler: dense and tanh on [CLS]), pairs and all
    hf = exported_probabilities(run_dir, tmp_path / "export", [r["head"] for r in rows[:6]],
                                [r["body"] for r in rows[:6]])  # fmt: skip
    for theirs, ours in zip(hf, paired[:6], strict=True):
        assert theirs == pytest.approx(ours["probabilities"], abs=1e-5)


def test_tagging_words_with_an_encoder_on_two_processes_then_evaluate_and_predict(make_config, tmp_path,
                                                                                  pretrained_encoder):
    """A tag per word (BIO: the def keyword and the function's name in each signature) from an
    encoder's checkpoint, on 2 processes under ZeRO-2: the evaluation's entity F1, summed over the
    ranks, is what finetune.evaluate finds in one process; predict tags every word in reach. The
    data is a CoNLL-2003 file (four columns, documents between -DOCSTART- lines)."""
    rows = []
    for f in function_rows():
        words = f.head.split()[:12]
        tags = ["B-KW" if w == "def" else "B-FN" if w.startswith(f.name + "(") else "O" for w in words]
        rows.append({"tokens": words, "ner_tags": tags})
    data = tmp_path / "ner.conll"
    data.write_text("".join(("-DOCSTART- -X- -X- O\n\n" if i % 10 == 0 else "")
                            + "".join(f"{w} X O {t}\n" for w, t in zip(r["tokens"], r["ner_tags"], strict=True)) + "\n"
                            for i, r in enumerate(rows)))  # fmt: skip
    cfg = finetune_config(make_config, "ner", pretrained_encoder, {"kind": "tag"},
                          data={"sources": [{"files": str(data)}], "seq_len": 48}, train={"micro_batch_size": 8})
    # through the launcher: its preflight makes the examples and caches them, the ranks read them
    proc = subprocess.run([sys.executable, "-m", "launch", "local", str(cfg), "--nproc-per-node", "2",
                           "cluster.gpus=false"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    val = sum(held_out(json.dumps(r["tokens"]), 0.2) for r in rows)  # held out by the words' JSON text
    assert f"task tag: {len(rows) - val} training and {val} validation examples, 3 labels; weights from" in out
    cached = re.search(r"preflight: data files read, their examples made and checked, and cached in (\S+)", out)
    assert cached, out[-4000:]
    assert (f"the task's examples ({len(rows) - val} train, {val} validation rows) read from {cached[1]}, made before "
            "from the same data files, task and tokenizer") in out  # fmt: skip
    run_dir = tmp_path / "runs" / "ner"
    final = metrics(run_dir, "eval")[8]
    assert 0.0 <= final["val_entity_f1"] <= 1.0 and final["val_entity_f1"] > 0.0
    assert json.loads((run_dir / "checkpoints" / "step_00000008" / "labels.json").read_text()) == ["B-FN", "B-KW", "O"]
    scored = evaluate_validation(run_dir)
    assert scored["entity_f1"] == pytest.approx(final["val_entity_f1"], abs=1e-9)
    assert sum(map(sum, scored["confusion"])) == sum(map(sum, final["val_confusion"]))

    texts = tmp_path / "heads.txt"
    texts.write_text("".join(" ".join(r["tokens"]) + "\n" for r in rows[:5]))
    proc = subprocess.run([sys.executable, "-m", "finetune.predict", str(run_dir), str(texts)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    tagged = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [t["tokens"] for t in tagged] == [r["tokens"] for r in rows[:5]]
    assert all(len(t["tags"]) == len(t["tokens"]) and set(t["tags"]) <= {"B-FN", "B-KW", "O", None} for t in tagged)

    # the HF export is BertForTokenClassification: the same logits, and transformers' pipeline tags
    from transformers import AutoModelForTokenClassification, pipeline

    from finetune.predict import load_classifier

    proc = subprocess.run([sys.executable, "-m", "pretrain.export", str(run_dir), str(tmp_path / "exp")], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    hf = AutoModelForTokenClassification.from_pretrained(tmp_path / "exp" / "hf").eval()
    assert type(hf).__name__ == "BertForTokenClassification" and hf.config.id2label == {0: "B-FN", 1: "B-KW", 2: "O"}
    ours, tok, _, _ = load_classifier(run_dir)
    ids = tok([" ".join(rows[0]["tokens"])], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids["input_ids"]).logits, ours(ids["input_ids"]), atol=1e-4, rtol=0)
    found = pipeline("token-classification", model=hf, tokenizer=tok, ignore_labels=[])(" ".join(rows[0]["tokens"]))
    guess = ours(ids["input_ids"])[0, 1:-1].argmax(-1).tolist()  # its tokens but [CLS] and [SEP]
    assert [f["entity"] for f in found] == [["B-FN", "B-KW", "O"][g] for g in guess]


def test_extractive_question_answering_with_an_encoder_then_evaluate_predict_and_export(make_config, tmp_path,
                                                                                        pretrained_encoder):
    """SQuAD's layout (answers with their starts; unanswerable questions) and plain answer texts:
    finetune.evaluate's span scores are training's, predict answers from a table, and the export is
    BertForQuestionAnswering with the same start and end logits (transformers 5 has no QA pipeline)."""
    rows = []
    for i, f in enumerate(function_rows()):
        context = f.head[:120]
        if f.name not in context:
            continue
        if i % 3 == 0:  # SQuAD 2.0: no answer in the context
            answers = {"text": [], "answer_start": []}
        elif i % 3 == 1:
            answers = {"text": [f.name], "answer_start": [context.index(f.name)]}
        else:  # a plain text, found in the context
            answers = f.name
        question = ("Who imports it?", "Its name?", "Which function?")[i % 3]
        rows.append({"question": question, "context": context, "answers": answers})
    data = write_jsonl(tmp_path / "squad.jsonl", rows)
    cfg = finetune_config(make_config, "qa", pretrained_encoder, {"kind": "qa"},
                          data={"sources": [{"files": str(data)}], "seq_len": 64}, train={"micro_batch_size": 8})
    out = launch(1, cfg, module="finetune").stdout
    said = re.search(r"task qa: (\d+) training and (\d+) validation examples \((\d+) windows of data.seq_len=64 "
                     r"tokens, sharing 16\)", out)  # fmt: skip
    assert said, out[-2000:]  # contexts of 120 characters do not all fit beside their questions in 64 tokens
    n_train, n_val, windows = map(int, said.groups())
    assert n_train + n_val == len(rows) and windows > len(rows)
    run_dir = tmp_path / "runs" / "qa"
    final = metrics(run_dir, "eval")[8]
    scored = evaluate_validation(run_dir)
    assert scored["span_f1"] == pytest.approx(final["val_span_f1"], abs=1e-9)
    assert scored["examples"] == n_val and scored["windows"] > n_val
    assert 0.0 <= scored["exact_match"] <= scored["f1"] <= 1.0

    table = write_jsonl(tmp_path / "questions.jsonl", [{"question": r["question"], "context": r["context"]}
                                                       for r in rows[:4]])  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "finetune.predict", str(run_dir), str(table)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(found) == 4 and all(set(f) == {"question", "answer", "start"} for f in found)
    for f, context in zip(found, [r["context"] for r in rows[:4]], strict=True):  # where it says, or none
        assert (f["start"] is None and f["answer"] == "") or context[f["start"] :].startswith(f["answer"])

    from transformers import AutoModelForQuestionAnswering

    proc = subprocess.run([sys.executable, "-m", "pretrain.export", str(run_dir), str(tmp_path / "exp")], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    hf = AutoModelForQuestionAnswering.from_pretrained(tmp_path / "exp" / "hf").eval()
    assert type(hf).__name__ == "BertForQuestionAnswering"
    from finetune.predict import load_classifier

    ours, tok, _, _ = load_classifier(run_dir)
    ids = tok(["Its name?"], [rows[1]["context"]], return_tensors="pt", return_token_type_ids=True, max_length=64,
              truncation="longest_first")  # fmt: skip
    with torch.no_grad():
        out = hf(**ids)
        torch.testing.assert_close(torch.stack([out.start_logits, out.end_logits], -1),
                                   ours(ids["input_ids"], token_type_ids=ids["token_type_ids"]), atol=1e-4, rtol=0)


def test_sft_then_generation_with_and_without_the_kv_cache(make_config, tmp_path):
    from finetune.generate import Sampling, generate, load_decoder

    launch(1, make_config(name="pre", family="llama", train={"max_steps": 4}))
    rows = [{"prompt": f.head, "response": f.body} for f in function_rows()]
    data = write_jsonl(tmp_path / "sft.jsonl", rows)
    sources = [{"files": str(data)}]
    cfg = finetune_config(make_config, "sft", tmp_path / "runs" / "pre", {"kind": "generate"},
                          data={"sources": sources, "seq_len": 48}, train={"micro_batch_size": 4})  # fmt: skip
    launch(1, cfg, module="finetune")
    run_dir = tmp_path / "runs" / "sft"
    assert sorted(losses(run_dir)) == list(range(1, 9))
    model, tok = load_decoder(str(run_dir))
    prompts = [rows[0]["prompt"][:60], "def main():\n", rows[5]["prompt"][:30]]
    for s in (
        Sampling(max_new_tokens=12, temperature=0.0),
        Sampling(max_new_tokens=12, temperature=0.9, top_k=20, top_p=0.9, repetition_penalty=1.2, seed=3),
    ):
        cached = generate(model, tok, prompts, s, use_cache=True)
        plain = generate(model, tok, prompts, s, use_cache=False)
        assert cached == plain and any(cached)

    scored = evaluate_validation(run_dir)
    assert 0.0 <= scored["exact_match"] <= 1.0 and scored["examples"] > 0

    # LoRA for generation: adapters alone train; export merges them into a model transformers loads
    from transformers import AutoModelForCausalLM

    cfg = finetune_config(make_config, "sft-lora", tmp_path / "runs" / "pre", {"kind": "generate", "lora_rank": 4},
                          data={"sources": sources, "seq_len": 48}, train={"micro_batch_size": 4})  # fmt: skip
    assert "parameters train; the rest are frozen" in launch(1, cfg, module="finetune").stdout
    lora_dir = tmp_path / "runs" / "sft-lora"
    merged, _ = load_decoder(str(lora_dir))
    proc = subprocess.run([sys.executable, "-m", "pretrain.export", str(lora_dir), str(tmp_path / "exp")], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "exp" / "hf").eval()
    ids = tok(["def f(x):\n    return"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids).logits, merged(ids), atol=1e-4, rtol=0)
        assert not torch.allclose(merged(ids), model(ids), atol=1e-3)  # not the fully fine-tuned model


def test_sft_on_conversations_carries_its_chat_template_to_generation_and_evaluation(make_config, tmp_path,
                                                                                      pretrained):
    """Multi-turn conversations, OpenAI's and ShareGPT's layout in two sources: the run writes them
    with the plain template, every checkpoint's tokenizer carries it, and finetune.generate and
    finetune.evaluate write prompts with it (evaluation scores what training scored)."""
    from finetune.chat import PLAIN, prompt_text, turns
    from finetune.generate import Sampling, generate, load_decoder

    def chat(f, sharegpt):
        said = [("system", "Py."), ("user", f.name), ("assistant", f.package),
                ("user", "Its first line?"), ("assistant", f.body.strip().splitlines()[0][:40])]  # fmt: skip
        if sharegpt:
            return [{"from": {"user": "human", "assistant": "gpt"}.get(r, r), "value": c} for r, c in said]
        return [{"role": r, "content": c} for r, c in said]

    def calling(f):  # OpenAI's function calling: a call, its result, the answer; the tools beside
        call = {"id": "c", "type": "function", "function": {"name": "pkg", "arguments": "{}"}}
        return [{"role": "user", "content": f.name}, {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c", "content": f.package}, {"role": "assistant", "content": "ok"}]

    tools = [{"name": "pkg"}]  # a bare schema: short enough for 64 positions
    funcs = [f for f in function_rows() if len(f.name) <= 16]  # a first answer within 64 near-character tokens
    sources = [{"files": str(write_jsonl(tmp_path / f"chat{i}.jsonl", [{"messages": chat(f, i)} for f in funcs[i::2]]))}
               for i in (0, 1)]  # fmt: skip
    tooled = funcs[:12]
    sources.append({"files": str(write_jsonl(tmp_path / "tools.jsonl", [{"messages": calling(f), "tools": tools}
                                                                        for f in tooled]))})  # fmt: skip
    task = {"kind": "generate", "messages_column": "messages"}
    cfg = finetune_config(make_config, "chat", pretrained, task, data={"sources": sources, "seq_len": 64},
                          train={"micro_batch_size": 4})  # fmt: skip
    out = launch(1, cfg, module="finetune").stdout
    run_dir = tmp_path / "runs" / "chat"
    read = [json.dumps(turns(chat(f, False))) for f in funcs] + [json.dumps(turns(calling(f))) for f in tooled]
    val = sum(held_out(text, 0.2) for text in read)  # as the run reads them: one layout
    assert f"task generate: {len(read) - val} training and {val} validation examples" in out
    assert "left out" not in out  # every conversation has an assistant turn (a call, for the tooled) in reach
    assert (run_dir / "checkpoints" / "step_00000008" / "tokenizer" / "chat_template.jinja").read_text() == PLAIN

    model, tok = load_decoder(str(run_dir))
    asked = [{"role": "user", "content": funcs[0].name}]
    prompt = tok.apply_chat_template(asked, tokenize=False, add_generation_prompt=True)
    assert prompt == f"<|user|>\n{funcs[0].name}{tok.eos_token}\n<|assistant|>\n"
    want = generate(model, tok, [prompt], Sampling(6, 0.0))[0]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"messages": asked}])
    proc = subprocess.run([sys.executable, "-m", "finetune.generate", str(run_dir), "--prompts-file", str(prompts),
                           "--chat", "--prompt", asked[0]["content"], "--greedy", "--max-new-tokens", "6"], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert lines == [{"messages": asked, "completion": want}] * 2  # --chat: the prompt as a user's turn
    with_tools = generate(model, tok, [prompt_text(tok, asked, "here", tools)], Sampling(6, 0.0))[0]
    write_jsonl(prompts, [{"messages": asked, "tools": tools}])
    proc = subprocess.run([sys.executable, "-m", "finetune.generate", str(run_dir), "--prompts-file", str(prompts),
                           "--greedy", "--max-new-tokens", "6"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == {"messages": asked, "tools": tools, "completion": with_tools}
    assert prompt_text(tok, asked, "here", tools).startswith(f"<|tools|>\n{json.dumps(tools)}{tok.eos_token}\n")

    assert evaluate_validation(run_dir)["examples"] == val


def test_sft_on_an_instruction_table_writes_prompts_with_its_template_in_generation_and_evaluation(
        make_config, tmp_path, pretrained):  # fmt: skip
    """Alpaca's layout (instruction, input often blank, output) with a two-form template: the run
    writes each prompt with the form its row fills, the checkpoint keeps the template, and
    finetune.generate (a text prompt, a prompts file's record, --raw) and finetune.evaluate write
    prompts with it."""
    from finetune.generate import Sampling, generate, load_generator
    from finetune.prompts import PromptTemplate

    forms = ["Q: {instruction}\nIn: {input}\nA: ", "Q: {instruction}\nA: "]
    funcs = [f for f in function_rows() if len(f.name) <= 16]
    rows = [{"instruction": f.name, "input": f.package if i % 2 else "", "output": f.package}
            for i, f in enumerate(funcs)]  # fmt: skip
    task = {"kind": "generate", "prompt_template": forms, "response_column": "output"}
    cfg = finetune_config(make_config, "alpaca", pretrained, task, train={"micro_batch_size": 4},
                          data={"sources": [{"files": str(write_jsonl(tmp_path / "alpaca.jsonl", rows))}],
                                "seq_len": 64})  # fmt: skip
    out = launch(1, cfg, module="finetune").stdout
    template = PromptTemplate(forms)
    val = sum(held_out(template.write(r), 0.2) for r in rows)  # held out by the written prompt
    assert f"task generate: {len(rows) - val} training and {val} validation examples" in out

    run_dir = tmp_path / "runs" / "alpaca"
    model, tok, saved, _ = load_generator(str(run_dir))
    assert saved.forms == template.forms
    asked = {"instruction": funcs[1].name, "input": funcs[1].package}
    want = generate(model, tok, [template.write({"instruction": funcs[0].name}), template.write(asked),
                                 funcs[0].name], Sampling(6, 0.0))  # fmt: skip
    assert want[0] != want[2]  # the template changes what the model reads
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [asked])

    def completions(*args):
        proc = subprocess.run([sys.executable, "-m", "finetune.generate", str(run_dir), *args, "--greedy",
                               "--max-new-tokens", "6"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                              timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        return [json.loads(line) for line in proc.stdout.strip().splitlines()]

    assert completions("--prompt", funcs[0].name, "--prompts-file", str(prompts)) == [
        {"prompt": funcs[0].name, "completion": want[0]}, {**asked, "completion": want[1]}]
    assert completions("--raw", "--prompt", funcs[0].name) == [{"prompt": funcs[0].name, "completion": want[2]}]

    assert evaluate_validation(run_dir)["examples"] == val
    # the export's tokenizer carries the template as its chat template: transformers writes the prompt
    from transformers import AutoTokenizer

    from pretrain.export import export

    hf_tok = AutoTokenizer.from_pretrained(export(run_dir, tmp_path / "export")["hf"])
    ask = [{"role": "user", "content": funcs[0].name}]
    assert hf_tok.apply_chat_template(ask, tokenize=False) == template.write({"instruction": funcs[0].name})
    assert list(hf_tok.apply_chat_template(ask, return_dict=True)["input_ids"]) == tok(
        template.write({"instruction": funcs[0].name}), add_special_tokens=False)["input_ids"]
    no_input = write_jsonl(tmp_path / "test.jsonl", [{"instruction": f.name, "output": f.package} for f in funcs[:5]])
    proc = subprocess.run([sys.executable, "-m", "finetune.evaluate", str(run_dir), "--data", str(no_input)], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "5 examples from" in proc.stdout


def test_a_decoder_trained_with_flash_decodes_padded_batches_and_fine_tunes_with_sdpa(make_config, tmp_path,
                                                                                      pretrained):
    """A checkpoint whose config says attention=flash (the same weights as the sdpa one) decodes
    prompts of different lengths as the sdpa one does, and a fine-tuning task builds it with sdpa
    (or the kernel task.attention names)."""
    import yaml

    from finetune.config import load_finetune_config
    from finetune.generate import Sampling, generate, load_decoder
    from finetune.tasks import FinetuneTask
    from pretrain.export import export

    plain = export(pretrained, tmp_path / "exp")["consolidated"]
    flash = tmp_path / "flash"
    shutil.copytree(plain, flash)
    cfg = yaml.safe_load((flash / "config.yaml").read_text())
    (flash / "config.yaml").write_text(yaml.safe_dump({**cfg, "model": {**cfg["model"], "attention": "flash"}}))
    prompts = ["def load(fp):\n", "import json\n\nclass JSONDecoder(object):\n"]
    (model, tok), (want, _) = load_decoder(str(flash)), load_decoder(str(plain))
    assert model.cfg.attention == "sdpa"
    assert generate(model, tok, prompts, Sampling(8, 0.0)) == generate(want, tok, prompts, Sampling(8, 0.0))
    for given, runs in (("auto", "sdpa"), ("eager", "eager")):
        task = {"kind": "classify", "attention": given}
        path = finetune_config(make_config, f"cls-{given}", flash, task, data={"sources": [{"files": str(flash)}]})
        assert FinetuneTask(load_finetune_config(path)).model_cfg.attention == runs


def test_bad_task_data_and_wrong_checkpoints_are_named(make_config, tmp_path, tokenizers, pretrained,
                                                        pretrained_encoder):
    shutil.copytree(pretrained, tmp_path / "runs" / "dec")  # a copy: one of its checkpoints is broken below
    rows = [{"text": f"sample number {i} " * 3, "label": "even" if i % 2 else "odd"} for i in range(60)]
    lone = next(f"unusual text {i}" for i in range(1000) if held_out(f"unusual text {i}", 0.2))
    bad = {
        "missing_label": write_jsonl(tmp_path / "a.jsonl", [{"text": r["text"], "tag": r["label"]} for r in rows]),
        "unseen_label": write_jsonl(tmp_path / "b.jsonl", rows + [{"text": lone, "label": "never-trained"}]),
    }
    cases = [
        ("dec", {"kind": "classify"}, {"sources": [{"files": str(bad["missing_label"])}]},
         "task.label_column='label': no such column in data.sources[0] (train data); the data has ['text', 'tag']"),
        ("dec", {"kind": "classify"}, {"sources": [{"files": str(bad["unseen_label"])}]},
         "labels ['never-trained'] appear in the validation data (held out of training: data.validation_fraction=0.2) "
         "but never in training"),
        ("enc", {"kind": "generate"}, {"sources": [{"files": str(bad["unseen_label"])}]},
         "task.kind=generate needs a decoder (causal) checkpoint"),
        ("dec", {"kind": "classify"}, {"sources": [{"files": str(bad["unseen_label"])}],
                                        "tokenizer": {"path": str(tokenizers["encoder"])}},
         "is not the tokenizer the model was trained with"),
        ("missing", {"kind": "classify"}, {}, "no such file or directory"),
    ]  # fmt: skip
    for i, (init, task, data, message) in enumerate(cases):
        start = pretrained_encoder if init == "enc" else tmp_path / "runs" / init
        cfg = finetune_config(make_config, f"bad{i}", start, task, data=data)
        proc = subprocess.run([sys.executable, "-m", "finetune", str(cfg)], cwd=ROOT, env=ENV, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    partial = tmp_path / "runs" / "dec" / "checkpoints" / "step_00000002"
    (partial / "complete.json").unlink()
    cfg = finetune_config(make_config, "partial", partial, {"kind": "classify"})
    proc = subprocess.run([sys.executable, "-m", "finetune", str(cfg)], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2 and "is incomplete" in proc.stderr


def test_kv_cache_generation_equals_full_recompute_for_every_position_scheme():
    from finetune.generate import Sampling, generate
    from pretrain.model import ModelConfig, Transformer, build_model

    class Tok:  # a character tokenizer: enough to drive generate()
        pad_token_id, eos_token_id = 0, None

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [1 + ord(c) % 90 for c in text]}

        def batch_decode(self, ids, skip_special_tokens=True):
            return [" ".join(map(str, row.tolist())) for row in ids]

    sparse = {"sliding_window": 4, "global_tokens": 2}  # attention sinks: a window and the first 2 tokens
    memory = {"memory_len": 3, "segment_len": 4}  # Transformer-XL's: the prompts span several segments
    schemes = [(p, {}) for p in ("learned", "sinusoidal", "rope", "alibi", "relative")] + [("rope", sparse)]
    schemes += [("rope", memory), ("alibi", memory)]
    for position, extra in schemes:
        torch.manual_seed(0)
        model = Transformer(ModelConfig(vocab_size=97, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                                        max_seq_len=64, position=position, **extra))  # fmt: skip
        prompts = ["def f(x):", "import os", "a"]  # different lengths: left padding
        s = Sampling(max_new_tokens=10, temperature=0.0)
        assert generate(model, Tok(), prompts, s) == generate(model, Tok(), prompts, s, use_cache=False), position
    for position in ("relative", "sinusoidal", "rope"):  # encoder-decoders: the prompt is the encoder's input
        torch.manual_seed(0)
        cfg = ModelConfig(arch="encoder-decoder", vocab_size=97, d_model=32, num_layers=2, num_decoder_layers=3,
                          num_heads=4, max_seq_len=64, position=position, norm="rmsnorm", bias=False)  # fmt: skip
        model = build_model(cfg)
        prompts = ["def f(x):", "import os", "a"]  # different lengths: right padding of the encoder's input
        for s in (Sampling(max_new_tokens=10, temperature=0.0), Sampling(max_new_tokens=10, temperature=1.0, seed=3)):
            cached = generate(model, Tok(), prompts, s)
            assert cached == generate(model, Tok(), prompts, s, use_cache=False), position
            assert [len(t.split()) for t in cached] == [10, 10, 10]
        alone = generate(model, Tok(), ["a"], Sampling(max_new_tokens=10, temperature=0.0))
        assert alone[0] == generate(model, Tok(), prompts, Sampling(max_new_tokens=10, temperature=0.0))[2]


def test_headerless_tsv_files_with_early_stopping_the_best_checkpoint_and_a_test_set(make_config, tmp_path, pretrained):
    """A user's classification set as headerless `sentence<TAB>label` files (train/dev/test): two
    processes score every dev example once at each evaluation (7 examples, batches of 2 x 2), early
    stopping ends the run, and evaluate/predict use the best checkpoint and agree with training."""
    import random

    rows = [(f.head.splitlines()[0].replace("\t", " "), f.package) for f in function_rows()]
    random.Random(0).shuffle(rows)  # all three packages in every file
    files = {}
    for name, part in (("train", rows[:40]), ("dev", rows[40:47]), ("test", rows[47:56])):
        files[name] = tmp_path / f"{name}.tsv"
        files[name].write_text("".join(f"{s}\t{label}\n" for s, label in part))
    source = {"files": str(files["train"]), "validation_files": str(files["dev"]), "test_files": str(files["test"]),
              "header": False, "column_names": ["sentence", "label"], "quoting": "none"}  # fmt: skip
    task = {"kind": "classify", "text_column": "sentence", "classifier_dropout": 0.0}
    # lr so small that nothing changes: the second evaluation cannot improve on the first
    cfg = finetune_config(make_config, "sst", pretrained, task, data={"sources": [source]},
                          train={"max_steps": 40, "eval_every": 1, "micro_batch_size": 2, "lr": 1e-9,
                                 "early_stopping_patience": 1, "eval_batches": None})  # fmt: skip
    out = launch(2, cfg, module="finetune").stdout
    run_dir = tmp_path / "runs" / "sst"
    assert "task classify: 40 training and 7 validation examples" in out
    assert "stopped early at step 2: val_accuracy has not improved for 1 evaluations" in out
    assert f"best checkpoint: {run_dir / 'checkpoints' / 'step_00000001'} (step 1, val_accuracy " in out
    evals = metrics(run_dir, "eval")
    assert sorted(evals) == [1, 2] and len(evals[1]["val_confusion"]) == 3
    assert all(sum(map(sum, e["val_confusion"])) == 7 for e in evals.values())  # 7 of 7, at 2 processes
    assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"

    def command(module, *args):
        proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=ENV,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        return proc

    table = ["--no-header", "--column-names", "sentence,label", "--quoting", "none"]
    dev = command("finetune.evaluate", run_dir, "--data", files["dev"], *table, "--out", tmp_path / "dev.json")
    assert dev.returncode == 0, dev.stderr[-3000:]
    assert "scoring checkpoint" in dev.stderr and "step_00000001 (best" in dev.stderr
    scored = json.loads((tmp_path / "dev.json").read_text())
    assert scored["examples"] == 7 and scored["confusion"] == evals[1]["val_confusion"]  # one process, same scores
    assert scored["accuracy"] == pytest.approx(evals[1]["val_accuracy"], abs=1e-9)
    assert scored["macro_f1"] == pytest.approx(evals[1]["val_macro_f1"], abs=1e-9)

    test = command("finetune.evaluate", run_dir, "--split", "test", "--out", tmp_path / "test.json")
    assert test.returncode == 0, test.stderr[-3000:]
    on_test = json.loads((tmp_path / "test.json").read_text())
    assert on_test["examples"] == 9 and sum(map(sum, on_test["confusion"])) == 9
    pred = command("finetune.predict", run_dir, files["test"], *table, "--out", tmp_path / "pred.jsonl")
    assert pred.returncode == 0 and "step_00000001 (best" in pred.stderr, pred.stderr[-3000:]
    predicted = [json.loads(line)["label"] for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    truth = [label for _, label in rows[47:56]]
    assert sum(p == t for p, t in zip(predicted, truth, strict=True)) / 9 == pytest.approx(on_test["accuracy"])

    # (text<TAB>label lines given as plain text are refused: tests/test_errors.py)

    # no validation data at all: training goes on, evaluation is off, with one warning
    bare = {k: v for k, v in source.items() if k != "validation_files"}
    cfg = finetune_config(make_config, "bare", pretrained, task,
                          data={"sources": [bare], "validation_fraction": 0.0}, train={"max_steps": 2})  # fmt: skip
    out = launch(1, cfg, module="finetune").stdout
    assert "no validation data" in out and "evaluation is off" in out
    assert metrics(tmp_path / "runs" / "bare", "eval") == {}


def test_lora_adapters_train_alone_under_zero_2_and_3_and_merge_into_the_same_model(make_config, tmp_path, pretrained):
    """LoRA via peft: adapters start at zero (the first loss is full fine-tuning's), only they and
    the head train, ZeRO-2 and ZeRO-3 at 2 processes agree, the base weights stay as pretrained, and
    the checkpoint read merged (what predict, evaluate and export see) gives the adapter model's logits."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from finetune.config import TaskConfig
    from finetune.lora import add_adapters
    from finetune.predict import load_classifier
    from finetune.tasks import Classifier, classify_head
    from pretrain.export import consolidated_state_dict
    from pretrain.model import Transformer

    pre = pretrained
    rows = [{"text": f.head + f.body, "label": f.package} for f in function_rows()]
    data = {"sources": [{"files": str(write_jsonl(tmp_path / "f.jsonl", rows))}]}
    lora = {"kind": "classify", "classifier_dropout": 0.0, "lora_rank": 4, "lora_alpha": 8.0}
    train = {"global_batch_size": 2, "max_steps": 4, "eval_every": 4}
    full = finetune_config(make_config, "full", pre, {**lora, "lora_rank": 0}, data=data, train=train)
    launch(1, full, module="finetune")
    runs = {}
    for stage in (2, 3):
        cfg = finetune_config(make_config, f"lora{stage}", pre, lora, data=data, train=train,
                              deepspeed={"zero_stage": stage})  # fmt: skip
        out = launch(2, cfg, module="finetune").stdout
        # adapters: 2 layers x (rank 4 x (in + out) of qkv, proj, fc, mlp.proj); the head (GPT-2's score:
        # no bias): 32 x 3
        adapters = 2 * (4 * (32 + 96) + 4 * (32 + 32) + 4 * (32 + 64) + 4 * (64 + 32)) + 32 * 3
        assert f"{adapters:,} of " in out and "parameters train; the rest are frozen" in out, out[-2000:]
        runs[stage] = losses(tmp_path / "runs" / f"lora{stage}")
    whole = losses(tmp_path / "runs" / "full")
    assert runs[2][1] == pytest.approx(whole[1], rel=1e-5) and runs[3][1] == pytest.approx(whole[1], rel=1e-5)
    assert runs[3] == pytest.approx(runs[2], rel=1e-4)
    assert runs[2][4] != pytest.approx(whole[4], rel=1e-6)  # but it is not full fine-tuning

    tag = tmp_path / "runs" / "lora2" / "checkpoints" / "step_00000004"
    raw = get_fp32_state_dict_from_zero_checkpoint(str(tag.parent), tag=tag.name)
    base = consolidated_state_dict(pre / "checkpoints" / "step_00000002")
    qkv = "layers.0.attn.qkv"
    assert torch.equal(raw[f"body.{qkv}.base_layer.weight"], base[f"{qkv}.weight"])  # frozen
    assert raw[f"body.{qkv}.lora_B.default.weight"].abs().max() > 0  # trained away from zero

    merged, tok, labels, cfg = load_classifier(tag)
    adapted = Classifier(Transformer(cfg.model), len(labels), "last", 0.0, **classify_head(cfg.model, cfg.task))
    add_adapters(adapted.body, TaskConfig(**{k: v for k, v in lora.items() if k != "classifier_dropout"}))
    adapted.load_state_dict(raw)
    enc = tok(["def f(x):\n    return x", "import json"], padding=True, return_tensors="pt")
    with torch.no_grad():
        want = adapted.eval()(enc["input_ids"], attention_mask=enc["attention_mask"])
        got = merged(enc["input_ids"], attention_mask=enc["attention_mask"])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert not torch.equal(merged.body.layers[0].attn.qkv.weight, base[f"{qkv}.weight"])  # the adapter is in it


def test_freeze_body_layer_lr_decay_and_init_random_under_deepspeed(make_config, tmp_path, pretrained):
    """One optimizer step of AdamW moves every weight by about its group's lr (the first step is
    lr * sign(gradient)), so after one step the per-layer updates show each setting at work."""
    from pretrain.export import consolidated_state_dict

    pre = pretrained
    base = consolidated_state_dict(pre / "checkpoints" / "step_00000002")
    rows = [{"text": f.head + f.body, "label": f.package} for f in function_rows()]
    data = {"sources": [{"files": str(write_jsonl(tmp_path / "f.jsonl", rows))}]}
    train = {"max_steps": 1, "eval_every": 1, "warmup_steps": 0, "weight_decay": 0.0, "lr": 1e-3}

    def one_step(name, *overrides, **task):
        cfg = finetune_config(make_config, name, pre, {"kind": "classify", **task}, data=data, train=train)
        launch(1, cfg, *overrides, module="finetune")
        after = consolidated_state_dict(tmp_path / "runs" / name / "checkpoints" / "step_00000001")
        return {k: (after[f"body.{k}"] - base[k]).abs().mean().item() for k in base if f"body.{k}" in after}, after

    frozen, after = one_step("frozen", freeze_body=True)
    assert max(frozen.values()) == 0.0 and after["classifier.weight"].abs().sum() > 0  # only the head moved
    decayed, _ = one_step("decay", layer_lr_decay=0.5)
    w = "attn.qkv.weight"
    assert decayed[f"layers.1.{w}"] == pytest.approx(0.5e-3, rel=0.1)  # layer l of L=2: lr * 0.5 ** (2 - l)
    assert decayed[f"layers.0.{w}"] == pytest.approx(0.25e-3, rel=0.1)
    assert decayed["embed.tokens.weight"] < 0.2e-3  # embeddings: lr * 0.5 ** 3, on the rows the batch used
    fresh, _ = one_step("random", "init_random=true", "train.seed=7")  # pretraining drew with seed 1
    assert fresh[f"layers.0.{w}"] > 10 * 1e-3  # far from the pretrained weights: a new draw, not one step

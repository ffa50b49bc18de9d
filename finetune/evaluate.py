"""python -m finetune.evaluate RUN_OR_CHECKPOINT (--data FILE | --split validation|test) [--out F.json]

Scores a fine-tuned checkpoint on labeled examples in one process. Classification: loss,
accuracy, macro-F1 and the confusion matrix (rows: true label). Generation: loss and token
accuracy on the response tokens (a conversation's assistant turns), and exact match and chrF
(sacrebleu) of greedy completions against the responses (a conversation's last assistant turn,
given the turns before it).
Given a run directory it uses the run's best checkpoint (else the newest) and says which.

FILE is csv, tsv, jsonl/json or parquet with the run's columns (or the ones given:
--text-column, --label-column, --no-header --column-names text,label, ...). --split reads the
run's own data: `validation` is exactly what training evaluated on, `test` the sources'
test_files (or test_split), which training never reads.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


@torch.no_grad()
def score(model, rows: list[dict], collate, loss_fn, batch_size: int) -> dict:
    """Sums over all ``rows``, each scored once, as the trainer's evaluation sums them."""
    from pretrain.trainer import accumulate

    sums: dict = {}
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = collate([{**r, "position": start + i} for i, r in enumerate(chunk)])
        accumulate(sums, *loss_fn(model, batch))
    return {k: (v.item() if v.dim() == 0 else v) for k, v in sums.items()}


def examples(cfg, args, say):
    """The labeled table the command scores: --data FILE, or the run's validation or test data."""
    from finetune.data import file_table, named_part, override_columns, task_columns, task_sources, task_tables
    from finetune.prompts import task_template
    from pretrain.config import ConfigError

    override_columns(cfg, args)
    if args.data:
        return file_table(args.data, args, task_columns(cfg), "--data", task_template(cfg.task)), args.data
    if args.split == "test":
        return named_part(cfg, "test"), "the run's test data"
    if all(src.names("validation") for src in task_sources(cfg)):  # no share held out: training is not read
        return named_part(cfg, "validation"), "the run's validation data"
    table = task_tables(cfg, say)["validation"]
    if table is None:
        raise ConfigError("--split validation: this run had no validation data; give --data FILE")
    return table, "the run's validation data"


def evaluate_classifier(tag_dir: Path, args, say) -> dict:
    from finetune.data import check_labels
    from finetune.predict import classifier_config, load_classifier
    from finetune.tasks import ClassifyCollator, classification_metrics, classification_rows, classify_loss

    cfg = classifier_config(tag_dir)
    table, what = examples(cfg, args, say)  # the data is checked before the weights
    model, tok, labels, _ = load_classifier(tag_dir)
    with_types = model.cfg.type_vocab_size > 0
    if cfg.task.kind == "qa":
        return evaluate_answers(model, tok, cfg, table, what, args.batch_size)
    if cfg.task.kind == "tag":  # a tag per word: scored per word, and by entity for entity tags (BIO, IOBES, BILOU)
        from finetune.tagging import TagCollator, TagLoss, tag_metrics, tag_rows

        check_labels(table, cfg.task.tags_column, labels, what, tags=True)
        rows = tag_rows(tok, table, cfg.task, labels, cfg.data.seq_len, with_types)
        metrics = tag_metrics(score(model, rows, TagCollator(tok.pad_token_id), TagLoss(labels), args.batch_size))
    else:
        check_labels(table, cfg.task.label_column, labels, what)
        rows = classification_rows(tok, table, cfg.task, labels, cfg.data.seq_len, with_types)
        metrics = classification_metrics(score(model, rows, ClassifyCollator(tok.pad_token_id), classify_loss,
                                               args.batch_size))  # fmt: skip
    out = {k.removeprefix("val_"): v for k, v in metrics.items()}
    return {"task": cfg.task.kind, "data": what, "examples": len(rows), "labels": labels, **out}


def evaluate_answers(model, tok, cfg, table, what: str, batch_size: int) -> dict:
    """Extractive QA: the loss over the windows of the contexts and each example's best span by
    token, as training scores them, then each example's answer (that span's text) against every
    reference answer as SQuAD's script scores it (exact match and F1, 0-1)."""
    from finetune.answers import QACollator, QALoss, predict_answers, qa_metrics, qa_rows, text_scores
    from pretrain.data.sources import column_texts, column_values

    t = cfg.task
    rows, _ = qa_rows(tok, table, t, cfg.data.seq_len, model.cfg.type_vocab_size > 0, training=False)
    metrics = qa_metrics(score(model, rows, QACollator(tok.pad_token_id), QALoss([r["example"] for r in rows]),
                               batch_size))  # fmt: skip
    questions, contexts = column_texts(table, t.question_column), column_texts(table, t.context_column)
    found = predict_answers(model, tok, t, questions, contexts, cfg.data.seq_len, batch_size)
    wanted = [[text for _, text in json.loads(a)] for a in column_values(table, t.answers_column)]
    scores = [text_scores(got, refs) for (got, _), refs in zip(found, wanted, strict=True)]
    n = max(len(scores), 1)
    out = {k.removeprefix("val_"): v for k, v in metrics.items()}
    return {"task": "qa", "data": what, "examples": len(questions), "windows": len(rows), **out,
            "exact_match": sum(e for e, _ in scores) / n, "f1": sum(f for _, f in scores) / n}  # fmt: skip


def evaluate_generator(tag_dir: Path, args, say) -> dict:
    """task.kind generate (a decoder) or seq2seq (an encoder-decoder): loss and token accuracy on
    the targets, and greedy decoding's exact match."""
    from finetune.config import load_finetune_config
    from finetune.generate import load_decoder
    from finetune.tasks import Seq2SeqCollator, SFTCollator, seq2seq_rows, sft_rows
    from pretrain.run import LanguageModelTask
    from pretrain.trainer import lm_loss, seq2seq_loss

    cfg = load_finetune_config(tag_dir / "config.yaml")
    table, what = examples(cfg, args, say)  # the data is checked before the weights
    model, tok = load_decoder(str(tag_dir))
    if cfg.task.kind == "seq2seq":
        rows = seq2seq_rows(tok, table, cfg.task, cfg.data.seq_len, cfg.target_len, what)
        sums = score(model, rows, Seq2SeqCollator(tok.pad_token_id), seq2seq_loss, args.batch_size)
        prompts = [tok.decode(r["input_ids"][:-1]) for r in rows]  # generate() adds the end-of-text again
        targets = [r["target"] for r in rows]
    else:
        if cfg.task.messages_column:
            from finetune.chat import chat_template

            tok.chat_template = chat_template(tok, "auto")  # the checkpoint's: the run set it
        rows = sft_rows(tok, table, cfg.task, cfg.data.seq_len, what, say)
        sums = score(model, rows, SFTCollator(tok.pad_token_id), lm_loss, args.batch_size)
        last = [r["spans"][-1] for r in rows]  # a conversation's generation is scored on its last assistant turn
        prompts = [tok.decode(r["input_ids"][:a]) for r, (a, _) in zip(rows, last, strict=True)]
        targets = [r["input_ids"][a:b] for r, (a, b) in zip(rows, last, strict=True)]
    metrics = LanguageModelTask.eval_metrics(sums)
    wanted = [tok.decode(t, skip_special_tokens=True).strip() for t in targets]
    got = greedy(model, tok, prompts, [len(t) for t in targets], args.batch_size)
    out = {k.removeprefix("val_"): v for k, v in metrics.items()}
    return {"task": cfg.task.kind, "data": what, "examples": len(rows), **out, **sequence_metrics(got, wanted)}


def greedy(model, tok, prompts: list[str], lengths: list[int], batch_size: int) -> list[str]:
    """Greedy completions of ``prompts``, batch by batch in order of length, each batch as long as
    its longest target (``lengths``, in tokens) and, for a decoder with learned positions, no
    longer than its longest prompt leaves room for (a prompt that fills them gets no completion)."""
    from finetune.generate import Sampling, generate

    room = model.cfg.max_seq_len if model.cfg.position == "learned" and model.cfg.arch == "decoder" else None
    sizes = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    order = sorted((i for i in range(len(prompts)) if room is None or sizes[i] < room), key=sizes.__getitem__)
    got = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        new = max(lengths[i] for i in batch)
        if room is not None:
            new = min(new, room - sizes[batch[-1]])
        texts = generate(model, tok, [prompts[i] for i in batch], Sampling(max_new_tokens=new, temperature=0.0))
        for i, text in zip(batch, texts, strict=True):
            got[i] = text
    return got


def sequence_metrics(got: list[str], wanted: list[str]) -> dict:
    """Exact match (after stripping whitespace) and corpus chrF (sacrebleu's, 0-100) of decoded
    outputs against their references."""
    from sacrebleu.metrics import CHRF

    got = [g.strip() for g in got]
    exact = sum(g == w for g, w in zip(got, wanted, strict=True)) / max(len(got), 1)
    return {"exact_match": exact, "chrf": CHRF().corpus_score(got, [wanted]).score if got else 0.0}


def main(argv: list[str] | None = None) -> None:
    from finetune.data import add_file_arguments
    from pretrain import checkpoint as ckpt
    from pretrain.config import ConfigError, exit_on_config_error
    from pretrain.files import writable_file

    ap = argparse.ArgumentParser(description="Score a fine-tuned checkpoint on labeled examples.")
    ap.add_argument("checkpoint", help="a fine-tuning run directory (its best checkpoint) or checkpoint")
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--data", help="a labeled file: csv, tsv, jsonl/json or parquet")
    where.add_argument("--split", choices=["validation", "test"], help="the run's own validation or test data")
    ap.add_argument("--out", help="also write the metrics here as JSON")
    ap.add_argument("--batch-size", type=int, default=32)
    add_file_arguments(ap)
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    if args.batch_size < 1:
        ap.error(f"--batch-size {args.batch_size}: must be >= 1")

    @exit_on_config_error
    def run() -> None:
        say = lambda m: print(m, file=sys.stderr)  # noqa: E731
        if args.out:  # before the scoring, whose result would have nowhere to go
            writable_file("--out", args.out)
        tag_dir = ckpt.resolve(args.checkpoint, warn=say, best=True)
        say(f"scoring {ckpt.describe(tag_dir)}")
        if (tag_dir / "labels.json").exists():
            result = evaluate_classifier(tag_dir, args, say)
        elif ckpt.saved_task(tag_dir).get("kind") in ("generate", "seq2seq"):
            result = evaluate_generator(tag_dir, args, say)
        else:
            raise ConfigError(f"{tag_dir} is a pretraining checkpoint; evaluate takes a fine-tuning run or checkpoint")
        result["checkpoint"] = str(tag_dir)
        _show(result)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
            print(f"wrote {args.out}")

    run()


def _show(result: dict) -> None:
    print(f"{result['examples']} examples from {result['data']}")
    for key, value in result.items():
        if isinstance(value, float):
            print(f"  {key:<16} {value:.4f}")
    if "confusion" in result:
        labels = result["labels"]
        width = max(len(x) for x in labels) + 2
        print("  confusion (rows: true label, columns: predicted)")
        print(" " * (width + 2) + "".join(f"{x:>{width}}" for x in labels))
        for name, row in zip(labels, result["confusion"], strict=True):
            print(f"  {name:<{width}}" + "".join(f"{int(v):>{width}}" for v in row))


if __name__ == "__main__":
    main()

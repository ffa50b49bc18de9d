"""python -m finetune.predict CHECKPOINT FILE [--out OUT.jsonl] [--text-column text] [--pair-column COL]

Labels and probabilities for a file of texts from a classification fine-tuning run (its best
checkpoint, else the newest) or checkpoint. FILE is .txt (one text per line), or csv, tsv,
jsonl/json or parquet with a text column (the run's, or --text-column; headerless tables take
--no-header --column-names). Writes JSON lines:
{"text": ..., "label": ..., "probabilities": {label: p, ...}}.

A question-answering run (task.kind qa) reads a table's question and context columns (the run's,
or --question-column, --context-column) and writes {"question": ..., "answer": ..., "start": ...}
(the answer's first character in the context; "" and null where it finds none).

A tagging run (task.kind tag) tags words: FILE is .txt (a line's words, split at whitespace), or a
table whose tokens column (the run's, or --tokens-column) holds lists of words (or texts). Writes
{"tokens": [...], "tags": [...]}, a tag per word (null for a word past data.seq_len tokens).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def load_classifier(path: str | Path, warn=print, say=None):
    """(model, tokenizer, labels, run config) from a classification fine-tuning run (its best
    checkpoint, else the newest) or checkpoint; every weight of the classifier must be there.
    ``say`` is told which checkpoint that is."""
    from finetune.tasks import Classifier
    from pretrain import checkpoint as ckpt
    from pretrain.config import ConfigError
    from pretrain.data.tokenizer import load_tokenizer
    from pretrain.export import consolidated_state_dict
    from pretrain.model import build_model

    tag_dir = ckpt.resolve(path, warn=warn, best=True)
    if say is not None:
        say(f"weights: {ckpt.describe(tag_dir)}")
    cfg = classifier_config(tag_dir)
    labels = json.loads((tag_dir / "labels.json").read_text())
    model = Classifier.for_task(build_model(cfg.model.for_padding(cfg.task.attention)), len(labels), cfg.task)
    missing, unexpected = model.load_state_dict(consolidated_state_dict(tag_dir), strict=False)
    if missing or unexpected:
        raise ConfigError(f"{tag_dir}: the weights do not fit the classifier its config describes (missing "
                          f"{missing[:5]}, unexpected {unexpected[:5]})")  # fmt: skip
    tok = load_tokenizer(tag_dir / "tokenizer", what=f"the tokenizer of checkpoint {tag_dir}")
    return model.eval(), tok, labels, cfg


def classifier_config(tag_dir: Path):
    """The fine-tuning config of a classification checkpoint (a ConfigError for any other)."""
    from finetune.config import saved_finetune_config
    from pretrain import checkpoint as ckpt
    from pretrain.config import ConfigError

    if not (tag_dir / "labels.json").exists():
        kind = ckpt.saved_task(tag_dir).get("kind")
        arch = ckpt.saved_config(tag_dir).model.arch
        tuned = kind in ("generate", "seq2seq")
        writes = tuned or (kind is None and arch != "encoder")  # a model that writes text
        hint = (f"; for what it writes: python -m finetune.generate {tag_dir} --prompts-file FILE (a prompt a line, "
                "JSON lines, or a table with a prompt column)" if writes else "")  # fmt: skip
        hint += "; to score it on a labeled file: python -m finetune.evaluate" if tuned else ""
        raise ConfigError(f"{tag_dir} is not a classification checkpoint (no labels.json){hint}")
    return saved_finetune_config(tag_dir)


def read_texts(file: str, args, cfg) -> tuple[list[str], list[str] | None]:
    """The texts (and pair texts) to classify. A .txt file (or .txt.gz, ...) is one text per line,
    and a line that holds a tab (text and a label?) is refused: such a file is a table (.tsv)."""
    from finetune.data import file_table
    from pretrain.config import ConfigError
    from pretrain.data.sources import column_texts, kind_suffix, open_bytes

    path = Path(file)
    if not path.is_file():
        raise ConfigError(f"{file}: no such file")
    kind = getattr(args, "kind", None)
    if kind == "text" or (kind is None and kind_suffix(path) in (".txt", "")):  # also compressed: texts.txt.gz
        with open_bytes(path) as fh:
            lines = fh.read().decode("utf-8-sig", errors="replace").splitlines()
        for number, line in enumerate(lines, 1):
            if "\t" in line:
                raise ConfigError(
                    f"{file} line {number} holds {line.count(chr(9)) + 1} tab-separated fields (a text and a label?): "
                    "as .txt each whole line is one text; name the file .tsv and say which column is the text "
                    "(--text-column, or --no-header --column-names text,label)"
                )  # fmt: skip
        return [line for line in lines if line.strip()], None
    text_column = args.text_column or cfg.task.text_column
    pair_column = args.pair_column or cfg.task.text_pair_column
    table = file_table(file, args)
    for flag, column in (("--text-column", text_column), ("--pair-column", pair_column)):
        if column and column not in table.column_names:
            raise ConfigError(f"{file}: no column {column!r} ({flag}); the file has {table.column_names}")
    return column_texts(table, text_column), column_texts(table, pair_column) if pair_column else None


def read_words(file: str, args, cfg) -> list[list[str]]:
    """The words of each example to tag: a .txt file's lines split at whitespace (blank lines left
    out), or a table's tokens column (lists of words, or texts split at whitespace)."""
    from finetune.data import file_table
    from finetune.tagging import word_column
    from pretrain.config import ConfigError
    from pretrain.data.sources import DataError, column_values, kind_suffix, open_bytes

    path = Path(file)
    if not path.is_file():
        raise ConfigError(f"{file}: no such file")
    kind = getattr(args, "kind", None)
    if kind == "text" or (kind is None and kind_suffix(path) in (".txt", "")):
        with open_bytes(path) as fh:
            lines = fh.read().decode("utf-8-sig", errors="replace").splitlines()
        return [line.split() for line in lines if line.strip()]
    column = args.tokens_column or cfg.task.tokens_column
    table = file_table(file, args)
    if column not in table.column_names:
        raise ConfigError(f"{file}: no column {column!r} (--tokens-column); the file has {table.column_names}")
    try:
        table = word_column(table, column, None, file)
    except DataError as e:
        raise ConfigError(str(e).replace("task.tokens_column", "--tokens-column")) from None
    return [json.loads(x) for x in column_values(table, column)]


def read_questions(file: str, args, cfg) -> tuple[list[str], list[str]]:
    """The questions and their contexts of a table (the run's columns, or --question-column and
    --context-column)."""
    from finetune.data import file_table
    from pretrain.config import ConfigError
    from pretrain.data.sources import column_texts

    if not Path(file).is_file():
        raise ConfigError(f"{file}: no such file")
    table = file_table(file, args)
    columns = [(flag, getattr(args, f"{what}_column", None) or getattr(cfg.task, f"{what}_column"))
               for flag, what in (("--question-column", "question"), ("--context-column", "context"))]  # fmt: skip
    for flag, column in columns:
        if column not in table.column_names:
            raise ConfigError(f"{file}: no column {column!r} ({flag}); the file has {table.column_names}")
    return column_texts(table, columns[0][1]), column_texts(table, columns[1][1])


@torch.no_grad()
def predict_tags(model, tok, labels: list[str], words: list[list[str]], max_length=512, batch_size=32) -> list:
    """Each example's words with the tag of each (its first token's most likely tag; None for a
    word past ``max_length`` tokens)."""
    from finetune.tagging import first_tokens
    from finetune.tasks import pad

    with_types = model.cfg.type_vocab_size > 0
    out = []
    for start in range(0, len(words), batch_size):
        chunk = words[start : start + batch_size]
        enc, firsts = first_tokens(tok, chunk, max_length, with_types)
        ids = enc["input_ids"]
        kwargs = {"token_type_ids": pad(enc["token_type_ids"], 0)} if with_types else {}
        guess = model(pad(ids, tok.pad_token_id), attention_mask=pad([[1] * len(x) for x in ids], 0),
                      **kwargs).argmax(-1)  # fmt: skip
        for ws, first, row in zip(chunk, firsts, guess.tolist(), strict=True):
            out.append({"tokens": ws, "tags": [None if k is None else labels[row[k]] for k in first]})
    return out


@torch.no_grad()
def predict(model, tok, labels: list[str], texts: list[str], pairs=None, max_length=512, batch_size=32) -> list:
    with_types = model.cfg.type_vocab_size > 0
    out = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        pair = pairs[start : start + batch_size] if pairs else None
        enc = tok(chunk, pair, truncation=True, max_length=max_length, padding=True, return_tensors="pt",
                  return_token_type_ids=with_types)  # fmt: skip
        kwargs = {"token_type_ids": enc["token_type_ids"]} if with_types else {}
        probs = model(enc["input_ids"], attention_mask=enc["attention_mask"], **kwargs).softmax(-1)
        for text, p in zip(chunk, probs, strict=True):
            out.append(
                {
                    "text": text,
                    "label": labels[int(p.argmax())],
                    "probabilities": {name: round(float(v), 6) for name, v in zip(labels, p, strict=True)},
                }
            )
    return out


def main(argv: list[str] | None = None) -> None:
    from finetune.data import add_file_arguments
    from pretrain.config import exit_on_config_error

    ap = argparse.ArgumentParser(description="Classify a file of texts with a fine-tuned checkpoint.")
    ap.add_argument("checkpoint")
    ap.add_argument("file")
    ap.add_argument("--out", help="where to write JSON lines (default: standard output)")
    add_file_arguments(ap)
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)

    @exit_on_config_error
    def run() -> None:
        say = lambda m: print(m, file=sys.stderr)  # noqa: E731
        from pretrain import checkpoint as ckpt
        from pretrain.files import results_stdout, writable_file

        if args.out:  # before the predictions, which would have nowhere to go
            writable_file("--out", args.out)
        results = None if args.out else results_stdout()  # JSON lines alone: what loading prints goes to stderr

        tag_dir = ckpt.resolve(args.checkpoint, warn=say, best=True)
        cfg = classifier_config(tag_dir)
        if cfg.task.kind == "qa":
            from finetune.answers import predict_answers

            questions, contexts = read_questions(args.file, args, cfg)  # the file is checked before the weights
            model, tok, labels, cfg = load_classifier(tag_dir, warn=say, say=say)
            found = predict_answers(model, tok, cfg.task, questions, contexts, cfg.data.seq_len)
            rows = [{"question": q, "answer": text, "start": at}
                    for q, (text, at) in zip(questions, found, strict=True)]  # fmt: skip
        elif cfg.task.kind == "tag":
            words = read_words(args.file, args, cfg)  # the file is checked before the weights
            model, tok, labels, cfg = load_classifier(tag_dir, warn=say, say=say)
            rows = predict_tags(model, tok, labels, words, max_length=cfg.data.seq_len)
        else:
            texts, pairs = read_texts(args.file, args, cfg)
            model, tok, labels, cfg = load_classifier(tag_dir, warn=say, say=say)
            rows = predict(model, tok, labels, texts, pairs, max_length=cfg.data.seq_len)
        lines = "".join(json.dumps(r) + "\n" for r in rows)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(lines)
            print(f"wrote {len(rows)} predictions to {args.out}")
        else:
            results.write(lines)

    run()


if __name__ == "__main__":
    main()

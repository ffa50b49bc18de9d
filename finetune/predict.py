"""python -m finetune.predict CHECKPOINT FILE [--out OUT.jsonl] [--text-column text] [--pair-column COL]

Labels and probabilities for a file of texts (one per line, or JSON lines / CSV with a text
column) from a classification fine-tuning run or checkpoint. Writes JSON lines:
{"text": ..., "label": ..., "probabilities": {label: p, ...}}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def load_classifier(path: str | Path):
    """(model, tokenizer, labels, run config) from a classification fine-tuning checkpoint."""
    from finetune.config import load_finetune_config
    from finetune.tasks import Classifier
    from pretrain import checkpoint as ckpt
    from pretrain.config import ConfigError
    from pretrain.data.tokenizer import load_tokenizer
    from pretrain.export import consolidated_state_dict
    from pretrain.model import Transformer

    tag_dir = ckpt.resolve(path)
    if not (tag_dir / "labels.json").exists():
        raise ConfigError(f"{tag_dir} is not a classification checkpoint (no labels.json)")
    cfg = load_finetune_config(tag_dir / "config.yaml")
    labels = json.loads((tag_dir / "labels.json").read_text())
    pooling = cfg.task.pooling_for(cfg.model.arch)
    model = Classifier(Transformer(cfg.model), len(labels), pooling, cfg.task.classifier_dropout)
    model.load_state_dict(consolidated_state_dict(tag_dir), strict=False)
    tok = load_tokenizer(tag_dir / "tokenizer", what=f"the tokenizer of checkpoint {tag_dir}")
    return model.eval(), tok, labels, cfg


def read_texts(file: str, text_column: str, pair_column: str | None) -> tuple[list[str], list[str] | None]:
    path = Path(file)
    if path.suffix in (".jsonl", ".json", ".csv"):
        import datasets

        ds = datasets.load_dataset("json" if path.suffix != ".csv" else "csv", data_files=str(path), split="train")
        return [str(x) for x in ds[text_column]], [str(x) for x in ds[pair_column]] if pair_column else None
    return path.read_text().splitlines(), None


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
    from pretrain.config import exit_on_config_error

    ap = argparse.ArgumentParser(description="Classify a file of texts with a fine-tuned checkpoint.")
    ap.add_argument("checkpoint")
    ap.add_argument("file")
    ap.add_argument("--out", help="where to write JSON lines (default: standard output)")
    ap.add_argument("--text-column", default=None)
    ap.add_argument("--pair-column", default=None)
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)

    @exit_on_config_error
    def run() -> None:
        model, tok, labels, cfg = load_classifier(args.checkpoint)
        texts, pairs = read_texts(args.file, args.text_column or cfg.task.text_column,
                                  args.pair_column or cfg.task.text_pair_column)  # fmt: skip
        rows = predict(model, tok, labels, texts, pairs, max_length=cfg.data.seq_len)
        lines = "".join(json.dumps(r) + "\n" for r in rows)
        if args.out:
            Path(args.out).write_text(lines)
            print(f"wrote {len(rows)} predictions to {args.out}")
        else:
            sys.stdout.write(lines)

    run()


if __name__ == "__main__":
    main()

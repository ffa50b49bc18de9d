"""python -m finetune.inspect CHECKPOINT --text TEXT [--text ...] [--texts-file FILE] [--layer L]
[--heads 0,3] [--out DIR] [--top 3] [--positions N]

Look inside a model: runs the text through it with the reference (eager) kernel (a Performer: the
attention it estimates) and writes to DIR
- ``layer{L}_head{H}.png``: one heatmap per selected head, the tokens on both axes;
- ``layer{L}_heads.png``: every head of the layer side by side; ``overview.png``: layers x heads;
- ``head_entropy.png`` and ``head_distance.png``: per layer and head, the attention entropy and the
  mean distance between a token and what it attends to, averaged over all the texts given;
- ``positions.png``: the model's own position scheme as a position-by-position table;
- ``attention.json``: the tokens, the top attended tokens per token and selected head, the summaries.
It also prints the top attended tokens per token and head. CHECKPOINT is anything the other commands
take: a pretraining or fine-tuning run or checkpoint (decoder, encoder or classifier), an export's
consolidated/ folder or an HF directory. Pictures are of the first text.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def load_body(path: str):
    """(Transformer, tokenizer, where it came from): the stack whose attention we look at. A
    classifier's body is taken out of it; an LM head that is not there (a classifier's) does not matter."""
    from finetune.weights import load_pretrained
    from pretrain.export import load_weights
    from pretrain.model import Transformer

    pre = load_pretrained(path, best=True)
    if pre.model_cfg.arch == "encoder-decoder":
        from pretrain.config import ConfigError

        raise ConfigError(f"{path}: an encoder-decoder; inspect draws decoder or encoder stacks (cross-attention "
                          "pictures are not built yet)")  # fmt: skip
    model = Transformer(pre.model_cfg)
    load_weights(model, pre.tensors(), skip=pre.skip)
    return model.eval(), pre.tokenizer, pre.source


def token_labels(tok, ids: list[int]) -> list[str]:
    """Each token as the text it stands for, with spaces and line breaks made visible."""
    out = []
    for i in ids:
        text = tok.decode([i], clean_up_tokenization_spaces=False)
        text = text.replace("\n", "\\n").replace("\t", "\\t")
        out.append(text.replace(" ", "\u2423") if text.strip() == "" else text.strip() or "\u2423")
    return out


def _parse_heads(spec: str | None, num_heads: int) -> list[int]:
    from pretrain.config import ConfigError

    if spec is None:
        return list(range(num_heads))
    try:
        heads = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--heads {spec!r}: give head numbers separated by commas, e.g. --heads 0,3") from None
    bad = [h for h in heads if not 0 <= h < num_heads]
    if bad or not heads:
        raise ConfigError(f"--heads {spec!r}: this model has {num_heads} heads per layer (0-{num_heads - 1})")
    return heads


def inspect(model, tok, texts: list[str], layer: int | None, heads: str | None, out: Path, top: int = 3,
            positions: int = 64, source: str = "") -> dict:  # fmt: skip
    """Write the pictures and JSON for ``texts`` into ``out``; returns the JSON record."""
    from pretrain import pictures
    from pretrain.config import ConfigError
    from pretrain.model.inspect import attention_weights, head_statistics, position_tables

    cfg = model.cfg
    if cfg.linear_attention == "linformer":
        raise ConfigError("linear_attention='linformer': its queries attend to projections of the sequence, not to "
                          "tokens, so there is no token-by-token attention to draw")  # fmt: skip
    if not texts:
        raise ConfigError('give the text to look at: --text "The cat sat on the mat" (or --texts-file FILE)')
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if empty:
        raise ConfigError(f"text {empty[0] + 1} of {len(texts)} is empty: give some words to look at")
    layer = cfg.num_layers - 1 if layer is None else layer
    if not 0 <= layer < cfg.num_layers:
        raise ConfigError(f"--layer {layer}: this model has {cfg.num_layers} layers (0-{cfg.num_layers - 1})")
    selected = _parse_heads(heads, cfg.num_heads)
    if top < 1:
        raise ConfigError(f"--top {top}: must be >= 1")
    if positions < 2:
        raise ConfigError(f"--positions {positions}: must be >= 2")

    encoded = [tok(t, truncation=True, max_length=cfg.max_seq_len)["input_ids"] for t in texts]
    if not encoded[0]:
        raise ConfigError(f"the text {texts[0]!r} gives no tokens with this model's tokenizer")
    width = max(len(e) for e in encoded)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.tensor([e + [pad] * (width - len(e)) for e in encoded])
    mask = torch.tensor([[1] * len(e) + [0] * (width - len(e)) for e in encoded])
    weights = attention_weights(model, ids, mask)  # L x (B, H, T, T)
    stats = head_statistics(weights, mask)

    n = len(encoded[0])
    tokens = token_labels(tok, encoded[0])
    first = [w[0, :, :n, :n] for w in weights]  # (H, n, n) per layer, the first text without padding
    out.mkdir(parents=True, exist_ok=True)
    where = f"{cfg.arch}, layer {layer}"
    figures = {f"layer{layer}_head{h}.png": pictures.head(first[layer][h], tokens, f"{where}, head {h}")
               for h in selected}  # fmt: skip
    figures[f"layer{layer}_heads.png"] = pictures.heads_grid(first[layer], tokens, f"{where}: every head")
    figures["overview.png"] = pictures.overview(first, f"{cfg.arch}: every layer and head")
    over = f"over {len(texts)} text(s)"
    figures["head_entropy.png"] = pictures.matrix(stats["entropy"], f"attention entropy {over}", "nats")
    figures["head_distance.png"] = pictures.matrix(stats["distance"], f"mean attended distance {over}", "tokens")
    table = position_tables(model, min(positions, cfg.max_seq_len))
    if table is not None:
        what, values, titles = table
        figures["positions.png"] = pictures.positions(values, titles, what)
    written = [pictures.save(fig, out / name) for name, fig in figures.items()]

    k = min(top, n)
    record = {
        "source": source,
        "arch": cfg.arch,
        "text": texts[0],
        "tokens": tokens,
        "layer": layer,
        "heads": {},
        "entropy": stats["entropy"].tolist(),
        "distance": stats["distance"].tolist(),
        "files": [p.name for p in written],
    }
    for h in selected:
        rows = []
        for i in range(n):
            w, j = first[layer][h, i].topk(k)
            top = [[tokens[int(b)], int(b), round(float(a), 6)] for a, b in zip(w, j, strict=True) if a > 0]
            rows.append({"token": tokens[i], "top": top})
        record["heads"][str(h)] = rows
    (out / "attention.json").write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    return record


def print_table(record: dict) -> None:
    print(f"{record['source']}: layer {record['layer']}, top attended tokens (weight)")
    for h, rows in record["heads"].items():
        print(f"head {h}")
        width = max(len(r["token"]) for r in rows)
        for i, r in enumerate(rows):
            shown = "  ".join(f"{t}@{j} {w:.2f}" for t, j, w in r["top"])
            print(f"  {i:>3} {r['token']:<{width}} -> {shown}")


def main(argv: list[str] | None = None) -> None:
    from pretrain.config import ConfigError, exit_on_config_error

    ap = argparse.ArgumentParser(description="Attention maps, head summaries and position tables of a model.")
    ap.add_argument("checkpoint")
    ap.add_argument("--text", action="append", default=[], help="a text to look at (repeat for more)")
    ap.add_argument("--texts-file", help="more texts for the head summaries, one per line")
    ap.add_argument("--layer", type=int, default=None, help="the layer drawn head by head (default: the last)")
    ap.add_argument("--heads", default=None, help="heads drawn one by one, e.g. 0,3 (default: all)")
    ap.add_argument("--top", type=int, default=3, help="attended tokens listed per token and head")
    ap.add_argument("--positions", type=int, default=64, help="positions in the position-scheme picture")
    ap.add_argument("--out", default="inspect", help="folder for the pictures and attention.json")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)

    @exit_on_config_error
    def run() -> None:
        texts = list(args.text)
        if args.texts_file:
            try:
                texts += [line for line in Path(args.texts_file).read_text().splitlines() if line.strip()]
            except (OSError, UnicodeDecodeError) as e:
                raise ConfigError(f"--texts-file {args.texts_file}: cannot be read ({e})") from None
        if not texts:  # before loading anything
            raise ConfigError('give the text to look at: --text "The cat sat on the mat" (or --texts-file FILE)')
        model, tok, source = load_body(args.checkpoint)
        record = inspect(model, tok, texts, args.layer, args.heads, Path(args.out), args.top, args.positions, source)
        print_table(record)
        print(f"wrote {len(record['files'])} pictures and attention.json to {args.out}")

    run()


if __name__ == "__main__":
    main()

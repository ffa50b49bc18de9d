"""python -m finetune.inspect CHECKPOINT --text TEXT [--text ...] [--texts-file FILE] [--layer L]
[--heads 0,3] [--target TEXT] [--out DIR] [--top 3] [--positions N]

Look inside a model: runs the text through it with the reference (eager) kernel (a Performer: the
attention it estimates) and writes to DIR
- ``layer{L}_head{H}.png``: one heatmap per selected head, the tokens on both axes;
- ``layer{L}_heads.png``: every head of the layer side by side; ``overview.png``: layers x heads;
- ``head_entropy.png`` and ``head_distance.png``: per layer and head, the attention entropy and the
  mean distance between a token and what it attends to, averaged over all the texts given;
- ``positions.png``: the model's own position scheme as a position-by-position table;
- ``attention.json``: the tokens, the top attended tokens per token and selected head, the summaries.
An encoder-decoder reads each text as its source and ``--target`` (else its own greedy output) as
the first text's target, and gets each of these per stack, named ``encoder_``, ``decoder_`` (its
masked self-attention) and ``cross_`` (each target token over the source tokens; no distance), with
``encoder_positions.png`` and ``decoder_positions.png`` where the stacks have their own positions.
It also prints the top attended tokens per token and head. CHECKPOINT is anything the other commands
take: a pretraining or fine-tuning run or checkpoint (decoder, encoder, encoder-decoder or
classifier), an export's consolidated/ folder or an HF directory. Pictures are of the first text.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def load_body(path: str):
    """(model, tokenizer, where it came from): the stack (or an encoder-decoder's two) whose
    attention we look at. A classifier's body is taken out of it (an encoder-decoder's without its
    decoder); an LM head that is not there (a classifier's) does not matter."""
    from finetune.weights import load_pretrained
    from pretrain.export import load_weights
    from pretrain.model import build_model

    pre = load_pretrained(path, best=True)
    model = build_model(pre.model_cfg)
    if pre.body_only and pre.model_cfg.arch == "encoder-decoder":
        model.drop_decoder()  # a classifier pools the encoder's output; it kept no decoder
    load_weights(model, pre.tensors(), skip=pre.skip)
    return model.eval(), pre.tokenizer, pre.source


def token_labels(tok, ids: list[int]) -> list[str]:
    """Each token as the text it stands for, with spaces and line breaks made visible. A character
    that byte-level BPE splits over several tokens (CJK, emoji, accents) labels each of them with
    the character and its part ("語 1/2", "語 2/2"), where its own bytes alone would read "\ufffd"."""
    out, i = [], 0
    while i < len(ids):
        j, text = i + 1, _decoded(tok, ids[i : i + 1])
        while "\ufffd" in text and j < min(len(ids), i + 8):  # the rest of a character's bytes
            j, text = j + 1, _decoded(tok, ids[i : j + 1])
        if j - i > 1 and "\ufffd" not in text:
            out += [f"{_visible(text)} {k}/{j - i}" for k in range(1, j - i + 1)]
        else:  # one token (or bytes that never make a character: each shown as it decodes)
            j = i + 1
            out.append(_visible(_decoded(tok, ids[i:j])))
        i = j
    return out


def _decoded(tok, ids: list[int]) -> str:
    return tok.decode(ids, clean_up_tokenization_spaces=False)


def _visible(text: str) -> str:
    text = text.replace("\n", "\\n").replace("\t", "\\t")
    return text.replace(" ", "\u2423") if text.strip() == "" else text.strip() or "\u2423"


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
            positions: int = 64, source: str = "", target: str | None = None) -> dict:  # fmt: skip
    """Write the pictures and JSON for ``texts`` into ``out``; returns the JSON record. An
    encoder-decoder reads each text as its source and ``target`` (else its own greedy output) as
    the first text's target: its encoder's, decoder's and cross-attention are each drawn."""
    from pretrain import pictures
    from pretrain.config import ConfigError
    from pretrain.model.inspect import position_tables, stack_statistics

    cfg = model.cfg
    if cfg.linear_attention == "linformer":
        raise ConfigError("linear_attention='linformer': its queries attend to projections of the sequence, not to "
                          "tokens, so there is no token-by-token attention to draw")  # fmt: skip
    if not texts:
        raise ConfigError('give the text to look at: --text "The cat sat on the mat" (or --texts-file FILE)')
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if empty:
        raise ConfigError(f"text {empty[0] + 1} of {len(texts)} is empty: give some words to look at")
    seq2seq = cfg.arch == "encoder-decoder" and len(model.decoder) > 0
    if target is not None and not seq2seq:
        kept = " (a classifier's, which keeps no decoder)" if cfg.arch == "encoder-decoder" else ""
        raise ConfigError(f"--target: only an encoder-decoder reads a target; this model's arch is {cfg.arch}{kept}")
    depth = min(cfg.num_layers, cfg.decoder_layers) if seq2seq else cfg.num_layers
    if layer is not None and not 0 <= layer < depth and seq2seq:
        raise ConfigError(f"--layer {layer}: this model's encoder has {cfg.num_layers} layers and its decoder "
                          f"{cfg.decoder_layers}: give one of 0-{depth - 1}")  # fmt: skip
    if layer is not None and not 0 <= layer < depth:
        raise ConfigError(f"--layer {layer}: this model has {depth} layers (0-{depth - 1})")
    selected = _parse_heads(heads, cfg.num_heads)
    check_numbers(top, positions)

    views = _seq2seq_views(model, tok, texts, target) if seq2seq else _views(model, tok, texts)
    out.mkdir(parents=True, exist_ok=True)
    record = {"source": source, "arch": cfg.arch, "text": texts[0], "files": []}
    if seq2seq:
        record["target"] = views[-1]["target"]

    def draw(name: str, figure) -> None:  # written at once: a wide model's pictures are many
        record["files"].append(pictures.save(figure, out / name).name)

    for view in views:
        weights, mask, queries, keys = view["weights"], view["mask"], view["queries"], view["keys"]
        at = len(weights) - 1 if layer is None else layer
        first = [w[0, :, : len(queries), : len(keys)] for w in weights]  # the first text, without padding
        named, said = (f"{view['name']}_", f"{cfg.arch} {view['what']}") if seq2seq else ("", cfg.arch)
        where = f"{said}, layer {at}"
        for h in selected:
            draw(f"{named}layer{at}_head{h}.png", pictures.head(first[at][h], queries, f"{where}, head {h}", keys))
        draw(f"{named}layer{at}_heads.png", pictures.heads_grid(first[at], queries, f"{where}: every head", keys))
        draw(f"{named}overview.png", pictures.overview(first, f"{said}: every layer and head"))
        stats = stack_statistics(view["name"], weights, mask)
        over = f"over {len(texts)} text(s)"
        for name, what, unit in (("entropy", "attention entropy", "nats"), ("distance", "mean attended distance",
                                                                             "tokens")):  # fmt: skip
            if name in stats:
                draw(f"{named}head_{name}.png", pictures.matrix(stats[name], f"{said}: {what} {over}", unit))
        k = min(top, len(keys))
        rows = {str(h): [{"token": queries[i],
                          "top": [[keys[int(b)], int(b), round(float(a), 6)]
                                  for a, b in zip(*first[at][h, i].topk(k), strict=True) if a > 0]}
                         for i in range(len(queries))]
                for h in selected}  # fmt: skip
        part = {"tokens": queries, "layer": at, "heads": rows, **{k: v.tolist() for k, v in stats.items()}}
        if keys is not queries:
            part["keys"] = keys
        if seq2seq:
            record[view["name"]] = {"what": view["what"], **part}
        else:
            record.update(part)
    own = seq2seq and cfg.position in ("learned", "relative")  # each stack its own table or bias
    for stack in ("encoder", "decoder") if own else ("encoder",):
        table = position_tables(model, min(positions, cfg.max_seq_len), stack)
        if table is not None:
            what, values, titles = table
            name, what = (f"{stack}_positions.png", f"{stack}: {what}") if own else ("positions.png", what)
            draw(name, pictures.positions(values, titles, what))
    (out / "attention.json").write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    return record


def check_numbers(top: int, positions: int) -> None:
    from pretrain.config import ConfigError

    if top < 1:
        raise ConfigError(f"--top {top}: must be >= 1")
    if positions < 2:
        raise ConfigError(f"--positions {positions}: must be >= 2")


def _cut(ids: list[int], limit: int, what: str, positions: int) -> list[int]:
    """The first ``limit`` tokens of ``what``, saying so on standard error when there are more."""
    if len(ids) > limit:
        print(f"warning: {what} has {len(ids)} tokens; the first {limit} are shown (model.max_seq_len={positions})",
              file=sys.stderr)  # fmt: skip
    return ids[:limit]


def _views(model, tok, texts: list[str]) -> list[dict]:
    """A decoder's or encoder's self-attention over the texts (padded on the right)."""
    from pretrain.config import ConfigError
    from pretrain.model.inspect import attention_weights

    limit = model.cfg.max_seq_len
    encoded = [_cut(tok(t)["input_ids"], limit, f"text {i + 1}", limit) for i, t in enumerate(texts)]
    if not encoded[0]:
        raise ConfigError(f"the text {texts[0]!r} gives no tokens with this model's tokenizer")
    ids, mask = _padded(encoded, tok)
    tokens = token_labels(tok, encoded[0])
    return [{"name": "self", "what": "self-attention", "weights": attention_weights(model, ids, mask), "mask": mask,
             "queries": tokens, "keys": tokens}]  # fmt: skip


def _seq2seq_views(model, tok, texts: list[str], target: str | None) -> list[dict]:
    """An encoder-decoder's three: the encoder over each text (its source, ending in end-of-text as
    in training), the decoder over each target (the pad token it starts from, then the target's
    tokens) and the cross-attention of the one to the other. The first text's target is ``target``
    when given; the others' (and the first's without it) the model's own greedy output."""
    from finetune.generate import Sampling, _pad_id, generate
    from pretrain.config import ConfigError
    from pretrain.model.inspect import seq2seq_attention_weights

    limit = model.cfg.max_seq_len
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    sources = [_cut(tok(t, add_special_tokens=False)["input_ids"], limit - len(eos), f"text {i + 1}", limit) + eos
               for i, t in enumerate(texts)]  # fmt: skip
    asked = [i for i in range(len(texts)) if i or target is None]
    made = generate(model, tok, [texts[i] for i in asked], Sampling(min(32, limit - 1), 0.0)) if asked else []
    targets = dict(zip(asked, made, strict=True)) | ({0: target} if target is not None else {})
    decoded = [[_pad_id(tok)] + _cut(tok(targets[i], add_special_tokens=False)["input_ids"], limit - 1,
                                     f"the target of text {i + 1}", limit)
               for i in range(len(texts))]  # the decoder starts from the pad token, as in training
    if target is not None and len(decoded[0]) == 1:
        raise ConfigError(f"--target {target!r} gives no tokens with this model's tokenizer")
    src, src_mask = _padded(sources, tok)
    tgt, tgt_mask = _padded(decoded, tok)
    weights = seq2seq_attention_weights(model, src, tgt, src_mask, tgt_mask)
    source_tokens, target_tokens = token_labels(tok, sources[0]), token_labels(tok, decoded[0])
    return [{"name": "encoder", "what": "encoder self-attention", "weights": weights["encoder"], "mask": src_mask,
             "queries": source_tokens, "keys": source_tokens},
            {"name": "decoder", "what": "decoder self-attention", "weights": weights["decoder"], "mask": tgt_mask,
             "queries": target_tokens, "keys": target_tokens, "target": targets[0]},
            {"name": "cross", "what": "cross-attention (target to source)", "weights": weights["cross"],
             "mask": tgt_mask, "queries": target_tokens, "keys": source_tokens, "target": targets[0]}]  # fmt: skip


def _padded(encoded: list[list[int]], tok) -> tuple[torch.Tensor, torch.Tensor]:
    from finetune.generate import _pad_id

    width, pad = max(len(e) for e in encoded), _pad_id(tok)
    ids = torch.tensor([e + [pad] * (width - len(e)) for e in encoded])
    mask = torch.tensor([[1] * len(e) + [0] * (width - len(e)) for e in encoded])
    return ids, mask


def print_table(record: dict) -> None:
    parts = [record[k] for k in ("encoder", "decoder", "cross") if k in record] or [record]
    for part in parts:
        what = f" {part['what']}," if "what" in part else ""
        print(f"{record['source']}:{what} layer {part['layer']}, top attended tokens (weight)")
        for h, rows in part["heads"].items():
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
    ap.add_argument("--target", help="an encoder-decoder's target for the first text: what its decoder reads (default: "
                    "the model's own greedy output)")  # fmt: skip
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
        check_numbers(args.top, args.positions)
        from pretrain.files import writable_folder

        writable_folder("--out", args.out)
        model, tok, source = load_body(args.checkpoint)
        record = inspect(model, tok, texts, args.layer, args.heads, Path(args.out), args.top, args.positions, source,
                         args.target)  # fmt: skip
        print_table(record)
        print(f"wrote {len(record['files'])} pictures and attention.json to {args.out}")

    run()


if __name__ == "__main__":
    main()

"""Tokenizers: trained on the corpus with HF tokenizers, or loaded; always handled as a
transformers PreTrainedTokenizerFast so that what a run saves loads anywhere."""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

from pretrain.data.config import TokenizerConfig
from pretrain.data.sources import DataError

# The special tokens each family needs. Decoders (GPT-2 style) use one end-of-text token as
# beginning, end and document separator; encoders (BERT style) need the full set for MLM and pairs;
# encoder-decoders the decoder's set, plus sentinels for span corruption (added when trained).
SPECIALS = {
    "decoder": {"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "pad_token": "<|pad|>",
                "unk_token": "<|unk|>"},
    "encoder-decoder": {"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "pad_token": "<|pad|>",
                        "unk_token": "<|unk|>"},
    "encoder": {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                "mask_token": "[MASK]"},
}  # fmt: skip


def default_kind(arch: str) -> str:
    return "wordpiece" if arch == "encoder" else "bpe"


def train_tokenizer(texts, arch: str, cfg: TokenizerConfig, vocab_size: int, extra: dict | None = None):
    """Train on an iterable dataset of {"text": ...} rows -> PreTrainedTokenizerFast; ``extra``
    special tokens come after the trained vocabulary, as transformers' add_special_tokens takes them
    (see objective_tokens)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    kind = cfg.kind or default_kind(arch)
    specials = SPECIALS[arch]
    special_list = list(dict.fromkeys(specials.values()))  # unique, in a stable order
    if kind == "bpe":
        # Byte-level: every string round-trips exactly and nothing is ever unknown.
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=special_list, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )  # fmt: skip
    elif kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=specials["unk_token"]))
        tok.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special_list, show_progress=False)
    else:
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size,
            special_tokens=special_list,
            unk_token=specials["unk_token"],
            show_progress=False,
        )

    def batches():
        taken = 0
        for batch in texts.iter(batch_size=256):
            rows = batch["text"]
            if cfg.max_documents is not None:
                rows = rows[: cfg.max_documents - taken]
            taken += len(rows)
            yield rows
            if cfg.max_documents is not None and taken >= cfg.max_documents:
                return

    tok.train_from_iterator(batches(), trainer, length=len(texts))
    if kind == "wordpiece":
        tok.model = _wordpiece_in_a_fixed_order(tok, special_list)
    elif kind == "unigram":
        tok.model = _unigram_in_a_fixed_order(tok, special_list, specials["unk_token"])
    if arch == "encoder":  # [CLS] a [SEP] (b [SEP]) when encoding texts or pairs for fine-tuning
        cls, sep = specials["cls_token"], specials["sep_token"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
            special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))],
        )  # fmt: skip
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **specials)
    if extra:
        fast.add_special_tokens(extra)
    return fast


MASK = "<mask>"
"""Text infilling's mask token (BART's)."""


def objective_tokens(arch: str, objective: str, spans: int) -> dict:
    """The special tokens an objective adds to a trained tokenizer, as add_special_tokens takes them:
    span corruption's sentinels (one per span of a sequence), text infilling's mask token."""
    from pretrain.data.span_corruption import sentinel_tokens

    if arch != "encoder-decoder":
        return {}
    if objective == "text_infilling":
        return {"mask_token": MASK}
    return {"additional_special_tokens": sentinel_tokens(spans)}


def infilling_mask_id(tok) -> int:
    """The mask token's id, or a DataError saying the tokenizer has none."""
    if tok.mask_token_id is None:
        raise DataError(f"text infilling needs a mask token (BART's {MASK}); the tokenizer has none (train one "
                        "with the run: drop data.tokenizer.path, or use a tokenizer with a mask_token)")  # fmt: skip
    return tok.mask_token_id


def _wordpiece_in_a_fixed_order(tok, specials: list[str]):
    """The trained WordPiece vocabulary with ids that depend on its tokens only: the specials first,
    then every other token in code-point order. tokenizers' WordPiece trainer learns the same tokens
    from the same text every time but numbers those of equal counts in its hash maps' order, which
    changes from process to process, so the same corpus and config gave a different tokenizer (and
    different training) each run. Which tokens a word splits into does not depend on the ids."""
    from tokenizers import models

    model = tok.model
    rest = sorted(t for t in tok.get_vocab(with_added_tokens=False) if t not in specials)
    ordered = {t: i for i, t in enumerate([*specials, *rest])}
    return models.WordPiece(ordered, unk_token=model.unk_token, max_input_chars_per_word=model.max_input_chars_per_word,
                            continuing_subword_prefix=model.continuing_subword_prefix)  # fmt: skip


UNIGRAM_SCORE_DECIMALS = 3
"""Unigram log-probabilities are kept to 1e-3: the trainer's sums come out ~4e-11 apart from run
to run, and rounding makes the saved tokenizer the same (but where a score lies within that of a
rounding boundary: odds of about 1 in 10 million per token). Rounding moves a score by at most
5e-4, which changes only choices between segmentations the model already scores as near-equal."""


def _unigram_in_a_fixed_order(tok, specials: list[str], unk: str):
    """The trained Unigram model with its scores rounded and ids that depend on the tokens and those
    scores only: the specials first, then by score (highest first), then by code point.
    tokenizers' Unigram trainer learns the same pieces from the same text every time, but sums
    their scores in a different order each run, so near-equal pieces swapped ids between runs."""
    import json

    from tokenizers import models

    trained = json.loads(tok.to_str())["model"]  # {"type": "Unigram", "unk_id": ..., "vocab": [[piece, score]]}
    scores = {piece: score for piece, score in trained["vocab"]}
    rest = sorted(((p, round(v, UNIGRAM_SCORE_DECIMALS)) for p, v in scores.items() if p not in specials),
                  key=lambda item: (-item[1], item[0]))  # fmt: skip
    ordered = [(p, scores[p]) for p in specials if p in scores] + rest
    unk_id = [p for p, _ in ordered].index(unk)
    return models.Unigram(ordered, unk_id=unk_id, byte_fallback=trained.get("byte_fallback", False))


def load_tokenizer(path: str | Path, what: str = "data.tokenizer.path"):
    """A tokenizer.json file or an HF tokenizer directory -> PreTrainedTokenizerFast. ``what`` names
    where the path came from in errors (the setting, or the checkpoint it belongs to)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(path)
    if path.is_dir():
        if not (path / "tokenizer.json").exists() and not (path / "tokenizer_config.json").exists():
            raise DataError(f"{what}={str(path)!r}: a directory without tokenizer.json")
        with _not_a_tokenizer(path, what):
            return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if path.is_file():
        with _not_a_tokenizer(path, what):
            tok = PreTrainedTokenizerFast(tokenizer_file=str(path))
        vocab = tok.get_vocab()
        for specials in SPECIALS.values():  # recognise our own and the common conventions
            tok.add_special_tokens({k: v for k, v in specials.items() if v in vocab and getattr(tok, k) is None})
        return tok
    raise DataError(f"{what}={str(path)!r}: no such file or directory (give a tokenizer.json or a folder)")


@contextlib.contextmanager
def _not_a_tokenizer(path: Path, what: str):
    """A file or folder that does not load as a tokenizer (another JSON, one cut short, a
    tokenizer.json of a newer format) as one DataError naming it, not tokenizers' bare error."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - tokenizers (Rust), json and transformers each fail their own way
        message = str(e).splitlines()[0][:200] if str(e) else ""
        raise DataError(f"{what}={str(path)!r} does not load as a tokenizer ({type(e).__name__}: {message}); give a "
                        "tokenizer.json written by tokenizers or transformers, or the folder save_pretrained "
                        "wrote") from e  # fmt: skip


def save_tokenizer(tok, directory: str | Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(directory))
    return directory


def tokenizer_hash(tok) -> str:
    """Identifies a tokenizer's behaviour (vocabulary, merges, normalisation, specials)."""
    return hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest()[:16]


def separator_id(tok, arch: str) -> int:
    """The token put between packed documents: end-of-text for decoders, [SEP] for encoders."""
    tid = tok.sep_token_id if arch == "encoder" else tok.eos_token_id
    if tid is None:
        need = "sep_token" if arch == "encoder" else "eos_token"
        raise DataError(f"the tokenizer has no {need}, which packing {arch} data needs between documents")
    return tid


def sentinel_ids(tok, count: int) -> list[int]:
    """The ids of <extra_id_0> ... <extra_id_{count-1}>, or a DataError naming what is missing."""
    from pretrain.data.span_corruption import sentinel_tokens

    vocab = tok.get_vocab()
    missing = [t for t in sentinel_tokens(count) if t not in vocab]
    if missing:
        raise DataError(f"span corruption needs {count} sentinel tokens <extra_id_0>...; the tokenizer lacks "
                        f"{missing[:3]}{' ...' if len(missing) > 3 else ''} (train one with the run: drop "
                        "data.tokenizer.path)")  # fmt: skip
    return [vocab[t] for t in sentinel_tokens(count)]


def check_vocab(tok, vocab_size: int, arch: str) -> None:
    """The model must have a row for every token id the tokenizer can produce."""
    if len(tok) > vocab_size:
        raise DataError(
            f"the tokenizer has {len(tok)} tokens but model.vocab_size={vocab_size}; set model.vocab_size >= "
            f"{len(tok)} (a multiple of 64 such as {-(-len(tok) // 64) * 64} is fastest) or use another tokenizer"
        )
    if arch == "encoder" and tok.mask_token_id is None:
        raise DataError("masked-LM training needs a tokenizer with a mask_token (e.g. [MASK])")

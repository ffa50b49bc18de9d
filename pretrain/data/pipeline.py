"""From a data config to a tokenizer and batches: the two calls a trainer makes."""

from __future__ import annotations

from pathlib import Path

from pretrain.data.batches import Batches, CausalLMCollator, MaskedLMCollator, SequenceDataset
from pretrain.data.config import DataConfig
from pretrain.data.packing import PackedTokens, pack
from pretrain.data.sources import load_corpus
from pretrain.data.span_corruption import SpanCorruptionCollator, TextInfillingCollator, noise_counts, sentence_ends
from pretrain.data.tokenizer import (
    check_vocab,
    default_kind,
    infilling_mask_id,
    load_tokenizer,
    objective_tokens,
    save_tokenizer,
    sentinel_ids,
    train_tokenizer,
)
from pretrain.files import set_aside


def run_tokenizer(cfg: DataConfig, arch: str, vocab_size: int, run_dir: str | Path, log=print):
    """The run's tokenizer: the one already saved in the run (a resume), else the configured one,
    else one trained on the training split. Saved to run_dir/tokenizer and checked against the model."""
    saved = Path(run_dir) / "tokenizer"
    tok = load_saved_tokenizer(saved, log)
    if tok is None and cfg.tokenizer.path:
        tok = configured_tokenizer(cfg, arch, vocab_size)
        save_tokenizer(tok, saved)
    elif tok is None:
        size = cfg.tokenizer.vocab_size or vocab_size
        extra = objective_tokens(arch, cfg.objective, span_sentinels(cfg))
        added = [t for v in extra.values() for t in (v if isinstance(v, list) else [v])]
        sentinels = len(extra.get("additional_special_tokens", []))
        among = f", {sentinels} span sentinels among them" if sentinels else "".join(f", {t} among them" for t in added)
        log(f"training a {cfg.tokenizer.kind or default_kind(arch)} tokenizer ({size} tokens{among}) on the "
            "training data")  # fmt: skip
        tok = train_tokenizer(load_corpus(cfg, "train"), arch, cfg.tokenizer, size - len(added), extra)
        if len(tok) < size:  # the trainer stops when the text has nothing left to merge
            log(f"warning: the tokenizer learned {len(tok):,} of the {size:,} tokens asked for (the training text has "
                f"no more to learn); model.vocab_size={vocab_size:,} keeps {vocab_size - len(tok):,} rows no token "
                f"uses: set data.tokenizer.vocab_size and model.vocab_size to about {len(tok):,}, or give more text")
        save_tokenizer(tok, saved)
    check_vocab(tok, vocab_size, arch)
    if arch == "encoder-decoder":
        collator(cfg, tok)  # the objective's tokens are there
    return tok


def configured_tokenizer(cfg: DataConfig, arch: str, vocab_size: int):
    """data.tokenizer.path loaded and checked against the model (its vocabulary, an encoder's mask
    token, an encoder-decoder objective's tokens): a DataError naming what does not fit. Run before
    any process group (pretrain.run.LanguageModelTask.check_data, the launcher's preflight) and again
    where the run takes it."""
    tok = load_tokenizer(cfg.tokenizer.path)
    check_vocab(tok, vocab_size, arch)
    if arch == "encoder-decoder":
        collator(cfg, tok)
    return tok


def load_saved_tokenizer(folder: Path, log=print, then: str = "made again"):
    """A run's saved tokenizer, or None where there is none. One that does not load (a file cut
    short or gone) is moved aside with a warning, to be ``then`` (made again, or restored from the
    checkpoint a run resumes)."""
    if not folder.exists():
        return None
    try:
        return load_tokenizer(folder)
    except Exception as e:  # noqa: BLE001 - json, tokenizers and transformers each fail their own way
        e = e.__cause__ or e  # what the file itself gave, not load_tokenizer's words about a setting
        aside = set_aside(folder)
        if aside is not None:  # else another process moved it first, and says so
            log(f"warning: the run's tokenizer {folder} does not load ({type(e).__name__}: {str(e)[:150]}); "
                f"moved to {aside} and {then}")  # fmt: skip
        return None


def span_sentinels(cfg: DataConfig) -> int:
    """Sentinel tokens span corruption needs: one per corrupted span of a sequence."""
    return noise_counts(cfg.seq_len, cfg.noise_density, cfg.mean_noise_span_length)[1]


def collator(cfg: DataConfig, tok, seed: int = 0) -> SpanCorruptionCollator:
    """The encoder-decoder's objective: span corruption or text infilling, with the tokenizer's
    special tokens for it (a DataError where it lacks them). The decoder starts from padding, as T5's does."""
    if cfg.objective == "text_infilling":
        poisson, ends = cfg.span_lengths == "poisson", sentence_ends(tok) if cfg.permute_sentences else None
        return TextInfillingCollator(infilling_mask_id(tok), tok.eos_token_id, tok.pad_token_id, cfg.noise_density,
                                     cfg.mean_noise_span_length, seed, poisson, ends)  # fmt: skip
    return SpanCorruptionCollator(sentinel_ids(tok, span_sentinels(cfg)), tok.eos_token_id, tok.pad_token_id,
                                  cfg.noise_density, cfg.mean_noise_span_length, seed)  # fmt: skip


def special_ids(tok) -> list[int]:
    return [i for i in tok.all_special_ids if i is not None]


def batches(cfg: DataConfig, tok, arch: str, split: str, micro_batch_size: int, rank: int = 0,
            world_size: int = 1, seed: int = 0, log=print) -> Batches:  # fmt: skip
    """Batches of one split for one rank: causal LM for decoders, masked LM for encoders, span
    corruption or text infilling for encoder-decoders."""
    packed = PackedTokens(pack(cfg, tok, arch, split, seed, log))
    if arch == "decoder":
        collate = CausalLMCollator(pad_id=None)  # packed sequences hold no padding
    elif arch == "encoder-decoder":
        collate = collator(cfg, tok, seed)
    else:
        collate = MaskedLMCollator(tok.mask_token_id, len(tok), special_ids(tok), cfg.mlm_probability, seed)
    return Batches(
        SequenceDataset(packed, document_ids=cfg.document_mask), collate, micro_batch_size, rank, world_size,
        seed, shuffle=cfg.shuffle and split == "train", num_workers=cfg.num_workers,
    )  # fmt: skip

"""The encoder-decoder's pretraining objectives: T5's span corruption (Raffel et al. 2020, 3.1.4)
and BART's text infilling (Lewis et al. 2019, 2.2).

Of each packed sequence of L tokens, round(L x noise_density) in round(noise / mean_span_length)
spans are chosen at random (spans and the gaps between them have random lengths, every one at
least a token; the sequence starts with a gap). The encoder reads the sequence with each span
replaced by one sentinel token (<extra_id_0>, <extra_id_1>, ...) and an end-of-text token; the
decoder predicts each sentinel followed by the span it replaced, then end-of-text. Counts depend
only on L, so every batch has the same encoder and decoder lengths and no padding. The draw for a
sequence is seeded by its position in the stream: a resumed run corrupts it the same way.

Text infilling replaces each span with one mask token (BART's <mask>) and has the decoder predict
the whole sequence, then end-of-text. Its spans are chosen as above (``span_lengths="split"``:
fixed shapes), or as BART chooses them (``"poisson"``): lengths drawn from Poisson(mean span
length) until round(L x noise_density) tokens are covered, the last cut to fit, a length of 0
inserting a mask where no token was; the spans lie between kept tokens at random. The encoder's
inputs then differ in length and are padded, with an attention mask. BART's other noise, sentence
permutation, shuffles the sentences of the encoder's input before its spans are chosen (a sentence
ends after a token that ends in '.', '!', '?' or a newline: code's lines are its sentences); the
decoder still writes them in their order.
"""

from __future__ import annotations

import torch


def sentinel_tokens(count: int) -> list[str]:
    return [f"<extra_id_{i}>" for i in range(count)]


def noise_counts(length: int, density: float, mean_span_length: float) -> tuple[int, int]:
    """(noise tokens, noise spans) of a sequence of ``length`` tokens."""
    noise = min(max(round(length * density), 1), length - 1)
    spans = min(max(round(noise / mean_span_length), 1), noise, length - noise)
    return noise, spans


def lengths(length: int, density: float, mean_span_length: float, infilling: bool = False) -> tuple[int, int]:
    """(encoder length, decoder length) for packed sequences of ``length`` tokens."""
    noise, spans = noise_counts(length, density, mean_span_length)
    return length - noise + spans + 1, (length if infilling else noise + spans) + 1


def _segments(items: int, segments: int, gen: torch.Generator) -> torch.Tensor:
    """A random split of ``items`` into ``segments`` non-empty parts: their lengths."""
    cuts = torch.randperm(items - 1, generator=gen)[: segments - 1] + 1
    edges = torch.cat([torch.tensor([0]), cuts.sort().values, torch.tensor([items])])
    return edges.diff()


def noise_mask(length: int, noise: int, spans: int, gen: torch.Generator) -> torch.Tensor:
    """(length,) bool, True on the tokens of the noise spans; the first token is never noise."""
    noise_lengths = _segments(noise, spans, gen)
    keep_lengths = _segments(length - noise, spans, gen)
    interleaved = torch.stack([keep_lengths, noise_lengths], dim=1).reshape(-1)  # keep, noise, keep, ...
    return torch.repeat_interleave(torch.arange(2 * spans) % 2 == 1, interleaved)


def corrupt(tokens: torch.Tensor, mask: torch.Tensor, sentinels: torch.Tensor, eos: int):
    """One sequence and its noise mask -> (encoder input, decoder target): each run of masked
    (encoder) or unmasked (target) tokens becomes the next sentinel, the rest of it dropped."""

    def replace(drop: torch.Tensor) -> torch.Tensor:
        starts = drop & ~torch.cat([torch.tensor([False]), drop[:-1]])
        out = tokens.clone()
        out[starts] = sentinels[: int(starts.sum())]
        keep = ~drop | starts
        return torch.cat([out[keep], torch.tensor([eos])])

    return replace(mask), replace(~mask)  # sentinel i stands for noise span i in both


class SpanCorruptionCollator:
    """Packed sequences (L + 1 tokens; the first L used) -> encoder inputs, decoder inputs (the
    targets shifted right behind ``start_id``) and labels, all of fixed lengths. ``sentinel_ids``:
    one per span (span corruption); TextInfillingCollator takes one mask id instead."""

    def __init__(self, sentinel_ids: list[int], eos_id: int, start_id: int, density: float = 0.15,
                 mean_span_length: float = 3.0, seed: int = 0):  # fmt: skip
        self.sentinels = torch.tensor(sentinel_ids, dtype=torch.long)
        self.eos, self.start, self.seed = eos_id, start_id, seed
        self.density, self.mean_span_length = density, mean_span_length

    padded = False
    """Whether encoder inputs differ in length (then right-padded with ``start_id``, the pad token,
    and an ``attention_mask`` says which are real)."""

    def __call__(self, samples: list[dict]) -> dict:
        sources, targets = [], []
        for sample in samples:
            tokens = sample["input_ids"][:-1]
            noise, spans = noise_counts(len(tokens), self.density, self.mean_span_length)
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + sample["position"])
            source, target = self.source_target(tokens, noise, spans, gen)
            sources.append(source)
            targets.append(target)
        labels = torch.stack(targets)
        starts = torch.full((len(samples), 1), self.start, dtype=torch.long)
        batch = {"decoder_input_ids": torch.cat([starts, labels[:, :-1]], dim=1), "labels": labels,
                 "position": torch.tensor([s["position"] for s in samples])}  # fmt: skip
        if not self.padded:
            return {"input_ids": torch.stack(sources), **batch}
        ids = torch.full((len(sources), max(len(s) for s in sources)), self.start, dtype=torch.long)
        attention = torch.zeros_like(ids)
        for row, source in enumerate(sources):
            ids[row, : len(source)], attention[row, : len(source)] = source, 1
        return {"input_ids": ids, "attention_mask": attention, **batch}

    def source_target(self, tokens: torch.Tensor, noise: int, spans: int, gen: torch.Generator):
        """(encoder input, decoder target) of one sequence, its noise drawn from ``gen``."""
        return corrupt(tokens, noise_mask(len(tokens), noise, spans, gen), self.sentinels, self.eos)


def sentence_ends(tok) -> torch.Tensor:
    """(vocabulary,) bool: the tokens that end a sentence, their text ending in '.', '!', '?' or a
    newline (trailing spaces aside); special tokens never do."""
    specials = set(tok.all_special_ids)
    ends = torch.zeros(len(tok), dtype=torch.bool)
    for i in range(len(tok)):
        if i not in specials:
            ends[i] = tok.decode([i]).rstrip(" ").endswith((".", "!", "?", "\n"))
    return ends


def permute_sentences(tokens: torch.Tensor, ends: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The sentences of ``tokens`` (each ending after a token where ``ends``, (L,) bool, is True;
    the last may be cut short) in a random order."""
    cuts = (ends[:-1].nonzero().flatten() + 1).tolist()
    sentences = torch.tensor_split(tokens, cuts)
    return torch.cat([sentences[i] for i in torch.randperm(len(sentences), generator=gen).tolist()])


def poisson_lengths(noise: int, mean: float, gen: torch.Generator) -> list[int]:
    """BART's span lengths: Poisson(mean) draws until they cover ``noise`` tokens, the last cut to fit
    (zeros included: each one a mask inserted)."""
    lengths, total, rate = [], 0, torch.tensor([float(mean)])
    while total < noise:
        n = min(int(torch.poisson(rate, generator=gen).item()), noise - total)
        lengths.append(n)
        total += n
    return lengths


def infill_poisson(tokens: torch.Tensor, noise: int, mean: float, mask_id: int, eos: int,
                   gen: torch.Generator) -> torch.Tensor:  # fmt: skip
    """The encoder input of BART's text infilling: ``noise`` tokens in Poisson-length spans, each
    span (an empty one too) one ``mask_id``, every span after a kept token; then ``eos``. At most
    ``noise`` spans and as many as the kept tokens allow (the last absorbs the rest), so the input is
    never longer than the sequence plus end-of-text."""
    kept = len(tokens) - noise
    spans = poisson_lengths(noise, mean, gen)
    most = max(min(noise, kept), 1)
    if len(spans) > most:
        spans = spans[: most - 1] + [sum(spans[most - 1 :])]
    gaps = _segments(kept, len(spans) + 1, gen) if kept > len(spans) else torch.ones(len(spans) + 1, dtype=torch.long)
    pieces, pos, mask = [], 0, torch.tensor([mask_id])
    for gap, span in zip(gaps.tolist(), spans, strict=False):
        pieces += [tokens[pos : pos + gap], mask]
        pos += gap + span
    return torch.cat([*pieces, tokens[pos:], torch.tensor([eos])])


class TextInfillingCollator(SpanCorruptionCollator):
    """BART's text infilling: each span becomes ``mask_id`` in the encoder input; the decoder's
    target is the whole sequence and end-of-text. ``poisson``: BART's span lengths (see the module
    docstring); the encoder inputs are then right-padded with ``start_id`` (the pad token) and an
    ``attention_mask`` says which are real. ``sentence_ends`` ((vocabulary,) bool, see
    ``sentence_ends``): shuffle each sequence's sentences in the encoder's input first."""

    def __init__(self, mask_id: int, eos_id: int, start_id: int, density: float = 0.3, mean_span_length: float = 3.0,
                 seed: int = 0, poisson: bool = False, sentence_ends: torch.Tensor | None = None):  # fmt: skip
        super().__init__([mask_id], eos_id, start_id, density, mean_span_length, seed)
        self.poisson, self.padded, self.ends = poisson, poisson, sentence_ends

    def source_target(self, tokens, noise, spans, gen):
        target = torch.cat([tokens, torch.tensor([self.eos])])
        if self.ends is not None:
            tokens = permute_sentences(tokens, self.ends[tokens], gen)
        if self.poisson:
            return infill_poisson(tokens, noise, self.mean_span_length, int(self.sentinels[0]), self.eos, gen), target
        source, _ = corrupt(tokens, noise_mask(len(tokens), noise, spans, gen), self.sentinels.expand(spans), self.eos)
        return source, target


__all__ = ["SpanCorruptionCollator", "TextInfillingCollator", "corrupt", "infill_poisson", "lengths", "noise_counts",
           "noise_mask", "permute_sentences", "poisson_lengths", "sentence_ends", "sentinel_tokens"]

"""T5's span corruption: the counts, the sentinel format, and that inputs and targets together
are exactly the original sequence."""

import pytest
import torch

from pretrain.data.span_corruption import SpanCorruptionCollator, corrupt, lengths, noise_counts, noise_mask


def rebuild(source: torch.Tensor, target: torch.Tensor, sentinels: list[int], eos: int) -> list[int]:
    """Put each span of the target back where its sentinel stands in the source."""
    spans, current = {}, None
    for t in target.tolist()[:-1]:
        if t in sentinels:
            current = t
            spans[current] = []
        else:
            spans[current].append(t)
    out = []
    for t in source.tolist()[:-1]:
        out += spans[t] if t in sentinels else [t]
    assert source[-1] == target[-1] == eos
    return out


@pytest.mark.parametrize("length", [10, 33, 128, 512])
def test_inputs_and_targets_together_are_the_sequence(length):
    noise, spans = noise_counts(length, 0.15, 3.0)
    assert noise == round(0.15 * length) and spans == max(1, round(noise / 3))
    sentinels = list(range(1000, 1000 + spans))
    tokens = torch.arange(10, 10 + length)
    for seed in range(5):
        mask = noise_mask(length, noise, spans, torch.Generator().manual_seed(seed))
        assert int(mask.sum()) == noise and not mask[0]
        starts = mask & ~torch.cat([torch.tensor([False]), mask[:-1]])
        assert int(starts.sum()) == spans  # exactly the asked number of separate spans
        source, target = corrupt(tokens, mask, torch.tensor(sentinels), eos=2)
        assert (len(source), len(target)) == lengths(length, 0.15, 3.0)
        assert target[0] == sentinels[0] and sorted(set(source.tolist()) & set(sentinels)) == sentinels
        assert rebuild(source, target, sentinels, 2) == tokens.tolist()


def test_a_sequence_is_corrupted_the_same_way_wherever_it_lands_in_a_batch():
    collate = SpanCorruptionCollator([900, 901, 902], eos_id=2, start_id=0, seed=7)
    samples = [{"input_ids": torch.arange(5, 5 + 41) + 40 * i, "position": i} for i in range(4)]
    batch = collate(samples)
    alone = collate(samples[2:3])
    assert torch.equal(batch["input_ids"][2], alone["input_ids"][0])
    assert torch.equal(batch["labels"][2], alone["labels"][0])
    assert not torch.equal(batch["labels"][0], batch["labels"][1] - 40)  # each position its own draw
    assert torch.equal(batch["decoder_input_ids"][:, 0], torch.zeros(4, dtype=torch.long))
    assert torch.equal(batch["decoder_input_ids"][:, 1:], batch["labels"][:, :-1])  # targets shifted right
    assert batch["input_ids"].shape == (4, lengths(40, 0.15, 3.0)[0])


def test_text_infilling_masks_each_span_once_and_the_decoder_writes_the_whole_sequence():
    """BART's objective: the source is the sequence with each span one mask token; the target is the
    sequence itself; shapes are fixed by the length alone, and a draw depends on the stream position."""
    from pretrain.data.span_corruption import TextInfillingCollator

    collate = TextInfillingCollator(mask_id=900, eos_id=2, start_id=0, density=0.3, seed=7)
    samples = [{"input_ids": torch.arange(5, 5 + 41) + 40 * i, "position": i} for i in range(4)]
    batch = collate(samples)
    noise, spans = noise_counts(40, 0.3, 3.0)
    assert (noise, spans) == (12, 4)
    assert batch["input_ids"].shape == (4, lengths(40, 0.3, 3.0, infilling=True)[0]) == (4, 40 - 12 + 4 + 1)
    assert torch.equal(batch["labels"][:, :-1], torch.stack([s["input_ids"][:-1] for s in samples]))
    assert (batch["labels"][:, -1] == 2).all() and (batch["input_ids"][:, -1] == 2).all()
    assert torch.equal(batch["decoder_input_ids"][:, 1:], batch["labels"][:, :-1])
    for row, sample in zip(batch["input_ids"], samples, strict=True):
        kept = [t for t in row.tolist()[:-1] if t != 900]
        assert (row == 900).sum() == spans and len(kept) == 40 - noise
        tokens = sample["input_ids"][:-1].tolist()
        assert kept == [t for t in tokens if t in kept]  # what is kept stays in order
        assert row[0] == tokens[0]  # a sequence starts with a kept token
    assert torch.equal(collate(samples[2:3])["input_ids"][0], batch["input_ids"][2])
    assert not torch.equal((batch["input_ids"][0] == 900), (batch["input_ids"][1] == 900))  # own draws


def test_poisson_spans_cover_the_noise_in_bart_lengths_zero_length_ones_inserting_a_mask():
    """span_lengths=poisson: over many draws the spans (empty ones too) average Poisson's mean of 3,
    about e^-3 of them are empty, and each source keeps every other token in order, one mask per
    span; the encoder inputs differ in length, right-padded with an attention mask."""
    import math

    from pretrain.data.span_corruption import TextInfillingCollator, infill_poisson, poisson_lengths

    draws = [poisson_lengths(38, 3.0, torch.Generator().manual_seed(i)) for i in range(3000)]
    spans = [n for d in draws for n in d[:-1]]  # the last is cut to fit
    assert all(sum(d) == 38 for d in draws)
    assert sum(spans) / len(spans) == pytest.approx(3.0, abs=0.1)
    assert sum(n == 0 for n in spans) / len(spans) == pytest.approx(math.exp(-3), abs=0.015)
    tokens = torch.arange(100, 228)
    inserted = 0
    for i in range(200):
        source = infill_poisson(tokens, 38, 3.0, 999, 2, torch.Generator().manual_seed(i))
        kept = source[(source != 999)][:-1]
        masks = int((source == 999).sum())
        assert source[-1] == 2 and source[0] == tokens[0] and len(source) <= 129
        assert len(kept) == 128 - 38 and (kept.diff() > 0).all()  # the other 90 tokens, in order
        gaps = kept.diff() - 1  # tokens left out between kept ones, where masks are
        runs = torch.cat([gaps, (227 - kept[-1:])])  # and after the last kept token
        assert masks >= int((runs > 0).sum())  # every left-out run has its mask
        inserted += masks - int((runs > 0).sum())  # masks where nothing was left out
    assert inserted > 0
    collate = TextInfillingCollator(mask_id=999, eos_id=2, start_id=0, density=0.3, seed=7, poisson=True)
    samples = [{"input_ids": torch.arange(100, 229) + i, "position": i} for i in range(4)]
    batch = collate(samples)
    width = batch["input_ids"].shape[1]
    real = batch["attention_mask"].sum(1)
    assert real.max() == width and real.min() < width  # different lengths, padded to the longest
    assert (batch["input_ids"][batch["attention_mask"] == 0] == 0).all()
    assert batch["labels"].shape == (4, 129) and torch.equal(batch["decoder_input_ids"][:, 1:], batch["labels"][:, :-1])
    assert torch.equal(collate(samples[1:2])["input_ids"][0, : real[1]], batch["input_ids"][1, : real[1]])


def test_sentence_permutation_shuffles_whole_sentences_in_the_encoder_input_only():
    """permute_sentences: the encoder reads the sequence's sentences (ending after '.', '!', '?' or
    a newline token; code's lines) in another order, none split; the decoder writes the original."""
    import itertools

    from pretrain.data.span_corruption import TextInfillingCollator, permute_sentences, sentence_ends

    class Tok:  # ids 0-1 special; 2 ends in ".", 3 in a newline, 4 in "! " (a space after), 5+ do not
        all_special_ids = [0, 1]
        texts = ["<pad>", "</s>", " end.", ")\n", "go! ", "a", "b", "c", "d", "e", "f", "g"]

        def __len__(self):
            return len(self.texts)

        def decode(self, ids):
            return "".join(self.texts[i] for i in ids)

    ends = sentence_ends(Tok())
    assert ends.tolist() == [False, False, True, True, True] + [False] * 7
    tokens = torch.tensor([5, 6, 2, 7, 3, 8, 9, 10, 4, 11, 5, 6, 7, 2, 8])  # 4 sentences, the last cut short
    sentences = [[5, 6, 2], [7, 3], [8, 9, 10, 4], [11, 5, 6, 7, 2], [8]]
    orders = set()
    for seed in range(30):
        shuffled = permute_sentences(tokens, ends[tokens], torch.Generator().manual_seed(seed)).tolist()
        assert any(sum(order, []) == shuffled for order in itertools.permutations(sentences))  # whole sentences
        orders.add(tuple(shuffled))
    assert len(orders) > 10  # many orders
    collate = TextInfillingCollator(mask_id=1, eos_id=0, start_id=0, density=0.1, seed=3, sentence_ends=ends)
    samples = [{"input_ids": torch.cat([tokens, torch.tensor([5])]), "position": i} for i in range(6)]
    batch = collate(samples)
    assert "attention_mask" not in batch  # split spans: every source one length
    assert all(torch.equal(row[:-1], tokens) for row in batch["labels"])  # the decoder writes the original
    firsts = {int(row[0]) for row in batch["input_ids"]}
    assert len(firsts) > 1  # sequences start with different sentences

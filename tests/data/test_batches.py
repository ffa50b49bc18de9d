import itertools

import pytest
import torch

from pretrain.data.batches import (
    IGNORE,
    Batches,
    CausalLMCollator,
    MaskedLMCollator,
    SequenceDataset,
    StreamSampler,
)
from pretrain.data.packing import PackedTokens, pack
from pretrain.data.pipeline import batches, special_ids

from .conftest import data_cfg

quiet = dict(log=lambda *_: None)


@pytest.fixture(scope="module")
def packed(corpus_dir, tmp_path_factory, bpe):
    small = tmp_path_factory.mktemp("small")
    for f in sorted(corpus_dir.glob("*.txt"))[:12]:
        (small / f.name).write_text(f.read_text()[:1500])
    cfg = data_cfg(small, tmp_path_factory.mktemp("cache"), seq_len=32, validation_fraction=0.0)
    p = PackedTokens(pack(cfg, bpe, "decoder", "train", **quiet))
    assert 30 < len(p) < 400  # small enough that the tests below cross epoch boundaries
    return p


def make(packed, rank=0, world=1, workers=0, micro=4, seed=7):
    return Batches(SequenceDataset(packed, document_ids=True), CausalLMCollator(), micro, rank, world, seed,
                   shuffle=True, num_workers=workers)  # fmt: skip


def take(loader, n):
    return [b["input_ids"].clone() for b in itertools.islice(iter(loader), n)]


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_twice_gives_exactly_the_uninterrupted_batches(packed, workers):
    steps = 2 * len(packed) // 4 + 5  # more than two epochs
    reference = take(make(packed, workers=workers), steps)
    first = make(packed, workers=workers)
    got = take(first, 7)
    second = make(packed, workers=workers)
    second.load_state_dict(first.state_dict())
    got += take(second, len(packed) // 4)  # crosses the epoch boundary
    third = make(packed, workers=workers)
    third.load_state_dict(second.state_dict())
    got += take(third, steps - len(got))
    assert len(got) == len(reference) == steps
    for a, b in zip(got, reference, strict=True):
        assert torch.equal(a, b)
    assert reference[0].shape == (4, 32)


def test_one_epoch_over_two_ranks_sees_every_sequence_once(packed):
    n = len(packed)
    seen = []
    for rank in (0, 1):
        sampler = iter(StreamSampler(n, rank, 2, seed=3, shuffle=True, start=0))
        seen += [next(sampler) for _ in range((n + 1 - rank) // 2)]
    assert sorted(p for p, _ in seen) == list(range(n))
    assert sorted(i for _, i in seen) == list(range(n))
    rank0 = make(packed, rank=0, world=2, seed=3)
    rank1 = make(packed, rank=1, world=2, seed=3)
    rows = [r for b in take(rank0, 3) + take(rank1, 3) for r in b]
    assert len({tuple(r.tolist()) for r in rows}) == 24  # the ranks' batches do not overlap
    expected = {tuple(packed.sequence(i)[:-1].tolist()) for p, i in seen if p < 24}
    assert {tuple(r.tolist()) for r in rows} == expected


def test_resume_at_another_world_size_neither_drops_nor_repeats(packed):
    two = [make(packed, rank=r, world=2, micro=2) for r in (0, 1)]
    positions = []
    for loader in two:
        for b in itertools.islice(iter(loader), 5):
            positions += b["position"].tolist()
    state = two[0].state_dict()
    assert state["consumed"] == 20 and two[1].state_dict()["consumed"] == 20
    one = make(packed, rank=0, world=1, micro=2)
    one.load_state_dict(state)
    for b in itertools.islice(iter(one), 6):
        positions += b["position"].tolist()
    assert sorted(positions) == list(range(32))


def test_position_travels_with_the_batch(packed):
    batch = next(iter(make(packed, rank=1, world=3, micro=2)))
    assert batch["position"].tolist() == [1, 4]


def test_causal_labels_are_shifted_inputs_with_document_ids(packed):
    batch = next(iter(make(packed)))
    assert torch.equal(batch["input_ids"][:, 1:], batch["labels"][:, :-1])
    assert batch["document_ids"].shape == batch["input_ids"].shape
    assert (batch["document_ids"].diff(dim=1) >= 0).all()
    padded = CausalLMCollator(pad_id=0)([{"input_ids": torch.tensor([5, 6, 0, 0]), "position": 0}])
    assert padded["labels"].tolist() == [[6, IGNORE, IGNORE]]


def test_changed_data_refuses_the_saved_position(packed):
    loader = make(packed)
    state = loader.state_dict() | {"num_samples": len(packed) + 1}
    with pytest.raises(ValueError, match="the corpus, tokenizer or data.seq_len changed"):
        loader.load_state_dict(state)


def test_masked_lm_statistics(corpus_dir, tmp_path, wordpiece):
    cfg = data_cfg(corpus_dir, tmp_path, seq_len=128, mlm_probability=0.15)
    loader = batches(cfg, wordpiece, "encoder", "train", 16, seed=1, **quiet)
    originals = {}
    chosen = masked = random = kept = specials_chosen = total = 0
    special = torch.tensor(special_ids(wordpiece))
    for batch in itertools.islice(iter(loader), 12):
        for row, pos in enumerate(batch["position"].tolist()):
            originals[pos] = torch.from_numpy(loader.dataset.packed.sequence(_index(loader, pos)))[:-1]
            orig, inp, lab = originals[pos], batch["input_ids"][row], batch["labels"][row]
            sel = lab != IGNORE
            assert torch.equal(lab[sel], orig[sel])
            eligible = ~torch.isin(orig, special)
            total += int(eligible.sum())
            chosen += int(sel.sum())
            specials_chosen += int((sel & ~eligible).sum())
            masked += int((sel & (inp == wordpiece.mask_token_id)).sum())
            kept += int((sel & (inp == orig)).sum())
            random += int((sel & (inp != orig) & (inp != wordpiece.mask_token_id)).sum())
            assert torch.equal(inp[~sel], orig[~sel])  # unselected tokens are untouched
    assert specials_chosen == 0
    assert chosen / total == pytest.approx(0.15, abs=0.01)
    assert masked / chosen == pytest.approx(0.8, abs=0.02)
    assert random / chosen == pytest.approx(0.1, abs=0.02)
    assert kept / chosen == pytest.approx(0.1, abs=0.02)


def test_masking_depends_on_stream_position_only():
    collate = MaskedLMCollator(mask_id=3, vocab_size=50, special_ids=[0, 1, 2, 3], probability=0.3, seed=5)
    tokens = torch.arange(10, 43)
    a = collate([{"input_ids": tokens.clone(), "position": 11}, {"input_ids": tokens.clone(), "position": 12}])
    b = collate([{"input_ids": tokens.clone(), "position": 12}])
    assert torch.equal(a["input_ids"][1], b["input_ids"][0]) and torch.equal(a["labels"][1], b["labels"][0])
    assert not torch.equal(a["labels"][0], a["labels"][1])


def _index(loader, position):
    return StreamSampler(len(loader.dataset), 0, 1, loader.seed, loader.shuffle, 0).index(position)

"""Deterministic, rank-sharded, exactly resumable batches of packed sequences.

The order is one global stream: position k of the stream is sequence ``perm_e[k mod N]`` of epoch
``e = k div N``, with perm_e a permutation seeded by (seed, e). Ranks share the stream
round-robin: rank r of W takes positions c + r, c + r + W, ... where c counts the samples all ranks
have consumed so far. ``c`` is the whole state: after a resume the next batches are the ones an
uninterrupted run would have seen, across epoch boundaries. Resuming at another world size W'
continues the same stream from c, dealt round-robin over W' ranks: no sample is dropped or
repeated, and which rank sees which sample changes only from c on.

Random choices inside a sample (masked-LM masking) are seeded by the stream position, so they do
not depend on worker count, world size or resumes.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pretrain.data.packing import PackedTokens

IGNORE = -100  # label of positions that carry no loss


class SequenceDataset(Dataset):
    """Map (stream position, sequence index) -> the sequence's tokens (and document ids)."""

    def __init__(self, packed: PackedTokens, document_ids: bool = False):
        self.packed = packed
        self.with_documents = document_ids

    def __len__(self) -> int:
        return len(self.packed)

    def __getitem__(self, item: tuple[int, int]) -> dict:
        position, index = item
        out = {"input_ids": torch.from_numpy(self.packed.sequence(index)), "position": position}
        if self.with_documents:
            out["document_ids"] = torch.from_numpy(self.packed.document_ids(index))
        return out


class StreamSampler(Sampler):
    """Endless (position, sequence index) pairs for one rank, from stream position ``start``."""

    def __init__(self, num_samples: int, rank: int, world_size: int, seed: int, shuffle: bool, start: int):
        self.n, self.rank, self.world, self.seed, self.shuffle, self.start = (
            num_samples, rank, world_size, seed, shuffle, start,
        )  # fmt: skip
        self._epoch, self._perm = -1, None

    def index(self, position: int) -> int:
        epoch, j = divmod(position, self.n)
        if not self.shuffle:
            return j
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._epoch, self._perm = epoch, rng.permutation(self.n)
        return int(self._perm[j])

    def __iter__(self):
        position = self.start + self.rank
        while True:
            yield position, self.index(position)
            position += self.world


class Batches:
    """Collated micro-batches for one rank, with ``state_dict`` / ``load_state_dict``.

    Iterating starts a fresh DataLoader at the current stream position; the position advances
    only when a batch is handed out, never by prefetching.
    """

    def __init__(self, dataset: SequenceDataset, collate, micro_batch_size: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, shuffle: bool = True, num_workers: int = 0):  # fmt: skip
        self.dataset, self.collate = dataset, collate
        self.micro, self.rank, self.world = micro_batch_size, rank, world_size
        self.seed, self.shuffle, self.num_workers = seed, shuffle, num_workers
        self.consumed = 0
        """Samples taken from the stream by all ranks together."""

    @property
    def epoch(self) -> float:
        return self.consumed / len(self.dataset)

    def __iter__(self):
        sampler = StreamSampler(len(self.dataset), self.rank, self.world, self.seed, self.shuffle, self.consumed)
        loader = DataLoader(
            self.dataset, batch_size=self.micro, sampler=sampler, collate_fn=self.collate,
            num_workers=self.num_workers, persistent_workers=False,
        )  # fmt: skip
        for batch in loader:
            self.consumed += self.micro * self.world
            yield batch

    def state_dict(self) -> dict:
        return {"consumed": self.consumed, "world_size": self.world, "seed": self.seed,
                "num_samples": len(self.dataset), "micro_batch_size": self.micro}  # fmt: skip

    def check_resumable(self, num_samples: int) -> None:
        """A ConfigError when the data is not the checkpoint's (the saved position would mean nothing)."""
        if num_samples != len(self.dataset):
            from pretrain.errors import ConfigError

            raise ConfigError(
                f"the checkpoint's data has {num_samples} sequences, this run's has {len(self.dataset)}: the corpus, "
                "tokenizer or data.seq_len changed since it was saved; resume with the same data, or start a new "
                "run from its weights (another name=, with python -m finetune init_from=CHECKPOINT for a task)"
            )

    def load_state_dict(self, state: dict) -> None:
        self.check_resumable(state["num_samples"])
        if state["seed"] != self.seed:
            warnings.warn(
                f"resuming with seed {self.seed} instead of {state['seed']}: the data order from here on "
                f"is {self.seed}'s, from the same position ({state['consumed']} samples consumed)",
                stacklevel=2,
            )
        self.consumed = state["consumed"]


class CausalLMCollator:
    """Sequences of L + 1 tokens -> inputs (L) and next-token labels (L); padding is ignored."""

    def __init__(self, pad_id: int | None = None):
        self.pad_id = pad_id

    def __call__(self, samples: list[dict]) -> dict:
        tokens = torch.stack([s["input_ids"] for s in samples])
        labels = tokens[:, 1:].clone()
        if self.pad_id is not None:
            labels[labels == self.pad_id] = IGNORE
        batch = {"input_ids": tokens[:, :-1], "labels": labels, "position": _positions(samples)}
        if "document_ids" in samples[0]:
            batch["document_ids"] = torch.stack([s["document_ids"] for s in samples])[:, :-1]
        return batch


class MaskedLMCollator:
    """BERT's masking: a share ``probability`` of the non-special tokens is chosen for prediction;
    of those 80% become the mask token, 10% a random token, 10% stay. Other labels are ignored."""

    def __init__(self, mask_id: int, vocab_size: int, special_ids: list[int], probability: float = 0.15,
                 seed: int = 0):  # fmt: skip
        self.mask_id, self.vocab_size, self.probability, self.seed = mask_id, vocab_size, probability, seed
        self.special = torch.tensor(sorted(set(special_ids)), dtype=torch.long)

    def __call__(self, samples: list[dict]) -> dict:
        inputs = torch.stack([s["input_ids"][:-1] for s in samples])  # (B, L); MLM has no next token
        labels = torch.full_like(inputs, IGNORE)
        for row, sample in enumerate(samples):
            rng = torch.Generator().manual_seed(self.seed * 1_000_003 + sample["position"])
            x = inputs[row]
            chosen = (torch.rand(x.shape, generator=rng) < self.probability) & ~torch.isin(x, self.special)
            action = torch.rand(x.shape, generator=rng)
            random_tokens = torch.randint(self.vocab_size, x.shape, generator=rng)
            labels[row, chosen] = x[chosen]
            x[chosen & (action < 0.8)] = self.mask_id
            swap = chosen & (action >= 0.8) & (action < 0.9)
            x[swap] = random_tokens[swap]
        batch = {"input_ids": inputs, "labels": labels, "position": _positions(samples)}
        if "document_ids" in samples[0]:
            batch["document_ids"] = torch.stack([s["document_ids"][:-1] for s in samples])
        return batch


def _positions(samples: list[dict]) -> torch.Tensor:
    """Stream positions of the batch's samples (which data a step saw, for logs and checks)."""
    return torch.tensor([s["position"] for s in samples])

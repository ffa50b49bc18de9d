"""Weights as safetensors files of a bounded size with an index, the layout transformers writes
(``model.safetensors``, or ``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json``),
written one shard at a time and read back one tensor at a time (memory-mapped); and transformers'
older layout of pickled files (``pytorch_model.bin``, or shards + ``pytorch_model.bin.index.json``),
read the same way."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
PICKLED_INDEX = "pytorch_model.bin.index.json"
PICKLED = "pytorch_model.bin"


def write_sharded(tensors: Iterable[tuple[str, Callable[[], torch.Tensor]]], folder: Path,
                  max_shard_bytes: int = 5 * 2**30) -> list[Path]:  # fmt: skip
    """Write (name, make the tensor) pairs in order, holding at most one shard (plus one tensor) in
    memory; returns the files. A tensor larger than the limit gets a shard of its own."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    shards: list[list[str]] = []
    shard: dict[str, torch.Tensor] = {}
    size = total = 0

    def flush():
        nonlocal shard, size
        if shard:
            save_file(shard, str(folder / f".shard-{len(shards)}.tmp"), metadata={"format": "pt"})
            shards.append(list(shard))
            shard, size = {}, 0

    for name, make in tensors:
        tensor = make().contiguous()
        nbytes = tensor.numel() * tensor.element_size()
        if shard and size + nbytes > max_shard_bytes:
            flush()
        shard[name] = tensor.clone() if tensor.untyped_storage().nbytes() != nbytes else tensor  # no shared storage
        size += nbytes
        total += nbytes
    flush()
    if len(shards) == 1:
        (folder / INDEX).unlink(missing_ok=True)  # an earlier sharded write's index would win over the new file
        os.replace(folder / ".shard-0.tmp", folder / SINGLE)
        _remove_other_weights(folder, [folder / SINGLE])
        return [folder / SINGLE]
    files, weight_map = [], {}
    for i, names in enumerate(shards):
        file = folder / f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        os.replace(folder / f".shard-{i}.tmp", file)
        files.append(file)
        weight_map.update(dict.fromkeys(names, file.name))
    (folder / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    _remove_other_weights(folder, files)
    return files


def _remove_other_weights(folder: Path, kept: list[Path]) -> None:
    """Weights files an earlier write left in ``folder`` (another shard count): a reader taking
    the folder's files would mix them with these."""
    for old in [folder / SINGLE, *folder.glob("model-*-of-*.safetensors")]:
        if old not in kept:
            old.unlink(missing_ok=True)


def has_weights(folder: Path) -> bool:
    return (folder / SINGLE).is_file() or (folder / INDEX).is_file()


class _FolderWeights(Mapping):
    """A folder's tensors by name; ``_where``: name -> the file that holds it."""

    _where: dict[str, str]

    def __contains__(self, name: object) -> bool:  # Mapping's would read the tensor
        return name in self._where

    def __iter__(self):
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


class ShardedWeights(_FolderWeights):
    """The tensors of a folder written as above (or by transformers), by name, each read when asked.
    A file is mapped only while one of its tensors is read, so what was read does not stay resident."""

    def __init__(self, folder: Path):
        from safetensors import safe_open

        self._folder = Path(folder)
        if (self._folder / INDEX).is_file():
            self._where = json.loads((self._folder / INDEX).read_text())["weight_map"]
        else:
            with safe_open(str(self._folder / SINGLE), framework="pt") as f:
                self._where = dict.fromkeys(f.keys(), SINGLE)

    def __getitem__(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(self._folder / self._where[name]), framework="pt") as f:
            return f.get_tensor(name)

    def shape(self, name: str) -> tuple[int, ...]:
        """Read from the file's header, not its data."""
        from safetensors import safe_open

        with safe_open(str(self._folder / self._where[name]), framework="pt") as f:
            return tuple(f.get_slice(name).get_shape())


def has_pickled_weights(folder: Path) -> bool:
    return (folder / PICKLED).is_file() or (folder / PICKLED_INDEX).is_file()


class PickledWeights(_FolderWeights):
    """The tensors of a folder in transformers' pickled layout, by name. Each file is opened with
    ``torch.load(weights_only=True, mmap=True)`` through pretrain.safe_load (a file that holds more
    than tensors is refused, naming it), so a tensor's bytes are read from disk when it is used; a
    file saved in torch's format before 1.6, which cannot be mapped, is read whole."""

    def __init__(self, folder: Path):
        self._folder = Path(folder)
        self._open: dict[str, dict] = {}
        if (self._folder / PICKLED_INDEX).is_file():
            self._where = json.loads((self._folder / PICKLED_INDEX).read_text())["weight_map"]
        else:
            self._where = dict.fromkeys(self._file(PICKLED), PICKLED)

    def _file(self, name: str) -> dict:
        from pretrain import safe_load

        if name not in self._open:
            path = self._folder / name
            try:
                self._open[name] = safe_load.load(path, map_location="cpu", mmap=True)
            except RuntimeError as e:  # torch's legacy (non-zip) format has no mapping
                if "mmap" not in str(e):
                    raise
                self._open[name] = safe_load.load(path, map_location="cpu")
        return self._open[name]

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._file(self._where[name])[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self[name].shape)  # a mapped tensor's shape reads no data

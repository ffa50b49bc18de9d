import json
import os
from pathlib import Path

import numpy as np
import pytest

from pretrain.data import packing
from pretrain.data.config import SourceConfig
from pretrain.data.packing import PackedTokens, pack
from pretrain.data.sources import DataError, held_out, load_corpus

from .conftest import data_cfg

quiet = dict(log=lambda *_: None)


def test_packed_stream_is_the_documents_joined_by_the_separator(corpus_dir, tmp_path, bpe):
    cfg = data_cfg(corpus_dir, tmp_path)
    packed = PackedTokens(pack(cfg, bpe, "decoder", "train", **quiet))
    docs = load_corpus(cfg, "train")["text"]
    expected = []
    for d in docs:
        expected += bpe(d, add_special_tokens=False)["input_ids"] + [bpe.eos_token_id]
    stream = packed.tokens(0, packed.index["num_tokens"])
    assert stream.tolist() == expected
    assert len(packed) == (len(expected) - 1) // 32
    seq = packed.sequence(3)
    assert seq.tolist() == expected[96:129]  # 33 tokens: inputs and the next-token labels
    assert packed.index["dtype"] == "uint16" and packed.index["num_documents"] == len(docs)
    # a new document starts right after each separator: look at the first sequence that holds one
    # with a token after it (the corpus has many short documents, so one is near the start)
    i = next(i for i in range(len(packed)) if 0 < len(np.flatnonzero(packed.sequence(i)[:-1] == bpe.eos_token_id)))
    seq, doc_ids = packed.sequence(i), packed.document_ids(i)
    end = np.flatnonzero(seq[:-1] == bpe.eos_token_id)[0]
    assert doc_ids[end + 1] == doc_ids[end] + 1 and (doc_ids[: end + 1] == doc_ids[0]).all()


def test_sequences_cross_shard_boundaries(corpus_dir, tmp_path, bpe, monkeypatch):
    monkeypatch.setattr(packing, "SHARD_TOKENS", 1000)
    cfg = data_cfg(corpus_dir, tmp_path)
    small = PackedTokens(pack(cfg, bpe, "decoder", "train", **quiet))
    assert len(small.index["shards"]) > 5
    monkeypatch.setattr(packing, "SHARD_TOKENS", 1 << 28)
    whole = PackedTokens(pack(data_cfg(corpus_dir, tmp_path / "other"), bpe, "decoder", "train", **quiet))
    for i in (0, 30, 31, len(whole) - 1):  # sequence 31 spans the boundary at token 1000
        assert small.sequence(i).tolist() == whole.sequence(i).tolist()


def _cut_shard(folder: Path) -> None:
    shard = folder / "tokens-00001.bin"
    shard.write_bytes(shard.read_bytes()[:100])


def _drop_shard(folder: Path) -> None:
    (folder / "tokens-00002.bin").unlink()


def _cut_index(folder: Path) -> None:
    index = folder / "index.json"
    index.write_text(index.read_text()[:40])


def _cut_doc_starts(folder: Path) -> None:
    np.save(folder / "doc_starts.npy", np.load(folder / "doc_starts.npy")[:-3])


@pytest.mark.parametrize("damage, said", [
    (_cut_shard, "tokens-00001.bin holds 50 tokens, the index says 1,000"),
    (_drop_shard, "tokens-00002.bin is missing, the index says 1,000"),
    (_cut_index, "index.json does not read (JSONDecodeError: "),
    (_cut_doc_starts, "doc_starts.npy has "),
])  # fmt: skip
def test_a_damaged_cache_is_moved_aside_and_packed_again(corpus_dir, tmp_path, bpe, monkeypatch, damage, said):
    """A cache cut short or missing a file after it was written (a copy stopped, a shared disk lost
    a file): found by its sizes when opened, kept aside, and packed again to the same tokens. Read
    as it was, a short shard ended a run mid-training with an IndexError from the reader."""
    monkeypatch.setattr(packing, "SHARD_TOKENS", 1000)
    cfg = data_cfg(corpus_dir, tmp_path)
    folder = pack(cfg, bpe, "decoder", "train", **quiet)
    before = PackedTokens(folder)
    want = before.tokens(0, before.index["num_tokens"]).tolist()
    damage(folder)
    lines = []
    assert pack(cfg, bpe, "decoder", "train", log=lines.append) == folder
    assert lines[0].startswith(f"warning: the packed train cache {folder} is damaged ({said}"), lines
    after = PackedTokens(folder)
    assert after.tokens(0, after.index["num_tokens"]).tolist() == want
    aside = [p for p in folder.parent.iterdir() if p.name.startswith(f"{folder.name}.damaged-")]
    assert len(aside) == 1 and f"moved to {aside[0]}" in lines[0]
    assert packing.damage(folder) is None and packing.damage(aside[0]) is not None


def test_a_disk_too_full_for_the_cache_is_named_before_writing_and_when_it_fills_on_the_way(
    corpus_dir, tmp_path, bpe, monkeypatch
):
    """Shards were written through a writable memmap: on a full disk the first page written past
    the space killed the process with SIGBUS and left the partial cache behind, taking the space."""
    import errno
    import shutil
    from collections import namedtuple

    cfg = data_cfg(corpus_dir, tmp_path)
    (tmp_path / "cache" / ".train-0123.tmp-abcd").mkdir(parents=True)  # an earlier pack, killed
    (tmp_path / "cache" / ".train-0123.tmp-abcd" / "tokens-00000.bin").write_bytes(bytes(3 * 2**20))
    usage, real = namedtuple("usage", "total used free"), shutil.disk_usage
    monkeypatch.setattr(packing.shutil, "disk_usage", lambda _: usage(2**30, 2**30 - 2**14, 2**14))
    with pytest.raises(DataError) as refused:
        pack(cfg, bpe, "decoder", "train", **quiet)
    assert str(refused.value).startswith(f"data.cache_dir={cfg.cache_dir!r}: packing the train split needs ")
    assert "MiB and the disk holding it has 0.0 MiB free (3.0 MiB of it in 1 folder(s) of interrupted packing or " \
        "damaged caches set aside, which can go: .train-0123.tmp-abcd); free space there or set data.cache_dir " \
        "to a larger disk" in str(refused.value)  # fmt: skip
    monkeypatch.setattr(packing.shutil, "disk_usage", real)
    tried = []

    class FillsUp:  # a shard file on a disk that fills after 1,000 bytes
        def __init__(self, path, mode):
            self.f, self.n = open(path, mode), 0

        def write(self, data):
            tried.append(len(data))
            self.n += len(data)
            if self.n > 1000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(packing, "open", FillsUp, raising=False)
    with pytest.raises(DataError, match=r"packing the train split needs .* MiB and the disk holding it has "):
        pack(cfg, bpe, "decoder", "train", **quiet)
    assert sum(tried) > 1000  # the disk filled on the way
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [".train-0123.tmp-abcd"]  # ours removed
    monkeypatch.undo()
    assert packing.damage(pack(cfg, bpe, "decoder", "train", **quiet)) is None


def test_cache_is_reused_and_rebuilt_when_an_input_changes(corpus_dir, tmp_path, bpe, wordpiece, monkeypatch):
    cfg = data_cfg(corpus_dir, tmp_path)
    first = pack(cfg, bpe, "decoder", "train", **quiet)
    monkeypatch.setattr(packing, "load_corpus", lambda *a: pytest.fail("a cached split was rebuilt"))
    assert pack(cfg, bpe, "decoder", "train", **quiet) == first
    monkeypatch.undo()
    seen = {first}
    for changed_cfg, tok, split in [
        (data_cfg(corpus_dir, tmp_path, seq_len=16), bpe, "train"),
        (cfg, wordpiece, "train"),
        (cfg, bpe, "validation"),
    ]:
        folder = pack(changed_cfg, tok, "decoder" if tok is bpe else "encoder", split, **quiet)
        assert folder not in seen
        seen.add(folder)
    victim = sorted(corpus_dir.glob("*.txt"))[0]
    text = victim.read_text()
    try:
        victim.write_text(text + "\n# one more line\n")
        os.utime(victim, (1, 1))
        assert pack(cfg, bpe, "decoder", "train", **quiet) not in seen
    finally:
        victim.write_text(text)


def test_a_crash_mid_write_leaves_no_cache_and_junk_is_never_read(corpus_dir, tmp_path, bpe, monkeypatch):
    cfg = data_cfg(corpus_dir, tmp_path)
    monkeypatch.setattr(packing, "_write_shards", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        pack(cfg, bpe, "decoder", "train", **quiet)
    assert list(Path(cfg.cache_dir).iterdir()) == []  # nothing half-written left behind
    monkeypatch.undo()
    fp = packing.fingerprint(cfg, bpe, "train", 0)
    junk = Path(cfg.cache_dir) / f".train-{fp}.tmp-deadbeef"
    junk.mkdir()
    (junk / "index.json").write_text("{}")
    folder = pack(cfg, bpe, "decoder", "train", **quiet)
    assert json.loads((folder / "index.json").read_text())["num_tokens"] > 0


def test_a_stop_signal_while_the_shards_are_written_leaves_no_cache(corpus_dir, tmp_path, bpe, monkeypatch):
    """Before training begins a run's SIGTERM raises where the process is (pretrain.stops): the
    packing it interrupts removes its unfinished folder, as on any error."""
    import signal

    from pretrain.stops import Stopped, already_stopping, stops_raise

    cfg = data_cfg(corpus_dir, tmp_path)
    write = packing._write_shards

    def preempted(*args):
        os.kill(os.getpid(), signal.SIGTERM)  # as torchrun passes on a scheduler's preemption
        return write(*args)

    monkeypatch.setattr(packing, "_write_shards", preempted)
    own = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    try:
        with pytest.raises(Stopped, match="SIGTERM"), stops_raise():
            pack(cfg, bpe, "decoder", "train", **quiet)
        assert list(Path(cfg.cache_dir).iterdir()) == []
        assert signal.getsignal(signal.SIGTERM) is already_stopping  # a second stop cannot cut the exit short
    finally:
        for sig, handler in own.items():  # this test process goes on
            signal.signal(sig, handler)


def test_packing_left_by_a_killed_process_is_removed_and_others_are_left_to_their_owners(corpus_dir, tmp_path, bpe):
    """A SIGKILLed or OOM-killed packing leaves a folder as large as the cache. The next packing on
    the same host removes those whose process is gone; one of a running process, of another host
    (a shared cache), or without an owner file (a release before owners) is not known to be dead."""
    import socket
    import subprocess

    cfg = data_cfg(corpus_dir, tmp_path)
    cache = Path(cfg.cache_dir)
    dead = subprocess.Popen(["true"])
    dead.wait()  # reaped: its id names no process
    host = socket.gethostname()
    owners = {"dead": {"host": host, "pid": dead.pid}, "running": {"host": host, "pid": os.getppid()},
              "elsewhere": {"host": host + "-other", "pid": dead.pid}, "unowned": None}  # fmt: skip
    for name, owner in owners.items():
        folder = cache / f".train-{name}.tmp-0000"
        folder.mkdir(parents=True)
        (folder / "tokens-00000.bin").write_bytes(b"\0" * 100)
        if owner:
            (folder / "owner.json").write_text(json.dumps(owner))
    said = []
    final = pack(cfg, bpe, "decoder", "train", log=said.append)
    left = sorted(p.name for p in cache.glob(".*.tmp-*"))
    assert left == [".train-elsewhere.tmp-0000", ".train-running.tmp-0000", ".train-unowned.tmp-0000"]
    assert said[0] == (f"removed {cache / '.train-dead.tmp-0000'}: filling it was begun by process {dead.pid}, "
                       "which ended before it finished")  # fmt: skip
    assert sorted(p.name for p in final.iterdir()) == ["doc_starts.npy", "index.json", "tokens-00000.bin"]


def test_validation_holds_out_documents_deterministically(corpus_dir, tmp_path):
    cfg = data_cfg(corpus_dir, tmp_path, validation_fraction=0.25)
    train, val = load_corpus(cfg, "train")["text"], load_corpus(cfg, "validation")["text"]
    assert not set(train) & set(val)
    non_empty = sum(bool(p.read_text().strip()) for p in corpus_dir.glob("*.txt"))
    assert len(train) + len(val) == non_empty and 2 <= len(val) <= 16
    assert all(held_out(t, 0.25) for t in val)


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet", "txt-glob"])
def test_local_file_kinds_and_text_column(tmp_path, kind):
    import datasets

    rows = [{"body": f"document number {i} " * 20, "id": i} for i in range(30)]
    folder = tmp_path / "files"
    folder.mkdir()
    if kind == "txt-glob":
        for r in rows:
            (folder / f"{r['id']}.txt").write_text(r["body"])
        source = SourceConfig(files=str(folder / "*.txt"))
    else:
        ds = datasets.Dataset.from_list(rows)
        path = folder / f"data.{kind}"
        {"jsonl": ds.to_json, "csv": ds.to_csv, "parquet": ds.to_parquet}[kind](str(path))
        source = SourceConfig(files=str(path), text_column="body")
    cfg = data_cfg(tmp_path, tmp_path, sources=[source], validation_fraction=0.0)
    texts = load_corpus(cfg, "train")["text"]
    assert sorted(texts) == sorted(r["body"] for r in rows)


def test_sources_mix_by_weight(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(20):
            (tmp_path / name / f"{i}.txt").write_text(f"{name} {i} " * 10)
    sources = [SourceConfig(files=str(tmp_path / "a"), weight=3.0), SourceConfig(files=str(tmp_path / "b"), weight=1.0)]
    cfg = data_cfg(tmp_path, tmp_path, validation_fraction=0.0, sources=sources)
    texts = load_corpus(cfg, "train")["text"]
    from_a = sum(t.startswith("a ") for t in texts[:40])
    assert 24 <= from_a <= 36  # about 3 in 4 of the documents come from the heavier source
    assert {t for t in texts if t.startswith("b ")} == {f"b {i} " * 10 for i in range(20)}


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: SourceConfig(files=str(d / "missing" / "*.txt")), "nothing matches"),
        (lambda d: SourceConfig(files=str(d / "empty")), "has no non-empty documents"),
        (
            lambda d: SourceConfig(files=str(d / "rows.jsonl"), text_column="content"),
            "text_column='content': no such column; the data has ['text_field']",
        ),
    ],
)
def test_bad_sources_are_named(tmp_path, make, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("   \n")
    (tmp_path / "rows.jsonl").write_text('{"text_field": "hello"}\n')
    cfg = data_cfg(tmp_path, tmp_path, sources=[make(tmp_path)])
    with pytest.raises(DataError) as err:
        load_corpus(cfg, "train")
    assert message in str(err.value) and "data.sources[0]" in str(err.value)


def test_corpus_shorter_than_one_sequence_is_refused(tmp_path, bpe):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("tiny")
    cfg = data_cfg(tmp_path / "docs", tmp_path, validation_fraction=0.0, seq_len=64)
    with pytest.raises(
        DataError,
        match=r"the train corpus has \d+ tokens, fewer than one sequence needs \(data.seq_len \+ 1 = 65\)",
    ):
        pack(cfg, bpe, "decoder", "train", **quiet)


@pytest.mark.parametrize("arch", ["decoder", "encoder"])
def test_a_special_tokens_spelling_inside_a_document_is_text(tmp_path, bpe, wordpiece, arch):
    """Code and ML text spell "<|endoftext|>", "<|pad|>" or "[SEP]": read as control tokens they made
    false document ends, padding inside the data and masks the collator never chose."""
    tok = bpe if arch == "decoder" else wordpiece
    specials = sorted(set(tok.all_special_tokens))
    docs = [f'SEP = "{s}"  # document {i} names the {s} token\n' for i, s in enumerate(specials * 3)]
    folder = tmp_path / "docs"
    folder.mkdir()
    for i, d in enumerate(docs):
        (folder / f"{i:02d}.txt").write_text(d)
    cfg = data_cfg(folder, tmp_path, validation_fraction=0.0, seq_len=8)
    packed = PackedTokens(pack(cfg, tok, arch, "train", **quiet))
    stream = packed.tokens(0, packed.index["num_tokens"]).tolist()
    sep = tok.eos_token_id if arch == "decoder" else tok.sep_token_id
    assert stream.count(sep) == len(docs)  # one separator after each document, none inside
    assert set(stream) & set(tok.all_special_ids) == {sep}
    ends = [i for i, t in enumerate(stream) if t == sep]
    pieces = [tok.decode(stream[a + 1 : b]) for a, b in zip([-1, *ends], ends)]  # noqa: B905
    if arch == "decoder":  # byte-level BPE gives the text back as it was; WordPiece spaces its pieces
        assert sorted(pieces) == sorted(docs)
    assert all(any(s in p.replace(" ", "") for s in specials) for p in pieces)  # its spelling survives, as text

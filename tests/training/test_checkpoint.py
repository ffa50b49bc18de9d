"""Checkpoint bookkeeping: a crash mid-save never moves `latest`, retention never drops the newest,
and asking for an incomplete checkpoint names the newest complete one."""

import pytest

from pretrain import checkpoint as ckpt
from pretrain.config import CheckpointConfig, ConfigError, RunConfig


class FakeEngine:
    """Writes a shard like DeepSpeed would; can die half-way (``die``: killed; ``fail``: an error
    such as the disk filling up)."""

    def __init__(self, die=False, fail=None):
        self.die, self.fail = die, fail

    def save_checkpoint(self, root, tag, client_state, save_latest):
        assert save_latest is False and "universal_checkpoint_info" in client_state
        (ckpt.Path(root) / tag).mkdir(parents=True, exist_ok=True)
        (ckpt.Path(root) / tag / "mp_rank_00_model_states.pt").write_text("shard")
        if self.die:
            raise KeyboardInterrupt("killed during save")
        if self.fail is not None:
            raise self.fail


def saver(tmp_path, keep=2):
    return ckpt.Checkpointer(CheckpointConfig(every_steps=1, keep_last=keep), tmp_path, rank=0, world_size=1)


def test_crash_mid_save_leaves_latest_on_the_previous_checkpoint(tmp_path):
    s = saver(tmp_path)
    s.save(FakeEngine(), 10, {}, RunConfig(), tokenizer=None)
    with pytest.raises(KeyboardInterrupt):
        s.save(FakeEngine(die=True), 20, {}, RunConfig(), tokenizer=None)
    root = tmp_path / "checkpoints"
    assert (root / "latest").read_text() == "step_00000010"
    assert not (root / "step_00000020").exists()  # written under a temporary name, never renamed
    assert (root / ".step_00000020.saving").is_dir()
    assert ckpt.newest_complete(root) == root / "step_00000010"
    assert ckpt.resolve(tmp_path) == root / "step_00000010"
    (root / ".step_00000020.saving" / "stale-from-the-crash").write_text("x")
    s.save(FakeEngine(), 20, {}, RunConfig(), tokenizer=None)  # the same tag again: started afresh
    assert not (root / ".step_00000020.saving").exists()
    assert not (root / "step_00000020" / "stale-from-the-crash").exists()
    assert ckpt.resolve(tmp_path) == root / "step_00000020"


def test_a_save_killed_at_a_step_never_saved_again_is_removed_by_the_next_save(tmp_path):
    """A run killed mid-save and resumed with another checkpoint.every_steps never saves that step
    again: its partial save (as large as a checkpoint) went when a newer one completed. One for a
    newer step than the newest complete one may be a save in progress: kept."""
    s = saver(tmp_path)
    s.save(FakeEngine(), 10, {}, RunConfig(), tokenizer=None)
    with pytest.raises(KeyboardInterrupt):
        s.save(FakeEngine(die=True), 20, {}, RunConfig(), tokenizer=None)
    root = tmp_path / "checkpoints"
    (root / ".step_00000040.saving").mkdir()
    s.save(FakeEngine(), 30, {}, RunConfig(), tokenizer=None)
    assert not (root / ".step_00000020.saving").exists()
    assert (root / ".step_00000040.saving").is_dir()
    assert ckpt.complete_tags(root) == ["step_00000010", "step_00000030"]


def test_incomplete_tag_is_refused_naming_the_newest_complete(tmp_path):
    s = saver(tmp_path)
    s.save(FakeEngine(), 10, {}, RunConfig(), tokenizer=None)
    root = tmp_path / "checkpoints"
    (root / "step_00000020").mkdir()  # a folder without complete.json (an older version's dead save)
    with pytest.raises(ConfigError, match="step_00000020 is incomplete .* the newest complete one is .*step_00000010"):
        ckpt.resolve(root / "step_00000020")


def test_checkpoint_files_are_listed_with_sizes_and_checksums_and_verified(tmp_path):
    s = saver(tmp_path, keep=3)
    for step in (10, 20):
        s.save(FakeEngine(), step, {}, RunConfig(), tokenizer=None)
    root = tmp_path / "checkpoints"
    files = ckpt.saved_info(root / "step_00000020")["files"]
    assert ckpt.saved_info(root / "step_00000020")["format"] == ckpt.FORMAT == 1
    assert ckpt.resolve(root) == root / "step_00000020"  # a format this release reads
    assert set(files) == {"mp_rank_00_model_states.pt", "rank_state_00000.json", "config.yaml"}
    assert files["mp_rank_00_model_states.pt"][0] == len("shard")
    assert ckpt.verify(root / "step_00000020") is None
    shard = root / "step_00000020" / "mp_rank_00_model_states.pt"
    shard.write_text("shart")  # same size, other bytes
    assert "does not match its checksum" in ckpt.verify(root / "step_00000020")
    shard.write_text("sh")  # truncated
    assert f"{shard} has 2 bytes, 5 were written" == ckpt.verify(root / "step_00000020")
    warnings = []
    assert ckpt.resolve(tmp_path, warn=warnings.append) == root / "step_00000010"
    assert warnings == [f"warning: skipping checkpoint step_00000020: {shard} has 2 bytes, 5 were written"]
    damaged = "step_00000020 is damaged: .* has 2 bytes.* newest intact checkpoint is .*step_00000010"
    with pytest.raises(ConfigError, match=damaged):
        ckpt.resolve(root / "step_00000020")


@pytest.mark.parametrize("record, why", [
    ('{"format": 1, "step": 20, "wor', "cannot be read (Unterminated string"),  # cut off mid-write by hand
    ("[1, 2]", "a JSON object with whole-number 'step' and 'world_size' expected, it holds [1, 2]"),
    ('{"step": "20", "world_size": 1}', "whole-number 'step' and 'world_size' expected"),
    ('{"step": 20, "world_size": 1, "files": {"config.yaml": 123}}', "its 'files' is not {name: [size, checksum]}"),
])  # fmt: skip
def test_a_checkpoint_whose_record_is_not_one_is_skipped_by_its_file_check_and_by_the_record_check_alone(
        tmp_path, record, why):  # fmt: skip
    """A complete.json that is not JSON, or JSON of another shape, makes its checkpoint damaged:
    skipped with the reason for the intact one before it (a traceback before), and so by the
    launcher's preflight too, which reads records only (files=False) and never a shard."""
    s = saver(tmp_path, keep=3)
    for step in (10, 20):
        s.save(FakeEngine(), step, {}, RunConfig(), tokenizer=None)
    root = tmp_path / "checkpoints"
    (root / "step_00000010" / "mp_rank_00_model_states.pt").write_text("sh")  # only a file check finds this
    (root / "step_00000020" / ckpt.COMPLETE).write_text(record)
    for files, chosen in ((True, None), (False, root / "step_00000010")):
        warnings = []
        if chosen is None:
            with pytest.raises(ConfigError, match="no intact checkpoint in .*every complete one failed its check"):
                ckpt.resolve(tmp_path, warn=warnings.append, files=files)
        else:
            assert ckpt.resolve(tmp_path, warn=warnings.append, files=files) == chosen
        assert why in warnings[0] and warnings[0].startswith("warning: skipping checkpoint step_00000020: "), warnings
        assert len(warnings) == (2 if files else 1)


def test_resuming_from_an_older_tag_moves_the_newer_timeline_aside_and_never_rewrites_a_tag(tmp_path):
    s = saver(tmp_path, keep=5)
    for step in (10, 20):
        s.save(FakeEngine(), step, {"timeline": "a"}, RunConfig(), tokenizer=None)
    root = tmp_path / "checkpoints"
    first_20 = ckpt.saved_info(root / "step_00000020")
    said = []
    aside = ckpt.set_aside_newer(root / "step_00000010", warn=said.append)
    assert aside.name.startswith("superseded-") and (aside / "step_00000020" / ckpt.COMPLETE).is_file()
    assert "step_00000020" in said[0] and str(aside) in said[0]
    assert (root / "latest").read_text() == "step_00000010" and not (root / "step_00000020").exists()
    s.save(FakeEngine(), 20, {"timeline": "b"}, RunConfig(), tokenizer=None)
    assert ckpt.saved_info(root / "step_00000020")["time"] > first_20["time"]
    assert ckpt.saved_info(aside / "step_00000020") == first_20  # the old timeline, untouched
    s.save(FakeEngine(), 20, {}, RunConfig(), tokenizer=None)  # the same tag once more: the old one is kept, named
    replaced = [p.name for p in root.iterdir() if p.name.startswith("replaced-")]
    assert len(replaced) == 1 and replaced[0].endswith("-step_00000020")
    assert ckpt.complete_tags(root) == ["step_00000010", "step_00000020"]


def test_retention_keeps_the_newest_complete_checkpoints(tmp_path):
    s = saver(tmp_path, keep=2)
    for step in (5, 10, 15, 20):
        s.save(FakeEngine(), step, {}, RunConfig(), tokenizer=None)
    root = tmp_path / "checkpoints"
    assert ckpt.complete_tags(root) == ["step_00000015", "step_00000020"]
    assert ckpt.saved_info(root / "step_00000020")["world_size"] == 1
    assert ckpt.saved_config(root / "step_00000020") == RunConfig()


def test_latest_pointing_at_a_lost_checkpoint_falls_back_to_the_newest_complete(tmp_path):
    s = saver(tmp_path, keep=3)
    for step in (5, 10):
        s.save(FakeEngine(), step, {}, RunConfig(), tokenizer=None)
    root = tmp_path / "checkpoints"
    (root / "step_00000010" / ckpt.COMPLETE).unlink()
    assert ckpt.newest_complete(root) == root / "step_00000005"


def test_no_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no complete checkpoint in"):
        ckpt.resolve(tmp_path)


def test_a_resume_loads_as_saved_or_universal_where_deepspeed_can_and_names_what_it_cannot():
    from pretrain.config import DeepSpeedSection

    def route(old, new, old_world=2, new_world=2):
        saved, now = (DeepSpeedSection(zero_stage=stage, precision=precision) for stage, precision in (old, new))
        return ckpt.loads_universal(saved, now, old_world, new_world)

    assert route((2, "bf16"), (2, "bf16")) is False
    assert route((1, "bf16"), (2, "bf16")) is False and route((2, "fp32"), (1, "fp32")) is False  # one layout
    assert route((0, "bf16"), (0, "bf16"), 2, 1) is False  # one file with everything, any world size
    for stage in (1, 2, 3):
        assert route((stage, "bf16"), (stage, "bf16"), 2, 1) is True
        assert route((stage, "fp32"), (stage, "bf16")) is True and route((stage, "bf16"), (stage, "fp32")) is True
    assert route((2, "fp32"), (1, "bf16")) is True
    refused = {
        ((2, "bf16"), (3, "bf16")): "deepspeed.zero_stage changed 2 -> 3: DeepSpeed loads ZeRO-3 checkpoints at ZeRO-3",
        ((3, "fp32"), (1, "fp32")): "deepspeed.zero_stage changed 3 -> 1",
        ((0, "fp32"), (2, "fp32")): "deepspeed.zero_stage changed 0 -> 2: a ZeRO-0 checkpoint holds the whole",
        ((2, "bf16"), (0, "bf16")): "deepspeed.zero_stage changed 2 -> 0: ZeRO-0 loads only ZeRO-0 checkpoints",
        ((0, "fp32"), (0, "bf16")): "deepspeed.precision changed fp32 -> bf16: a ZeRO-0 checkpoint",
        ((2, "fp16"), (2, "bf16")): "deepspeed.precision changed fp16 -> bf16: fp16 keeps a dynamic loss scale",
        ((2, "fp32"), (2, "fp16")): "deepspeed.precision changed fp32 -> fp16",
    }
    for (old, new), message in refused.items():
        with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(")) as e:
            route(old, new)
        assert f"resume with deepspeed.zero_stage={old[0]} deepspeed.precision={old[1]}" in str(e.value)
    with pytest.raises(ConfigError, match="of its own precision, and this one is ZeRO-2"):
        route((2, "bf16"), (0, "bf16"))


def test_a_save_that_fails_removes_its_partial_files_and_a_full_disk_says_so(tmp_path):
    """The partial save would hold on to the space that status.json and the next attempt need."""
    import errno

    s = saver(tmp_path, keep=5)
    s.save(FakeEngine(), 10, {}, RunConfig(), tokenizer=None)
    root = tmp_path / "checkpoints"
    try:  # torch's writer raises RuntimeError, with the OSError as its context
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError:
        try:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 188288 vs 188176")
        except RuntimeError as e:
            full = e
    with pytest.raises(ckpt.CheckpointNotSaved) as caught:
        s.save(FakeEngine(fail=full), 20, {}, RunConfig(), tokenizer=None)
    said = str(caught.value)
    assert said.startswith(f"checkpoint step_00000020 not saved: the disk holding {root} is full")
    assert "the partial save was removed and step_00000010 is intact" in said
    assert "checkpoint.keep_last, now 5" in said and said.endswith("again to resume from step_00000010")
    assert not (root / ".step_00000020.saving").exists() and (root / "latest").read_text() == "step_00000010"
    with pytest.raises(RuntimeError, match="^something else$"):  # any other failure: as it was, files removed
        s.save(FakeEngine(fail=RuntimeError("something else")), 20, {}, RunConfig(), tokenizer=None)
    assert not (root / ".step_00000020.saving").exists()
    assert ckpt.newest_complete(root) == root / "step_00000010"

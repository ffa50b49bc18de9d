"""Checkpoint bookkeeping: a crash mid-save never moves `latest`, retention never drops the newest,
and asking for an incomplete checkpoint names the newest complete one."""

import pytest

from pretrain import checkpoint as ckpt
from pretrain.config import CheckpointConfig, ConfigError, RunConfig


class FakeEngine:
    """Writes a shard like DeepSpeed would; can die half-way."""

    def __init__(self, die=False):
        self.die = die

    def save_checkpoint(self, root, tag, client_state, save_latest):
        assert save_latest is False and "universal_checkpoint_info" in client_state
        (ckpt.Path(root) / tag).mkdir(parents=True, exist_ok=True)
        (ckpt.Path(root) / tag / "mp_rank_00_model_states.pt").write_text("shard")
        if self.die:
            raise KeyboardInterrupt("killed during save")


def saver(tmp_path, keep=2):
    return ckpt.Checkpointer(CheckpointConfig(every_steps=1, keep_last=keep), tmp_path, rank=0, world_size=1)


def test_crash_mid_save_leaves_latest_on_the_previous_checkpoint(tmp_path):
    s = saver(tmp_path)
    s.save(FakeEngine(), 10, {}, RunConfig(), tokenizer=None)
    with pytest.raises(KeyboardInterrupt):
        s.save(FakeEngine(die=True), 20, {}, RunConfig(), tokenizer=None)
    root = tmp_path / "checkpoints"
    assert (root / "latest").read_text() == "step_00000010"
    assert not ckpt.is_complete(root / "step_00000020")
    assert ckpt.newest_complete(root) == root / "step_00000010"
    with pytest.raises(ConfigError, match="step_00000020 is incomplete .* the newest complete one is .*step_00000010"):
        ckpt.resolve(root / "step_00000020")
    (root / "step_00000020" / "stale-from-the-crash").write_text("x")
    s.save(FakeEngine(), 20, {}, RunConfig(), tokenizer=None)  # the same tag again: started afresh
    assert not (root / "step_00000020" / "stale-from-the-crash").exists()
    assert ckpt.resolve(tmp_path) == root / "step_00000020"


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

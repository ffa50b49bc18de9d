"""python -m pretrain.export into a folder that already holds an export, or where it must not write."""

import shutil
from pathlib import Path

import pytest
import torch

from pretrain.config import ConfigError
from pretrain.export import consolidated_state_dict, export
from pretrain.shards import INDEX, SINGLE, ShardedWeights

GOLDEN = Path(__file__).resolve().parent / "golden" / "checkpoint"


def test_exporting_again_with_another_shard_count_leaves_no_earlier_weights(tmp_path):
    """A folder holding an index and a single file (or shards of two counts) is read from the
    wrong files: each write removes what an earlier one left."""
    expected = consolidated_state_dict(GOLDEN)
    for mib, single in ((0.02, False), (5120, True), (0.05, False)):
        written = export(GOLDEN, tmp_path, int(mib * 2**20))
        for folder in (written["consolidated"], written["hf"]):
            files = sorted(p.name for p in folder.glob("model*.safetensors*"))
            if single:
                assert files == [SINGLE], files
            else:
                count = len(files) - 1
                assert INDEX in files and count > 1
                assert all(f == INDEX or f.endswith(f"-of-{count:05d}.safetensors") for f in files), files
        got = dict(ShardedWeights(written["consolidated"]).items())
        assert set(got) == set(expected) - {"head.weight"}  # tied: stored once
        for name, tensor in got.items():
            torch.testing.assert_close(tensor, expected[name], atol=0, rtol=0, msg=name)


def test_no_export_into_a_checkpoint_nor_of_a_classifier(tmp_path):
    run = tmp_path / "run" / "checkpoints" / "step_00000010"
    shutil.copytree(GOLDEN, run)
    for inside in (run / "export", run.parent / "export"):
        with pytest.raises(ConfigError, match=r"where an export would be taken for \(and pruned as\) part of a"):
            export(run, inside)
        assert not inside.exists()
    (run / "labels.json").write_text('["a", "b"]')
    with pytest.raises(ConfigError, match=r"is a classifier's checkpoint: its head .* has no transformers class"):
        export(run, tmp_path / "out")
    assert not (tmp_path / "out").exists()

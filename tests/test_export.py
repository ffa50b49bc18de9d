"""python -m pretrain.export into a folder that already holds an export, or where it must not write."""

import dataclasses
import re
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
    (run / "labels.json").write_text('["a", "b"]')  # a classifier's, written before task.head: a linear head
    with pytest.raises(ConfigError, match=r"is a classifier's checkpoint that no transformers class computes: it "
                       r"was trained with task.head=linear \(a linear layer with a bias\), which "
                       r"GPT2ForSequenceClassification does not have; fine-tune with task.head=hf"):  # fmt: skip
        export(run, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_classifier_exports_only_as_the_class_that_computes_it():
    from pretrain.checkpoint import saved_config
    from pretrain.export import check_sequence_head

    gpt2 = saved_config(GOLDEN).model
    check_sequence_head(GOLDEN, gpt2, {"kind": "classify", "head": "hf", "pooling": "auto"})
    check_sequence_head(GOLDEN, gpt2, {"kind": "classify", "head": "hf", "pooling": "last"})
    for changes, task, why in (
        ({}, {"pooling": "mean"}, "it pools the mean token(s), and GPT2ForSequenceClassification reads the last; "
                                  "fine-tune with task.pooling=auto"),
        ({"position": "alibi"}, {}, "no HF gpt2 model has this architecture: {'position': 'alibi'}"),
        ({"arch": "encoder-decoder"}, {}, "an encoder-decoder's classifier reads its encoder alone"),
    ):  # fmt: skip
        model = dataclasses.replace(gpt2, **changes)
        with pytest.raises(ConfigError, match=re.escape(why)):
            check_sequence_head(GOLDEN, model, {"kind": "classify", "head": "hf", **task})

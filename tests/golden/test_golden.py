"""Training did not change by accident: the debug model's first 30 losses on a fixed slice of the
built-in corpus match the committed curve exactly (CPU, one thread, deterministic), and the
committed step-10 checkpoint of this release still loads and continues with the recorded losses.
When a change is meant to alter training, regenerate both: `python -m tests.golden.regenerate`."""

import json
import shutil

import pytest

from .regenerate import HERE, SAVED, STEPS, train

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
GOLDEN = {int(k): v for k, v in json.loads((HERE / "losses.json").read_text()).items()}


def test_first_30_losses_match_the_golden_curve_exactly(tmp_path):
    got = train(tmp_path, HERE / "checkpoint" / "tokenizer")
    assert sorted(got) == list(range(1, STEPS + 1))
    mismatched = {s: (got[s], GOLDEN[s]) for s in GOLDEN if got[s] != GOLDEN[s]}
    assert not mismatched, f"training changed (regenerate on purpose if meant): {mismatched}"


def test_the_committed_checkpoint_of_this_release_loads_and_continues_the_curve(tmp_path):
    resumed = tmp_path / "runs" / "golden" / "checkpoints" / f"step_{SAVED:08d}"
    shutil.copytree(HERE / "checkpoint", resumed)
    got = train(tmp_path, HERE / "checkpoint" / "tokenizer", f"train.resume={resumed}")
    assert sorted(got) == list(range(SAVED + 1, STEPS + 1))
    for step in got:
        assert got[step] == GOLDEN[step], f"step {step}: the checkpoint no longer continues as it did"

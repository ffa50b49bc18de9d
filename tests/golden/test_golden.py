"""Training did not change by accident: the debug model's first 30 losses on a fixed slice of the
built-in corpus match the committed curve exactly (CPU, one thread, deterministic), and the
committed step-10 checkpoint of this release still loads and continues with the recorded losses.
When a change is meant to alter training, regenerate both: `python -m tests.golden.regenerate`."""

import json
import shutil

import pytest

from pretrain.status import metric_records

from .regenerate import HERE, SAVED, STEPS, train

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
GOLDEN = {int(k): v for k, v in json.loads((HERE / "losses.json").read_text()).items()}
# `python -m pretrain` with torch.utils.checkpoint.checkpoint counted (each call: one block whose
# activations are recomputed in backward), the count written to the file named by $CHECKPOINT_CALLS.
COUNTING = """import atexit, os, runpy, torch.utils.checkpoint as tc
calls, plain = [0], tc.checkpoint
def counted(*args, **kwargs):
    calls[0] += 1
    return plain(*args, **kwargs)
tc.checkpoint = counted
atexit.register(lambda: open(os.environ["CHECKPOINT_CALLS"], "w").write(str(calls[0])))
runpy.run_module("pretrain", run_name="__main__")
"""


def checkpointed_blocks(tmp_path, monkeypatch, *extra) -> tuple[dict, int]:
    monkeypatch.setenv("CHECKPOINT_CALLS", str(tmp_path / "calls"))
    got = train(tmp_path, HERE / "checkpoint" / "tokenizer", *extra, program=("-c", COUNTING))
    return got, int((tmp_path / "calls").read_text())


def test_first_30_losses_match_the_golden_curve_exactly(tmp_path, monkeypatch):
    got, recomputed = checkpointed_blocks(tmp_path, monkeypatch)
    assert recomputed == 0  # activation checkpointing is off by default
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


def test_a_checkpoint_of_an_earlier_release_still_loads_and_continues_the_curve(tmp_path):
    """A checkpoint written by an earlier release (2026-11-27: before complete.json carried a format
    number, with a config of fewer fields) resumes under this one. Its losses stay within rounding of
    the golden curve: the loss's arithmetic has changed since (last-bit differences), not training."""
    earlier = HERE / "previous" / "step-10-2026-11-27"
    assert "format" not in json.loads((earlier / "complete.json").read_text())
    resumed = tmp_path / "runs" / "golden" / "checkpoints" / f"step_{SAVED:08d}"
    shutil.copytree(earlier, resumed)
    got = train(tmp_path, earlier / "tokenizer", f"train.resume={resumed}")
    assert sorted(got) == list(range(SAVED + 1, STEPS + 1))
    for step in got:
        assert got[step] == pytest.approx(GOLDEN[step], rel=1e-5), f"step {step}"


def test_activation_checkpointing_recomputes_the_same_curve_and_the_schedule_has_its_shape(tmp_path, monkeypatch):
    """Activation checkpointing inside the DeepSpeed engine changes memory, not numbers: every block
    of every training forward is checkpointed (2 layers x 30 steps), and the curve is the golden one
    exactly. The same run's learning rates: linear warmup to the peak over 2 steps, then a cosine
    decay that ends at min_lr_ratio (0.1) of it at max_steps."""
    got, recomputed = checkpointed_blocks(tmp_path, monkeypatch, "train.activation_checkpointing=true")
    assert recomputed == 2 * STEPS
    assert got == GOLDEN
    lr = [r["lr"] for r in metric_records(tmp_path / "runs" / "golden", "train")]
    peak = lr.index(max(lr))
    assert max(lr) == pytest.approx(3e-3) and 0 < peak <= 2 and lr[0] < max(lr)
    assert all(a >= b for a, b in zip(lr[peak:], lr[peak + 1 :], strict=False))  # never rises again
    assert lr[-1] == pytest.approx(3e-4, rel=1e-6)
    middle = lr[peak + (len(lr) - peak) // 2]  # half-way through a cosine: half-way between peak and floor
    assert middle == pytest.approx((3e-3 + 3e-4) / 2, rel=0.1)


def test_document_masking_reaches_the_model(tmp_path):
    """With data.document_mask, tokens stop attending across the documents packed into a sequence:
    the sequences that span two documents give other losses than the golden curve, all finite."""
    got = train(tmp_path, HERE / "checkpoint" / "tokenizer", "data.document_mask=true")
    assert sorted(got) == sorted(GOLDEN) and all(v == v and abs(v) < 100 for v in got.values())
    assert any(got[s] != GOLDEN[s] for s in GOLDEN)

"""Training did not change by accident: the debug model's first 30 losses on a fixed slice of the
built-in corpus match the committed curve (CPU, one thread, deterministic), and the committed step-10
checkpoint of this release still loads and continues with the recorded losses.

"Match" means within ROUNDING, not bit for bit: the same run on another CPU (AVX2 or AVX-512, Intel or
AMD, each with its own kernels) differs in the last bits of its losses. Bit-exactness is a property
of one machine, and is tested on one machine: here (activation checkpointing against the plain run)
and in tests/training/test_resume.py (resume against the uninterrupted run).
When a change is meant to alter training, regenerate both: `python -m tests.golden.regenerate`."""

import json
import shutil

import pytest

from pretrain.status import metric_records

from .regenerate import HERE, SAVED, STEPS, train

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
GOLDEN = {int(k): v for k, v in json.loads((HERE / "losses.json").read_text()).items()}
ROUNDING = 1e-5
"""Relative difference allowed between this machine's losses and the recorded ones. Seen between the
CPU that recorded the curve and an AVX-512 AMD EPYC of the same CI pool: 1.7e-7 by step 30. A
change to training moves the curve past it (document masking does, test below)."""


def off_the_curve(got: dict) -> dict:
    """The steps whose loss is not the recorded one within ROUNDING: step -> (got, recorded)."""
    return {s: (got[s], GOLDEN[s]) for s in got if got[s] != pytest.approx(GOLDEN[s], rel=ROUNDING)}
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


def test_the_golden_curve_and_activation_checkpointing_changes_nothing_of_it(tmp_path, monkeypatch):
    """The first 30 losses are the recorded ones. Activation checkpointing inside the DeepSpeed engine
    changes memory, not numbers: every block of every training forward is checkpointed (2 layers x
    30 steps), and the curve is the plain run's on this machine bit for bit. The same run's learning
    rates: linear warmup to the peak over 2 steps, then a cosine decay that ends at min_lr_ratio (0.1)
    of it at max_steps."""
    plain, recomputed = checkpointed_blocks(tmp_path / "plain", monkeypatch)
    assert recomputed == 0  # activation checkpointing is off by default
    assert sorted(plain) == list(range(1, STEPS + 1))
    assert not off_the_curve(plain), f"training changed (regenerate on purpose if meant): {off_the_curve(plain)}"

    work = tmp_path / "checkpointed"
    got, recomputed = checkpointed_blocks(work, monkeypatch, "train.activation_checkpointing=true")
    assert recomputed == 2 * STEPS
    assert got == plain
    lr = [r["lr"] for r in metric_records(work / "runs" / "golden", "train")]
    peak = lr.index(max(lr))
    assert max(lr) == pytest.approx(3e-3) and 0 < peak <= 2 and lr[0] < max(lr)
    assert all(a >= b for a, b in zip(lr[peak:], lr[peak + 1 :], strict=False))  # never rises again
    assert lr[-1] == pytest.approx(3e-4, rel=1e-6)
    middle = lr[peak + (len(lr) - peak) // 2]  # half-way through a cosine: half-way between peak and floor
    assert middle == pytest.approx((3e-3 + 3e-4) / 2, rel=0.1)


def test_the_committed_checkpoint_of_this_release_loads_and_continues_the_curve(tmp_path):
    resumed = tmp_path / "runs" / "golden" / "checkpoints" / f"step_{SAVED:08d}"
    shutil.copytree(HERE / "checkpoint", resumed)
    got = train(tmp_path, HERE / "checkpoint" / "tokenizer", f"train.resume={resumed}")
    assert sorted(got) == list(range(SAVED + 1, STEPS + 1))
    assert not off_the_curve(got), f"the checkpoint no longer continues as it did: {off_the_curve(got)}"


def test_a_checkpoint_of_an_earlier_release_still_loads_and_continues_the_curve(tmp_path):
    """A checkpoint written by an earlier release (2026-11-27: before complete.json carried a format
    number, with a config of fewer fields) resumes under this one, on the curve."""
    earlier = HERE / "previous" / "step-10-2026-11-27"
    assert "format" not in json.loads((earlier / "complete.json").read_text())
    resumed = tmp_path / "runs" / "golden" / "checkpoints" / f"step_{SAVED:08d}"
    shutil.copytree(earlier, resumed)
    got = train(tmp_path, earlier / "tokenizer", f"train.resume={resumed}")
    assert sorted(got) == list(range(SAVED + 1, STEPS + 1))
    assert not off_the_curve(got), off_the_curve(got)


def test_document_masking_reaches_the_model(tmp_path):
    """With data.document_mask, tokens stop attending across the documents packed into a sequence:
    the sequences that span two documents give other losses than the golden curve, all finite."""
    got = train(tmp_path, HERE / "checkpoint" / "tokenizer", "data.document_mask=true")
    assert sorted(got) == sorted(GOLDEN) and all(v == v and abs(v) < 100 for v in got.values())
    assert off_the_curve(got)

"""Two processes at ZeRO stages 0-3 train exactly like one process with the same global batch."""

import pytest

from .conftest import launch, losses

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_zero_stages_on_two_processes_match_one_process(make_config, tmp_path):
    single = make_config(name="single", train={"micro_batch_size": 8})
    launch(1, single)
    reference = losses(tmp_path / "runs" / "single")
    assert sorted(reference) == list(range(1, 11))
    assert reference[10] < reference[1] - 0.3  # it learns: the comparison is not between flat lines
    runs = {}
    for stage in (0, 1, 2, 3):
        cfg = make_config(name=f"zero{stage}", train={"micro_batch_size": 4}, deepspeed={"zero_stage": stage})
        out = launch(2, cfg).stdout
        # ZeRO-3 builds the model partitioned (deepspeed.zero.Init), the others whole
        assert ("built the model partitioned" in out) == (stage == 3), out[-2000:]
        runs[stage] = got = losses(tmp_path / "runs" / f"zero{stage}")
        for step, expected in reference.items():
            assert got[step] == pytest.approx(expected, rel=1e-4), f"ZeRO-{stage} step {step}"
    # built partitioned, the same initial weights as built whole: the first loss agrees to rounding
    assert runs[3][1] == pytest.approx(runs[2][1], rel=1e-6)


def test_cpu_offload_trains_like_no_offload(make_config, tmp_path):
    """Optimizer states (ZeRO-2, ZeRO-3) and parameters (ZeRO-3) kept on the CPU: the same losses."""
    base = make_config(name="base", train={"micro_batch_size": 4}, deepspeed={"zero_stage": 2})
    launch(2, base)
    reference = losses(tmp_path / "runs" / "base")
    for name, ds in (("off2", {"zero_stage": 2, "offload_optimizer": True}),
                     ("off3", {"zero_stage": 3, "offload_optimizer": True, "offload_params": True})):  # fmt: skip
        launch(2, make_config(name=name, train={"micro_batch_size": 4}, deepspeed=ds))
        got = losses(tmp_path / "runs" / name)
        assert sorted(got) == sorted(reference)
        for step, expected in reference.items():
            assert got[step] == pytest.approx(expected, rel=1e-4), f"{name} step {step}"


def test_linformer_built_partitioned_trains_like_built_whole(make_config, tmp_path):
    """Linformer's projection is a weight read along the sequence, not through a Linear's forward:
    ZeRO-3 must gather it all the same. (Two processes both times: a masked LM's loss is a mean over
    each rank's masked tokens. Performer's features are no weight: nothing for ZeRO to do.)"""
    model = {"linear_attention": "linformer", "linear_attention_dim": 16}
    runs = {}
    for stage in (2, 3):
        cfg = make_config("bert", f"zero{stage}", model=model, train={"max_steps": 4, "micro_batch_size": 4},
                          deepspeed={"zero_stage": stage})  # fmt: skip
        out = launch(2, cfg).stdout
        assert ("built the model partitioned" in out) == (stage == 3), out[-2000:]
        runs[stage] = losses(tmp_path / "runs" / f"zero{stage}")
    assert sorted(runs[2]) == list(range(1, 5)) and runs[2][4] < runs[2][1]
    assert runs[3][1] == pytest.approx(runs[2][1], rel=1e-6)  # the same initial weights
    assert runs[3] == pytest.approx(runs[2], rel=1e-4)

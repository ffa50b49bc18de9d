"""Two processes at ZeRO stages 0-3 train exactly like one process with the same global batch, and
their checkpoints resume on one process (DeepSpeed's universal form) on the same curve."""

import pytest

from .conftest import launch, losses, write_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, corpus, tokenizers, data_cache) -> dict[int, float]:
    """The losses of one process at micro-batch 8 (made once per test process)."""
    folder = tmp_path_factory.mktemp("one_process")
    launch(1, write_config(folder, corpus, tokenizers, data_cache, "llama", "single", train={"micro_batch_size": 8}))
    reference = losses(folder / "runs" / "single")
    assert sorted(reference) == list(range(1, 11))
    assert reference[10] < reference[1] - 0.3  # it learns: the comparison is not between flat lines
    return reference


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_stage_on_two_processes_matches_one_process_and_resumes_on_one(make_config, tmp_path, one_process,
                                                                           stage):  # fmt: skip
    """ZeRO-1-3 resume through DeepSpeed's universal checkpoint; ZeRO-0's single file loads as it is."""
    two = make_config("llama", f"two{stage}", deepspeed={"zero_stage": stage}, checkpoint={"every_steps": 6})
    out = launch(2, two).stdout
    # ZeRO-3 builds the model partitioned (deepspeed.zero.Init), the others whole
    assert ("built the model partitioned" in out) == (stage == 3), out[-2000:]
    reference = losses(tmp_path / "runs" / f"two{stage}")
    for step, expected in one_process.items():
        assert reference[step] == pytest.approx(expected, rel=1e-4), f"ZeRO-{stage} step {step}"
    # built partitioned or whole, on one process or two: the same initial weights, so the first loss agrees to rounding
    assert reference[1] == pytest.approx(one_process[1], rel=1e-6)

    saved = tmp_path / "runs" / f"two{stage}" / "checkpoints" / "step_00000006"
    one = make_config("llama", f"one{stage}", deepspeed={"zero_stage": stage},
                      train={"micro_batch_size": 8, "resume": str(saved)})  # fmt: skip
    out = launch(1, one).stdout
    assert "saved by 2 process(es), now 1" in out
    assert (saved.parent / "step_00000006_universal").is_dir() == (stage > 0)
    got = losses(tmp_path / "runs" / f"one{stage}")
    assert sorted(got) == [7, 8, 9, 10]
    for step in got:
        # 1e-5, tighter than the 1e-4 asked for: DeepSpeed's ZeRO-3 loader giving norms and embeddings
        # weight decay (see engine.repair_loaded_optimizer) shows as 4e-5 by step 8; both stages match to ~5e-7
        assert got[step] == pytest.approx(reference[step], abs=1e-5), f"step {step}"


def test_cpu_offload_trains_like_no_offload(make_config, tmp_path, one_process):
    """Optimizer states (ZeRO-2, ZeRO-3) and parameters (ZeRO-3) kept on the CPU: the same losses."""
    for name, ds in (("off2", {"zero_stage": 2, "offload_optimizer": True}),
                     ("off3", {"zero_stage": 3, "offload_optimizer": True, "offload_params": True})):  # fmt: skip
        launch(2, make_config("llama", name, deepspeed=ds))
        got = losses(tmp_path / "runs" / name)
        assert sorted(got) == sorted(one_process)
        for step, expected in one_process.items():
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

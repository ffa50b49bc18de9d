"""The monitor's sinks: a dashboard that fails never stops training."""

import json
import shutil
import threading
import warnings

import torch


def test_a_tensorboard_folder_removed_mid_run_switches_it_off_with_one_warning_and_training_goes_on(tmp_path,
                                                                                                   monkeypatch):
    """TensorBoard's writer thread re-raises a failed write (its folder removed, a full disk) at the
    next flush: the run ended in a 60-line traceback from the monitor, losing the model in memory."""
    from pretrain.config import LogConfig
    from pretrain.monitor import Monitor

    monitor = Monitor(LogConfig(progress_bar=False, wandb="off"), tmp_path / "run", 0, 1, lambda f: 0.0, {}, 10)
    monitor.step(1, {"loss": 2.0, "lr": 1e-3}, tokens=64)
    shutil.rmtree(tmp_path / "run" / "tensorboard")
    died = []
    monkeypatch.setattr(threading, "excepthook", died.append)  # TensorBoard's writer thread dies of it: expected
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(2, 5):
            monitor.step(step, {"loss": 2.0 - step / 10, "lr": 1e-3}, tokens=64)
            monitor.attention(step, {"entropy": torch.ones(2, 2)})
        monitor.eval(4, {"val_loss": 1.5})
        lines = monitor.close()
    said = [str(w.message) for w in caught if "TensorBoard" in str(w.message)]
    assert len(said) == 1 and said[0].startswith("TensorBoard switched off (") and "training goes on" in said[0]
    assert not any("TensorBoard:" in line for line in lines)  # the closing lines do not point at it
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4]

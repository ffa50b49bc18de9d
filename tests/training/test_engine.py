"""The DeepSpeed engine as pretrain.engine.initialize sets it up, in a process of its own (the
process group is global): one data-parallel process at ZeRO-0 skips the gradient all-reduce, and
trains to the same bits as with it, in fp32 and in bf16, with gradient accumulation and clipping."""

import subprocess
import sys

import pytest

from .conftest import ENV, ROOT

SCRIPT = r"""
import copy, torch
from pretrain.config import DeepSpeedSection, TrainConfig
from pretrain.engine import deepspeed_config, init_distributed, initialize, param_groups
from pretrain.model import ModelConfig, Transformer
from pretrain.trainer import lm_loss

init_distributed(120)
torch.manual_seed(0)
model = Transformer(ModelConfig(vocab_size=97, d_model=32, num_layers=2, num_heads=4, max_seq_len=32))
ids = torch.randint(0, 97, (4, 16))
batch = {"input_ids": ids, "labels": ids.roll(-1, dims=1)}
train = TrainConfig(lr=1e-2, warmup_steps=0, max_steps=100, micro_batch_size=2, grad_clip=0.5)

def trained(stage, precision="fp32", allreduce=None):
    m = copy.deepcopy(model)
    ds = DeepSpeedSection(zero_stage=stage, precision=precision)
    engine = initialize(m, deepspeed_config(ds, train, 1, 2), train, param_groups(m, 0.1, 1e-2))
    skips = not engine.enable_backward_allreduce
    if allreduce is not None:
        engine.enable_backward_allreduce = allreduce
    for _ in range(3):
        for half in (slice(0, 2), slice(2, 4)):  # two micro-batches a step: accumulation stays exact
            loss = lm_loss(engine, {k: v[half] for k, v in batch.items()})[0]
            engine.backward(loss)
            engine.step()
    return skips, [p.detach().float().clone() for p in m.parameters()]

for precision in ("fp32", "bf16"):  # bf16: DeepSpeed's BF16_Optimizer keeps fp32 master weights
    skips, fast = trained(0, precision)
    _, reduced = trained(0, precision, allreduce=True)
    print(precision, "zero0 skips:", skips)
    print(precision, "same bits:", all(torch.equal(a, b) for a, b in zip(fast, reduced)))
    print(precision, "moved:", not all(torch.equal(a, b.float()) for a, b in zip(fast, model.parameters())))
print("zero1 skips:", trained(1)[0])
"""


@pytest.mark.slow
def test_one_zero0_process_skips_the_all_reduce_and_trains_to_the_same_bits():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    want = [f"{p} {what}: True" for p in ("fp32", "bf16") for what in ("zero0 skips", "same bits", "moved")]
    assert lines[-7:] == [*want, "zero1 skips: False"], proc.stdout

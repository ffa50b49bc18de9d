"""On a GPU: our DeepSpeed engine (NCCL, one process) trains in bf16 with the flash kernel and
torch's fused AdamW, and the loss falls on a batch it sees again and again."""

import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("stage", [0, 2])
def test_deepspeed_bf16_step_on_gpu_lowers_the_loss(stage):
    from pretrain.config import DeepSpeedSection, TrainConfig
    from pretrain.engine import deepspeed_config, init_distributed, initialize, param_groups
    from pretrain.model import ModelConfig, Transformer
    from pretrain.trainer import lm_loss

    init_distributed(120)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=512, d_model=128, num_layers=2, num_heads=4, max_seq_len=128,
                                    attention="flash", position="rope", norm="rmsnorm", mlp="swiglu"))  # fmt: skip
    train = TrainConfig(lr=3e-3, warmup_steps=0, max_steps=100, micro_batch_size=4)
    ds = DeepSpeedSection(zero_stage=stage, precision="bf16")
    config = deepspeed_config(ds, train, 1, 1)
    assert config["optimizer"]["params"]["fused"] is True
    engine = initialize(model, config, train, param_groups(model, 0.1, 3e-3))
    ids = torch.randint(0, 512, (4, 129), device="cuda")
    batch = {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}
    losses = []
    for _ in range(20):
        loss = lm_loss(engine, batch)[0]
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    assert next(engine.parameters()).dtype == torch.bfloat16
    assert losses[-1] < 0.5 * losses[0], losses

"""torchrun -m tests.training.nonfinite_worker CONFIG [overrides]: pretraining with NaN losses
injected on rank 1 at the training micro-batches listed in NAN_CALLS (1-based). Before each
forward it appends a checksum of the weights to CHECKSUMS/rank<N>.jsonl, so the test can see that a
skipped batch changed nothing."""

import json
import os
import sys

import torch

import pretrain.trainer as trainer

real_loss = trainer.lm_loss
calls = 0
bad = {int(x) for x in os.environ["NAN_CALLS"].split(",")}
rank = int(os.environ.get("RANK", "0"))


def loss_with_nans(engine, batch):
    global calls
    if not engine.training:
        return real_loss(engine, batch)
    calls += 1
    checksum = sum(p.detach().double().sum().item() for p in engine.module.parameters())
    with open(os.path.join(os.environ["CHECKSUMS"], f"rank{rank}.jsonl"), "a") as f:
        f.write(json.dumps({"call": calls, "checksum": checksum}) + "\n")
    loss, extra = real_loss(engine, batch)
    if rank == 1 and calls in bad:
        loss = loss * torch.tensor(float("nan"))
    return loss, extra


trainer.lm_loss = loss_with_nans

from pretrain.__main__ import main  # noqa: E402

main(sys.argv[1:])

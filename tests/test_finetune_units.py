"""Fine-tuning pieces that need no processes: heads, parameter groups, metrics."""

import pytest
import torch

from finetune.tasks import Classifier, classification_metrics
from pretrain.engine import param_groups
from pretrain.model import ModelConfig, Transformer


def body():
    return Transformer(ModelConfig(vocab_size=50, d_model=16, num_layers=3, num_heads=2, max_seq_len=32))


def test_frozen_body_trains_the_head_only():
    model = Classifier(body(), num_labels=3, pooling="last", dropout=0.0)
    for p in model.body.parameters():
        p.requires_grad_(False)
    groups = param_groups(model, 0.1, 1e-3)
    trained = {id(p) for g in groups for p in g["params"]}
    assert trained == {id(model.classifier.weight), id(model.classifier.bias)}


def test_layer_wise_learning_rates():
    model = Classifier(body(), num_labels=3, pooling="last", dropout=0.0)
    names = {id(p): n for n, p in model.named_parameters()}

    def scale(name):  # what FinetuneTask.lr_scale computes with layer_lr_decay=0.5 over 3 layers
        name = name.removeprefix("body.")
        if name.startswith("layers."):
            return 0.5 ** (3 - int(name.split(".")[1]))
        return 0.5**4 if name.startswith("embed.") else 1.0

    groups = param_groups(model, 0.1, 1e-3, scale)
    lr_of = {names[id(p)]: (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert lr_of["body.layers.2.mlp.fc.weight"] == (pytest.approx(5e-4), 0.1)
    assert lr_of["body.layers.0.mlp.fc.weight"] == (pytest.approx(1.25e-4), 0.1)
    assert lr_of["body.embed.tokens.weight"] == (pytest.approx(6.25e-5), 0.0)  # embeddings never decay
    assert lr_of["classifier.weight"] == (pytest.approx(1e-3), 0.1)
    assert lr_of["body.layers.1.attn_norm.weight"][1] == 0.0
    assert len(lr_of) == sum(p.numel() > 0 for p in model.parameters())


def test_pooling_last_reads_the_last_real_token():
    model = Classifier(body(), num_labels=2, pooling="last", dropout=0.0).eval()
    ids = torch.randint(1, 50, (1, 5))
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], 1)
    mask = torch.tensor([[1] * 5 + [0] * 3])
    torch.testing.assert_close(model(padded, attention_mask=mask), model(ids), atol=1e-5, rtol=0)


def test_classification_metrics_from_a_confusion_matrix():
    confusion = torch.tensor([[5.0, 1.0, 0.0], [2.0, 2.0, 0.0], [0.0, 0.0, 0.0]])  # third label never occurs
    m = classification_metrics({"confusion": confusion, "loss_sum": 3.0, "count": 10})
    assert m["val_accuracy"] == pytest.approx(0.7)
    f1_a, f1_b = 2 * 5 / (2 * 5 + 2 + 1), 2 * 2 / (2 * 2 + 1 + 2)
    assert m["val_macro_f1"] == pytest.approx((f1_a + f1_b) / 2)
    assert m["val_loss"] == pytest.approx(0.3) and m["val_confusion"][1] == [2, 2, 0]

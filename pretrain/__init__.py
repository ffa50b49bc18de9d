"""Pretraining: config, model, data, DeepSpeed engine, trainer, checkpoints, monitoring."""

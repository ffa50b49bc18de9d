"""Launching pretrain/finetune jobs locally and on clusters; imports neither torch nor DeepSpeed."""

"""Fine-tuning from pretraining checkpoints (classification, generation)."""

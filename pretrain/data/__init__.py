"""Data: sources (HF datasets), tokenizer (HF tokenizers), packed token shards, resumable batches."""

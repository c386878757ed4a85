"""Megatron-Core torch_dist checkpoints <-> Hugging Face Llama / Qwen3 directories, with a logit parity check."""

"""Pretraining on Megatron-Core: model provider, train loop, checkpoints, signals, metrics."""

"""megatron-srp: Safety Reflection Pretraining on Megatron-Core."""

__version__ = "0.1.0"

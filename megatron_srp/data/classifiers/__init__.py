"""Model-backed classifier and rewriter backends (imported on demand by ``megatron_srp.data.classify``)."""

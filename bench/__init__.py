"""GPU benchmark suite: the server beside its peer (transformers) and the hardware limit."""

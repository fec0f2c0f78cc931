"""python -m bench.l2_prefetch runs on the GPU machine only; its prefetch schedules are checked here:
each names the weights of the matmul that comes next, never one already read."""

from __future__ import annotations

from bench import shapes
from bench.gemv import Stack
from bench.l2_prefetch import schedules

SMALL = dict(shapes.SHAPES["1.5b"]) | dict(
    hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, vocab_size=100
)


def test_each_schedule_prefetches_the_matmul_that_comes_next() -> None:
    stack = Stack.random(SMALL, rows=1, num_layers=3, device="cpu")
    layers = stack.layers
    for name, schedule in schedules(stack).items():
        for i in range(3):
            assert schedule["qkv"](i) == [layers[i].o], name  # read after qkv_proj and attention
            following = schedule["down"](i)
            # the next layer's qkv_proj, read right after this down_proj; none after the last layer
            assert following == ([layers[i + 1].qkv] if i < 2 else []), name
            if "gate_up" in schedule:
                (down,) = schedule["gate_up"](i)
                assert down.data_ptr() == layers[i].down.data_ptr(), name  # all of it, or its first half
                assert down.numel() in (layers[i].down.numel(), layers[i].down.numel() // 2), name

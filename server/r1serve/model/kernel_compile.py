"""Triton kernels compiled before their first launch, several at a time.

A GPU server's start-up launches every kernel variant it will use (the 1.5B shape: 13, one at a
time 7.2 s of an H200 host's CPU), and with an empty kernel cache each first launch compiles.
Triton's compiler releases the GIL for most of its work: the same 13 compiled in 2.5 s on four
threads (docs/PERFORMANCE.md, session 7). Inside `precompiling()`, `launch` does not launch: it
queues the kernel's compilation for that launch's arguments (Triton's AsyncCompileMode), and
leaving the block waits for all of them, so forward passes run inside it compile what the same
passes outside will launch. Nothing runs on the GPU for those kernels: the passes' outputs are
garbage, to be dropped.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

try:
    import triton
except ImportError:  # CPU-only installs
    triton = None

# The pods' CPU limit in base/ (prod gives 8; each tensor-parallel rank runs its own pool); on an
# H200 host 8 threads took 2.1 s against 4's 2.5 s.
COMPILE_THREADS = 4

_compile_only: contextvars.ContextVar[bool] = contextvars.ContextVar("compile_only", default=False)


def available() -> bool:
    """Whether this Triton can compile in the background (AsyncCompileMode: in 3.6, the GPU machine's)."""
    return getattr(triton, "AsyncCompileMode", None) is not None


def launch(kernel: Any, grid: tuple[int, ...], *args: Any, **kwargs: Any) -> None:
    """`kernel[grid](*args, **kwargs)`; inside `precompiling()`, only its compilation, queued."""
    if _compile_only.get():
        kernel.warmup(*args, grid=grid, **kwargs)
    else:
        kernel[grid](*args, **kwargs)


@contextlib.contextmanager
def precompiling(threads: int = COMPILE_THREADS) -> Iterator[None]:
    """Launches inside only compile, on `threads` threads; returns once every one has compiled
    (raising the first compile error). Without AsyncCompileMode, launches inside run as usual."""
    if not available():
        yield
        return
    with (
        ThreadPoolExecutor(threads, thread_name_prefix="triton-compile") as pool,
        triton.AsyncCompileMode(pool),
    ):
        token = _compile_only.set(True)
        try:
            yield
        finally:
            _compile_only.reset(token)

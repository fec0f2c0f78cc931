"""Where Triton keeps compiled kernels (TRITON_CACHE_DIR), checked before anything compiles.

The GPU pods put the cache on a volume shared by every pod (components/gpu), so that a new pod
starts with the kernels earlier pods compiled. A cache Triton cannot write to fails the start-up's
first compilation, and with it the pod: a volume that is full, mounted read-only, or not writable by
the pod's user (some ReadWriteMany drivers ignore fsGroup) would stop every new pod. Checked once in
the server's first process, before the engine and the API processes start (they inherit the
environment): such a cache is replaced by a fresh directory under the temporary one, with a warning.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import MutableMapping
from pathlib import Path

log = logging.getLogger(__name__)

# a release's kernels for one model shape took 5-6 MiB (H200, 1.5B shape)
MIN_FREE_BYTES = 64 * 2**20


def cache_problem(path: Path, min_free: int = MIN_FREE_BYTES) -> str | None:
    """Why Triton could not add kernels to `path`, or None."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-") as f:
            f.write(b"x")
            f.flush()
        free = shutil.disk_usage(path).free
    except OSError as exc:
        return f"is not writable ({exc.strerror or exc})"
    if free < min_free:
        return f"has {free / 2**20:.0f} MiB free"
    return None


def use_writable_cache(env: MutableMapping[str, str] = os.environ, min_free: int = MIN_FREE_BYTES) -> None:
    """Points TRITON_CACHE_DIR at a fresh temporary directory when the one set cannot take kernels."""
    configured = env.get("TRITON_CACHE_DIR")
    if not configured:
        return
    problem = cache_problem(Path(configured), min_free)
    if problem is not None:
        fallback = tempfile.mkdtemp(prefix="triton-cache-")
        log.warning(
            "kernel cache %s %s: compiling into %s instead (this pod compiles every kernel)",
            configured, problem, fallback,
        )  # fmt: skip
        env["TRITON_CACHE_DIR"] = fallback

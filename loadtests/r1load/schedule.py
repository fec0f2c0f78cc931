"""How many users a load shape wants at a moment of the run (pure: no Locust import)."""

from __future__ import annotations

import math

DEFAULT_PHASE = 60.0  # seconds, when step/spike run without --run-time


def duration(shape: str, run_time: float | None, steps: int) -> float | None:
    """The whole run: -t, else a default for step/spike, else (steady) until interrupted."""
    if run_time or shape == "steady":
        return run_time or None
    return DEFAULT_PHASE * (steps if shape == "step" else 3)


def plan(shape: str, users: int, elapsed: float, run_time: float | None, steps: int) -> int | None:
    """How many users the shape wants `elapsed` seconds into the run; None once it is over."""
    total = duration(shape, run_time, steps)
    if total is not None and elapsed >= total:
        return None
    if shape == "steady" or total is None:
        return users
    if shape == "step":
        step = min(steps, int(elapsed // (total / steps)) + 1)
        return max(1, math.ceil(users * step / steps))
    # spike: a quarter of the users, then all of them for the middle fifth of the run, then back
    baseline = max(1, users // 4)
    return users if 0.4 * total <= elapsed < 0.6 * total else baseline

"""How many users a load shape wants at a moment of the run (pure: no Locust import)."""

from __future__ import annotations

import math

DEFAULT_PHASE = 60.0  # seconds, when step/spike run without --run-time


def plan(shape: str, users: int, elapsed: float, run_time: float | None, steps: int) -> int:
    """How many users the shape wants `elapsed` seconds into the run."""
    if shape == "steady":
        return users
    total = run_time or DEFAULT_PHASE * (steps if shape == "step" else 3)
    if shape == "step":
        step = min(steps, int(elapsed // (total / steps)) + 1)
        return max(1, math.ceil(users * step / steps))
    # spike: a quarter of the users, then all of them for the middle fifth of the run, then back
    baseline = max(1, users // 4)
    return users if 0.4 * total <= elapsed < 0.6 * total else baseline

"""The prompt set shipped with the load test and the max_tokens distribution."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PROMPTS = Path(__file__).resolve().parents[1] / "prompts.jsonl"


@dataclass(frozen=True)
class Prompt:
    kind: str  # short | medium | long: the set's mix is the traffic's length mix
    text: str


def load_prompts(path: Path = DEFAULT_PROMPTS) -> list[Prompt]:
    prompts = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            prompts.append(Prompt(row["kind"], row["prompt"]))
        except (ValueError, KeyError) as exc:
            raise ValueError(f"{path}:{n}: expected {{'kind': ..., 'prompt': ...}}: {exc}") from None
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def max_tokens_sampler(spec: str) -> Callable[[random.Random], int]:
    """`64` (fixed), `16-128` (uniform range), `32,64,256` (uniform choice), `32:3,256:1` (weighted)."""
    text = spec.replace(" ", "")
    try:
        if "-" in text:
            low, high = (int(x) for x in text.split("-", 1))
            _check(low, high)
            return lambda rng: rng.randint(low, high)
        values, weights = [], []
        for part in text.split(","):
            value, _, weight = part.partition(":")
            values.append(int(value))
            weights.append(float(weight) if weight else 1.0)
        _check(min(values), max(values))
        if any(w <= 0 for w in weights):
            raise ValueError("weights must be > 0")
        return lambda rng: rng.choices(values, weights)[0]
    except ValueError as exc:
        raise ValueError(f"--max-tokens {spec!r}: {exc} (forms: 64, 16-128, 32,64, 32:3,256:1)") from None


def _check(low: int, high: int) -> None:
    if low < 1 or high < low:
        raise ValueError("max_tokens must be >= 1 and ranges low-high with low <= high")

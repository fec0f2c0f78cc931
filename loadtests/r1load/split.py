"""Traffic split across several servers, like a replica-weighted canary (`--split`).

    --split "stable@http://127.0.0.1:8001=3,canary@http://127.0.0.1:8002=1"

Each request goes to one target picked by weight; its statistics carry the target's label.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from urllib.parse import urlparse


@dataclass(frozen=True)
class Target:
    label: str
    url: str
    weight: float


def parse_split(spec: str) -> list[Target]:
    targets = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        left, sep, weight = part.rpartition("=")
        if not sep:
            left, weight = part, "1"
        label, at, url = left.partition("@")
        if not at:
            label, url = "", left
        u = urlparse(url)
        if not (u.scheme in ("http", "https") and u.netloc):
            raise ValueError(f"--split: {url!r} is not an http(s) URL (form: label@http://host:port=weight)")
        try:
            w = float(weight)
        except ValueError:
            raise ValueError(f"--split: weight {weight!r} of {url} is not a number") from None
        if w < 0:
            raise ValueError(f"--split: weight of {url} must be >= 0")
        targets.append(Target(label or u.netloc, url.rstrip("/"), w))
    if targets and sum(t.weight for t in targets) <= 0:
        raise ValueError("--split: the weights add up to 0")
    return targets


def pick(targets: list[Target], rng: random.Random) -> Target | None:
    return rng.choices(targets, [t.weight for t in targets])[0] if targets else None

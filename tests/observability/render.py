"""Render a kustomization the way the rest of the repo does (r1ops.render: kubectl's kustomize)."""

from __future__ import annotations

from pathlib import Path

import yaml
from r1ops.render import render_overlay


def kustomize(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(render_overlay(path)) if d]


def find(docs: list[dict], kind: str, name: str) -> dict:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]

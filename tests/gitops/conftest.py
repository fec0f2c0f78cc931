"""Rendered trees, built once per session with the real kustomize (kubectl's built-in one)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from r1ops.render import render_overlay
from r1ops.validate import load_objects

ENVS = ("dev", "staging", "prod")
TREES = {
    **{env: Path("overlays") / env for env in ENVS},
    "apps": Path("apps"),
    "bootstrap": Path("apps/bootstrap"),
}
# What an overlay build reads: copied to tmp when a test edits a file.
STACK_DIRS = ("base", "components", "rollouts", "overlays", "apps", "observability")


@pytest.fixture(scope="session")
def rendered(repo_root: Path) -> dict[str, str]:
    return {name: render_overlay(repo_root / path) for name, path in TREES.items()}


@pytest.fixture(scope="session")
def objects(rendered: dict[str, str]) -> dict[str, list[dict]]:
    return {name: load_objects(text) for name, text in rendered.items()}


def find(objs: list[dict], kind: str, name: str | None = None) -> dict:
    matches = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


@pytest.fixture
def stack_copy(repo_root: Path, tmp_path: Path) -> Path:
    """A writable copy of the stack's folders, for tests that edit release.yaml or a component."""
    for folder in STACK_DIRS:
        if (repo_root / folder).is_dir():
            shutil.copytree(repo_root / folder, tmp_path / folder)
    return tmp_path

"""Real git for promotion tests: a bare remote and two clones of a copy of this repo's GitOps tree.

Nothing here is faked: pushes go to a real bare repository, renders run the real kustomize. The
git commands run with the global and system git config switched off so a developer's settings
(pull.rebase, hooks, signing) cannot change the outcome; user.name/email live in each temp repo.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from .promote_git import GIT_ENV, GITOPS_TREE, Clone, git


@pytest.fixture(autouse=True)
def _hermetic_git(monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process CLI runs git with the same isolated config as the fixtures."""
    for key in ("GIT_CONFIG_GLOBAL", "GIT_CONFIG_NOSYSTEM", "GIT_TERMINAL_PROMPT"):
        monkeypatch.setenv(key, GIT_ENV[key])


@pytest.fixture(scope="session")
def seed_remote(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> Path:
    """A bare repository holding a copy of this repo's GitOps tree as one commit on main."""
    work = tmp_path_factory.mktemp("seed") / "work"
    work.mkdir()
    for name in GITOPS_TREE:
        if (repo_root / name).is_dir():
            shutil.copytree(repo_root / name, work / name)
    git(work, "init", "-q", "-b", "main")
    git(work, "add", "-A")
    git(work, "-c", "user.name=seed", "-c", "user.email=seed@example.invalid", "commit", "-q", "-m", "seed")
    bare = work.parent / "remote.git"
    git(work.parent, "clone", "-q", "--bare", str(work), str(bare))
    return bare


@pytest.fixture
def remote(seed_remote: Path, tmp_path: Path) -> Path:
    """A fresh copy of the seed remote per test: tests push to it."""
    bare = tmp_path / "remote.git"
    shutil.copytree(seed_remote, bare)
    return bare


@pytest.fixture
def make_clone(remote: Path, tmp_path: Path) -> Callable[[str], Clone]:
    def make(name: str) -> Clone:
        path = tmp_path / name
        git(tmp_path, "clone", "-q", str(remote), str(path))
        git(path, "config", "user.name", name)
        git(path, "config", "user.email", f"{name}@example.invalid")
        return Clone(path)

    return make


@pytest.fixture
def alice(make_clone: Callable[[str], Clone]) -> Clone:
    return make_clone("alice")


@pytest.fixture
def bob(make_clone: Callable[[str], Clone]) -> Clone:
    return make_clone("bob")

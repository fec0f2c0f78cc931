"""The git operations a promotion needs, on the git command line (what CI and operators run too)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from r1ops.cli import CommandError

# Several promotions can race for the same branch; each lost race costs one fetch + rebase.
PUSH_ATTEMPTS = 4


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def _lost_race(push_output: str) -> bool:
    """The remote moved under us: behind it ([rejected]), or another push held the ref at that moment."""
    behind = "[rejected]" in push_output and (
        "fetch first" in push_output or "non-fast-forward" in push_output
    )
    locked = "[remote rejected]" in push_output and any(
        why in push_output for why in ("cannot lock ref", "failed to update ref", "incorrect old value")
    )
    return behind or locked


@dataclass(frozen=True)
class GitRepo:
    root: Path

    @classmethod
    def containing(cls, path: Path) -> GitRepo:
        result = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "--show-toplevel"], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise CommandError(f"{path} is not inside a git repository")
        return cls(Path(result.stdout.strip()))

    def git(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        # A rebase must never stop to ask for a message; nothing here is interactive. Git's messages
        # in English: some are read here (a missing remote branch, a lost push race).
        env = {**os.environ, "GIT_EDITOR": "true", "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
        result = subprocess.run(["git", "-C", str(self.root), *args], capture_output=True, text=True, env=env)
        if check and result.returncode != 0:
            raise CommandError(f"git {args[0]} failed: {_last_line(result.stderr or result.stdout)}")
        return result

    def dirty_paths(self) -> list[str]:
        """Changed, staged or untracked (not ignored) paths: anything a commit or a render could pick up."""
        out = self.git("status", "--porcelain=v1", "--untracked-files=all").stdout
        return [line[3:] for line in out.splitlines() if line]

    def require_clean(self) -> None:
        dirty = self.dirty_paths()
        if dirty:
            more = f" and {len(dirty) - 1} more" if len(dirty) > 1 else ""
            raise CommandError(f"working tree is dirty ({dirty[0]}{more}): commit or stash first")

    def current_branch(self) -> str | None:
        result = self.git("symbolic-ref", "--quiet", "--short", "HEAD", check=False)
        return result.stdout.strip() or None

    def head(self) -> str:
        return self.git("rev-parse", "HEAD").stdout.strip()

    def branch_exists(self, name: str) -> bool:
        return self.git("rev-parse", "--verify", "--quiet", f"refs/heads/{name}", check=False).returncode == 0

    def valid_branch_name(self, name: str) -> bool:
        return self.git("check-ref-format", "--branch", name, check=False).returncode == 0

    def commits_not_on(self, remote: str, branch: str) -> list[str] | None:
        """`<short sha> <subject>` of each commit of HEAD that `remote`'s `branch` does not have, fetched
        now; None when the remote has no such branch."""
        fetch = self.git("fetch", "--quiet", remote, f"refs/heads/{branch}", check=False)
        if fetch.returncode != 0:
            if "couldn't find remote ref" in fetch.stderr:
                return None
            raise CommandError(f"git fetch from {remote} failed: {_last_line(fetch.stderr or fetch.stdout)}")
        return self.git("log", "--format=%h %s", "FETCH_HEAD..HEAD").stdout.splitlines()

    def switch(self, branch_or_commit: str, *, create: bool = False) -> None:
        mode = ["--create"] if create else [] if self.branch_exists(branch_or_commit) else ["--detach"]
        self.git("switch", "--quiet", *mode, branch_or_commit)

    def commit(self, paths: Sequence[Path], message: str) -> str:
        rel = [str(p.relative_to(self.root)) for p in paths]
        self.git("add", "--", *rel)
        self.git("commit", "--quiet", "--message", message, "--", *rel)
        return self.head()

    def push(
        self,
        remote: str,
        branch: str,
        *,
        attempts: int = PUSH_ATTEMPTS,
        after_rebase: Callable[[], None] | None = None,
    ) -> int:
        """Push HEAD to `remote/branch`; when the remote moved, `pull --rebase` and try again.

        Returns the attempt that succeeded. A rebase that conflicts is aborted, so the local commit
        and a clean tree are left behind, and the failure is one CommandError line.
        """
        for attempt in range(1, attempts + 1):
            result = self.git("push", "--porcelain", remote, f"HEAD:refs/heads/{branch}", check=False)
            if result.returncode == 0:
                return attempt
            if not _lost_race(result.stdout + result.stderr):
                reason = _last_line(result.stderr or result.stdout)
                raise CommandError(f"git push to {remote} failed: {reason}")
            if attempt == attempts:
                break
            commit = self.head()[:12]
            pull = self.git("pull", "--rebase", "--quiet", "--no-autostash", remote, branch, check=False)
            if pull.returncode != 0:
                conflicts = self.git("diff", "--name-only", "--diff-filter=U", check=False).stdout.split()
                self.git("rebase", "--abort", check=False)
                if not conflicts:
                    reason = _last_line(pull.stderr or pull.stdout)
                    raise CommandError(f"git pull --rebase {remote} {branch} failed ({reason}): not pushed")
                raise CommandError(
                    f"{remote}/{branch} moved and commit {commit} does not rebase onto it "
                    f"(conflict in {', '.join(conflicts)}); the commit is kept locally on {branch}, "
                    "nothing was pushed"
                )
            if after_rebase:
                after_rebase()
        raise CommandError(f"push to {remote}/{branch} still rejected after {attempts} attempts: retry later")

"""Real git for the promotion tests: isolated git config and one operator's clone of the GitOps repo."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from r1ops.cli import main
from r1ops.release_state import ReleaseFile, ReleaseState

# What `kubectl kustomize overlays/<env>` and the Argo CD app definitions reach.
GITOPS_TREE = ("base", "components", "rollouts", "overlays", "apps", "observability")

GIT_ENV = {
    **os.environ,
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
}


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True, text=True)
    assert result.returncode == 0, f"git {' '.join(args)}: {result.stderr}"
    return result.stdout.strip()


@dataclass
class Clone:
    """One operator's checkout of the GitOps repository."""

    path: Path

    def git(self, *args: str) -> str:
        return git(self.path, *args)

    def r1ops(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The CLI's entry point, run in this process so the schema validators load only once."""
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([*args, "--repo", str(self.path)])
        return subprocess.CompletedProcess(["r1ops", *args], code, out.getvalue(), err.getvalue())

    def start_r1ops(self, *args: str) -> subprocess.Popen[str]:
        """The installed `r1ops` command in its own process, as CI runs it (no tty: no colors)."""
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "r1ops"), *args],
            cwd=self.path,
            env=GIT_ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def r1ops_process(self, *args: str) -> subprocess.CompletedProcess[str]:
        proc = self.start_r1ops(*args)
        out, err = proc.communicate(timeout=120)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def release(self, env: str) -> ReleaseState:
        return ReleaseFile(self.path / "overlays" / env / "release.yaml").state

    def set_release(self, env: str, **fields: str) -> None:
        """Test setup: edit and commit an environment's release directly (not the code under test)."""
        release = ReleaseFile(self.path / "overlays" / env / "release.yaml")
        release.path.write_text(release.text_with(release.state.model_copy(update=fields)))
        self.git("commit", "-q", "-am", f"test setup: {env} {fields}")

    def head(self, ref: str = "HEAD") -> str:
        return self.git("rev-parse", ref)

    def subject(self, ref: str = "HEAD") -> str:
        return self.git("log", "-1", "--format=%s", ref)

    def touched(self, ref: str = "HEAD") -> list[str]:
        """The files a commit changed."""
        return self.git("show", "--name-only", "--format=", ref).splitlines()

    def is_clean(self) -> bool:
        return self.git("status", "--porcelain") == ""

"""`r1ops promote`: one commit that moves a release along the path, with the rendered diff printed."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from r1ops.image_ref import ImageRef
from r1ops.rendered_diff import print_diff
from rich.console import Console

from .promote_git import Clone

REVISION = "0123456789abcdef0123456789abcdef01234567"


def _diverge_dev(clone: Clone) -> tuple[str, str]:
    """Give dev a new build and a new revision of staging's model (committed), as CI would."""
    repo = ImageRef.parse(clone.release("dev").image).repository
    image = f"{repo}:9.9.9"
    clone.set_release("dev", image=image, model=clone.release("staging").model, modelRevision=REVISION)
    return image, REVISION


def _make_invalid(overlay: Path) -> None:
    """A policy violation that still renders: pods killed before the server has drained."""
    patch = overlay / "rollout-patch.yaml"
    patch.write_text(
        patch.read_text()
        + "\n- op: replace\n  path: /spec/template/spec/terminationGracePeriodSeconds\n  value: 5\n"
    )


def _changed_lines(diff: str) -> list[str]:
    return [line for line in diff.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))]


def test_promote_commits_the_source_release_and_prints_only_what_changes(alice: Clone) -> None:
    image, revision = _diverge_dev(alice)
    old = alice.release("staging")
    before = alice.head()

    result = alice.r1ops("promote", "dev", "staging")

    assert result.returncode == 0, result.stderr
    assert alice.release("staging") == alice.release("dev")
    assert alice.head("HEAD~1") == before
    assert alice.touched() == ["overlays/staging/release.yaml"]
    name, version = ImageRef.parse(old.image).name, ImageRef.parse(old.image).version
    summary = f"{name} {version} -> 9.9.9, model rev {old.modelRevision[:12]} -> {revision[:12]}"
    assert alice.subject() == f"promote(staging): {summary} (from dev)"
    assert alice.is_clean()

    # The Git diff is the two values only: comments and layout of release.yaml survive the edit.
    file_diff = alice.git("diff", "HEAD~1", "HEAD", "--", "overlays/staging/release.yaml")
    assert _changed_lines(file_diff) == [
        f"-  image: {old.image}",
        f"+  image: {image}",
        f"-  modelRevision: {old.modelRevision}",
        f"+  modelRevision: {revision}",
    ]

    # The rendered diff (what Argo CD will change) holds the image and revision lines, and the
    # settings ConfigMap's content-hashed name (a new revision is a new pod template, by design).
    rendered = _changed_lines(result.stdout)
    settings = re.compile(r"name: deepseek-r1-settings-[a-z0-9]+$")
    for line in rendered:
        new, gone = (image, revision), (old.image, old.modelRevision)
        assert any(v in line for v in (new if line[0] == "+" else gone)) or settings.search(line), line
    assert any(image in line for line in rendered) and any(revision in line for line in rendered)
    # Each hunk names the object it changes.
    hunks = re.findall(r"^@@ -\d+,\d+ \+\d+,\d+ @@ (\S+)$", result.stdout, flags=re.M)
    assert "Rollout/deepseek-r1" in hunks and "Job/deepseek-r1-model-download" in hunks
    assert "\x1b[" not in result.stdout  # no colors when stdout is not a terminal


def test_a_different_model_stays_unless_asked(alice: Clone) -> None:
    image, _ = _diverge_dev(alice)
    alice.set_release("staging", model="deepseek-ai/DeepSeek-R1-Distill-Qwen-14B")
    staging = alice.release("staging")

    result = alice.r1ops("promote", "dev", "staging")

    assert result.returncode == 0, result.stderr
    assert "staging keeps its model deepseek-ai/DeepSeek-R1-Distill-Qwen-14B" in result.stdout
    assert alice.release("staging") == staging.model_copy(update={"image": image})
    assert "model" not in alice.subject()

    assert alice.r1ops("promote", "dev", "staging", "--with-model").returncode == 0
    assert alice.release("staging") == alice.release("dev")
    assert "model deepseek-ai/DeepSeek-R1-Distill-Qwen-14B -> " in alice.subject()


def test_promoting_twice_is_a_no_op(alice: Clone) -> None:
    _diverge_dev(alice)
    assert alice.r1ops("promote", "dev", "staging").returncode == 0
    head = alice.head()

    again = alice.r1ops("promote", "dev", "staging")

    assert again.returncode == 0
    assert "nothing to promote" in again.stdout
    assert alice.head() == head


def test_dry_run_prints_the_diff_and_writes_nothing(alice: Clone) -> None:
    image, _ = _diverge_dev(alice)
    head = alice.head()

    result = alice.r1ops("promote", "dev", "staging", "--dry-run")

    assert result.returncode == 0, result.stderr
    assert any(image in line for line in _changed_lines(result.stdout))
    assert alice.head() == head and alice.is_clean()


def test_branch_commits_for_a_pull_request_and_leaves_the_current_branch(alice: Clone) -> None:
    _diverge_dev(alice)
    main = alice.head()

    result = alice.r1ops("promote", "dev", "staging", "--branch", "promote-staging", "--push")

    assert result.returncode == 0, result.stderr
    assert alice.git("branch", "--show-current") == "main"
    assert alice.head() == main and alice.is_clean()
    assert alice.head("promote-staging~1") == main
    assert alice.subject("promote-staging").startswith("promote(staging):")
    remote_branches = alice.git("ls-remote", "--heads", "origin")
    assert f"{alice.head('promote-staging')}\trefs/heads/promote-staging" in remote_branches
    assert alice.release("staging") != alice.release("dev")  # main's checkout still has the old one

    taken = alice.r1ops("promote", "dev", "staging", "--branch", "promote-staging")
    assert taken.returncode == 1 and "already exists" in taken.stderr


def test_the_promotion_path_is_configurable(alice: Clone) -> None:
    _diverge_dev(alice)
    refused = alice.r1ops("promote", "dev", "prod")
    assert refused.returncode == 1
    assert "not on the promotion path" in refused.stderr

    path = alice.path / "overlays" / "promotion.yaml"
    path.write_text(path.read_text().replace("dev: [staging]", "dev: [staging, prod]"))
    alice.git("commit", "-qam", "allow hotfixes straight to prod")

    assert alice.r1ops("promote", "dev", "prod").returncode == 0
    assert alice.release("prod").image == alice.release("dev").image


@pytest.mark.parametrize(
    ("args", "setup", "reason"),
    [
        (("dev", "staging"), "dirty", "working tree is dirty"),
        (("dev", "qa"), None, "unknown environment 'qa'"),
        (("prod", "staging"), None, "prod -> staging is not on the promotion path"),
        (("dev", "prod"), None, "dev -> prod is not on the promotion path"),
        (("dev", "staging"), "broken-target", "staging does not render now"),
        (("dev", "staging"), "invalid-target", "staging does not validate"),
    ],
)
def test_refusals_are_one_line_and_change_nothing(alice: Clone, args, setup, reason: str) -> None:
    _diverge_dev(alice)
    overlay = alice.path / "overlays" / "staging"
    if setup == "dirty":
        (alice.path / "notes.txt").write_text("work in progress\n")
    elif setup == "broken-target":
        kustomization = overlay / "kustomization.yaml"
        kustomization.write_text(kustomization.read_text() + "\nresources: [missing.yaml]\n")
        alice.git("commit", "-qam", "break staging")
    elif setup == "invalid-target":
        _make_invalid(overlay)
        alice.git("add", "-A")
        alice.git("commit", "-qm", "staging violates policy")
    head, status = alice.head(), alice.git("status", "--porcelain")

    result = alice.r1ops("promote", *args)

    assert result.returncode == 1
    assert reason in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert alice.head() == head and alice.git("status", "--porcelain") == status


def test_the_installed_command_refuses_in_one_line(alice: Clone) -> None:
    result = alice.r1ops_process("promote", "prod", "dev")
    assert result.returncode == 1
    assert result.stderr.startswith("r1ops promote: prod -> dev is not on the promotion path (dev -> staging")
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_diff_is_colored_on_a_terminal() -> None:
    terminal = Console(file=io.StringIO(), force_terminal=True, color_system="standard")
    print_diff("--- a\n+++ b\n@@ -1 +1 @@\n-old\n+new\n same\n", terminal)
    text = terminal.file.getvalue()
    assert "\x1b[31m-old" in text and "\x1b[32m+new" in text and " same" in text


def test_push_from_a_detached_head_is_refused(alice: Clone) -> None:
    _diverge_dev(alice)
    alice.git("switch", "-q", "--detach", "HEAD")
    result = alice.r1ops("promote", "dev", "staging", "--push")
    assert result.returncode == 1 and "HEAD is detached" in result.stderr
    assert alice.is_clean()

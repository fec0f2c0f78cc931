"""`--push` when several promotions race for main: rebase when possible, stop cleanly when not."""

from __future__ import annotations

from r1ops.image_ref import ImageRef

from .promote_git import Clone


def _image(clone: Clone, tag: str) -> str:
    return f"{ImageRef.parse(clone.release('dev').image).repository}:{tag}"


def test_push_rebases_onto_a_remote_that_moved(alice: Clone, bob: Clone) -> None:
    alice.set_release("staging", image=_image(alice, "5.0.5"))  # staging now differs from prod
    alice.git("push", "-q", "origin", "main")
    bob.git("pull", "-q", "origin", "main")
    # Bob lands a build on dev first; Alice's promotion of staging is based on the older main.
    assert bob.r1ops("bump", _image(bob, "2.0.0"), "--push").returncode == 0
    bobs = bob.head()

    result = alice.r1ops("promote", "staging", "prod", "--push")

    assert result.returncode == 0, result.stderr
    assert "after 1 rebase(s)" in result.stdout
    assert alice.head("HEAD~1") == bobs  # rebased onto Bob's commit, not a merge
    assert alice.head() == alice.git("ls-remote", "origin", "refs/heads/main").split()[0]
    assert alice.subject().startswith("promote(prod):")
    assert alice.is_clean()


def test_two_operators_pushing_at_once_both_land(alice: Clone, bob: Clone) -> None:
    """A real race: two processes push to the same branch; whoever loses rebases and pushes again."""
    alice.set_release("staging", image=_image(alice, "5.1.0"))
    alice.git("push", "-q", "origin", "main")
    bob.git("pull", "-q", "origin", "main")

    racers = [
        alice.start_r1ops("bump", _image(alice, "6.0.0"), "--push"),
        bob.start_r1ops("promote", "staging", "prod", "--push"),
    ]
    results = [proc.communicate(timeout=120) for proc in racers]

    assert [proc.returncode for proc in racers] == [0, 0], results
    alice.git("pull", "-q", "origin", "main")
    subjects = alice.git("log", "-2", "--format=%s").splitlines()
    assert sorted(s.split("(")[0] for s in subjects) == ["bump", "promote"]
    assert alice.release("dev").image.endswith(":6.0.0") and alice.release("prod").image.endswith(":5.1.0")


def test_a_conflicting_race_fails_in_one_line_and_keeps_the_local_commit(alice: Clone, bob: Clone) -> None:
    # Both land different builds on dev: the same line of the same file.
    assert bob.r1ops("bump", _image(bob, "2.0.0"), "--push").returncode == 0
    remote_head = bob.head()
    old = ImageRef.parse(alice.release("dev").image)

    result = alice.r1ops("bump", _image(alice, "3.0.0"), "--push")

    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "does not rebase" in result.stderr and "overlays/dev/release.yaml" in result.stderr
    assert "kept locally" in result.stderr
    assert alice.subject() == f"bump(dev): {old.name} {old.version} -> 3.0.0"  # her commit is still HEAD
    assert alice.release("dev").image.endswith(":3.0.0")
    assert alice.is_clean()
    assert not (alice.path / ".git" / "rebase-merge").exists()
    assert not (alice.path / ".git" / "rebase-apply").exists()
    assert alice.git("ls-remote", "origin", "refs/heads/main").split()[0] == remote_head


def test_push_attempts_are_bounded(alice: Clone, bob: Clone) -> None:
    assert bob.r1ops("bump", _image(bob, "2.0.0"), "--push").returncode == 0
    alice.set_release("staging", image=_image(alice, "5.0.4"))

    args = ("--push", "--push-attempts", "1", "--allow-unpushed")  # her setup commit goes too
    result = alice.r1ops("promote", "staging", "prod", *args)

    assert result.returncode == 1
    assert "still rejected after 1 attempts" in result.stderr
    assert alice.subject().startswith("promote(prod):") and alice.is_clean()


def test_a_rebase_that_breaks_the_target_is_not_pushed(alice: Clone, bob: Clone) -> None:
    kustomization = bob.path / "overlays" / "prod" / "kustomization.yaml"
    kustomization.write_text(kustomization.read_text() + "\nresources: [missing.yaml]\n")
    bob.git("commit", "-qam", "break prod")
    bob.git("push", "-q", "origin", "main")
    alice.set_release("staging", image=_image(alice, "5.0.3"))

    result = alice.r1ops("promote", "staging", "prod", "--push", "--allow-unpushed")

    assert result.returncode == 1
    assert "prod does not render after rebasing onto origin/main" in result.stderr
    assert "the rebased commit is kept locally" in result.stderr
    assert alice.subject().startswith("promote(prod):")
    assert alice.head("HEAD~2") == bob.head()  # her setup commit and the promotion, rebased
    assert alice.git("ls-remote", "origin", "refs/heads/main").split()[0] == bob.head()


def test_push_without_a_remote_is_a_clear_error(alice: Clone) -> None:
    alice.set_release("staging", image=_image(alice, "5.0.2"))
    result = alice.r1ops("promote", "staging", "prod", "--push", "--remote", "nowhere")
    assert result.returncode == 1
    assert result.stderr.startswith("r1ops promote: git fetch from nowhere failed:")
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_local_commit_is_not_pushed_unseen(alice: Clone) -> None:
    """The diff shows only the release change, so a commit of HEAD's that the remote lacks would ship
    unreviewed: --push refuses unless told, and says which commit."""
    alice.set_release("staging", image=_image(alice, "5.0.1"))  # on the promotion path, pushed
    alice.git("push", "-q", "origin", "main")
    (alice.path / "experiment.md").write_text("not for prod\n")
    alice.git("add", "experiment.md")
    alice.git("commit", "-qm", "wip: experiment")
    remote_head, head = alice.git("ls-remote", "origin", "refs/heads/main").split()[0], alice.head()

    refused = alice.r1ops("promote", "staging", "prod", "--push")

    assert refused.returncode == 1
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "main has commits that origin/main does not" in refused.stderr
    assert "wip: experiment" in refused.stderr
    assert alice.head() == head and alice.is_clean()
    assert alice.git("ls-remote", "origin", "refs/heads/main").split()[0] == remote_head

    allowed = alice.r1ops("promote", "staging", "prod", "--push", "--allow-unpushed")

    assert allowed.returncode == 0, allowed.stderr
    assert alice.git("ls-remote", "origin", "refs/heads/main").split()[0] == alice.head()
    assert alice.subject("HEAD~1") == "wip: experiment"

"""`r1ops bump`: CI sets the first environment's image after a build."""

from __future__ import annotations

from r1ops.image_ref import ImageRef

from .promote_git import Clone

DIGEST = "sha256:" + "89abcdef01234567" * 4


def test_bump_with_a_digest_pins_dev(alice: Clone) -> None:
    old = ImageRef.parse(alice.release("dev").image)
    image = f"{old.repository}@{DIGEST}"

    result = alice.r1ops("bump", image)

    assert result.returncode == 0, result.stderr
    assert alice.release("dev").image == image
    assert alice.subject() == f"bump(dev): {old.name} {old.version} -> sha256:89abcdef0123"
    assert alice.touched() == ["overlays/dev/release.yaml"]
    assert any(line.startswith("+") and image in line for line in result.stdout.splitlines())
    assert alice.is_clean()

    again = alice.r1ops("bump", "dev", image)
    assert again.returncode == 0 and "nothing to bump" in again.stdout


def test_bump_past_the_first_environment_needs_any_env(alice: Clone) -> None:
    image = f"{ImageRef.parse(alice.release('prod').image).repository}:7.7.7-hotfix"
    head = alice.head()

    refused = alice.r1ops("bump", "prod", image)
    assert refused.returncode == 1 and "new builds land in dev" in refused.stderr
    assert alice.head() == head

    assert alice.r1ops("bump", "prod", image, "--any-env").returncode == 0
    assert alice.release("prod").image == image


def test_bump_refuses_a_bad_reference_or_environment(alice: Clone) -> None:
    head = alice.head()
    for args, reason in [
        (("ghcr.io/acme/r1serve",), "not pinned"),
        (("ghcr.io/acme/r1serve:latest",), "latest"),
        (("not a ref!",), "not an image reference"),
        (("qa", "ghcr.io/acme/r1serve:1.0", "--any-env"), "unknown environment 'qa'"),
    ]:
        result = alice.r1ops("bump", *args)
        assert result.returncode == 1, args
        assert reason in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert alice.head() == head and alice.is_clean()

"""Image references: what `r1ops bump` accepts before anything reaches Git."""

from __future__ import annotations

import pytest
from r1ops.image_ref import ImageRef, ImageRefError

DIGEST = "sha256:" + "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("text", "repository", "tag", "digest", "version"),
    [
        ("ghcr.io/acme/r1serve:1.5.0", "ghcr.io/acme/r1serve", "1.5.0", None, "1.5.0"),
        (f"ghcr.io/acme/r1serve@{DIGEST}", "ghcr.io/acme/r1serve", None, DIGEST, "sha256:0123456789ab"),
        (f"r1serve:1.5.0@{DIGEST}", "r1serve", "1.5.0", DIGEST, "1.5.0@sha256:0123456789ab"),
        ("localhost:5000/r1serve:v2_rc.1", "localhost:5000/r1serve", "v2_rc.1", None, "v2_rc.1"),
    ],
)
def test_pinned_references_parse(text: str, repository: str, tag: str, digest: str, version: str) -> None:
    ref = ImageRef.parse(text)
    assert (ref.repository, ref.tag, ref.digest, ref.version) == (repository, tag, digest, version)
    assert str(ref) == text
    assert ref.name == "r1serve"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("ghcr.io/acme/r1serve", "not pinned"),
        ("ghcr.io/acme/r1serve:latest", "latest"),
        ("ghcr.io/acme/R1serve:1.0", "not an image reference"),
        ("r1serve@sha256:abc", "not an image reference"),
        ("r1serve:1.0 ; rm -rf /", "not an image reference"),
        ("", "not an image reference"),
    ],
)
def test_bad_references_are_refused_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(ImageRefError, match=reason):
        ImageRef.parse(text)

"""Container image references (`repo:tag`, `repo@sha256:...`): parsed and checked before they reach Git."""

from __future__ import annotations

import re
from dataclasses import dataclass

# The grammar of github.com/distribution/reference, restricted to what a pinned release may use:
# a tag or a sha256 digest is required, and the floating `latest` tag is refused.
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?))*"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REFERENCE = re.compile(
    rf"^(?P<repository>(?:{_DOMAIN}(?::[0-9]+)?/)?{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[a-f0-9]{64}))?$"
)


class ImageRefError(ValueError):
    """The string is not a pinned image reference."""


@dataclass(frozen=True)
class ImageRef:
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> ImageRef:
        match = _REFERENCE.match(text.strip())
        if not match or len(match["repository"]) > 255:
            raise ImageRefError(f"{text!r} is not an image reference (want repo:tag or repo@sha256:<64 hex>)")
        ref = cls(match["repository"], match["tag"], match["digest"])
        if not ref.tag and not ref.digest:
            raise ImageRefError(f"{text!r} is not pinned: add a tag or an @sha256 digest")
        if ref.tag == "latest" and not ref.digest:
            raise ImageRefError(f"{text!r} floats: pin a version tag or a digest instead of latest")
        return ref

    @property
    def name(self) -> str:
        """The last path component (`r1serve`), what a commit message calls the image."""
        return self.repository.rsplit("/", 1)[-1]

    @property
    def version(self) -> str:
        """Tag and/or short digest: `1.5.0`, `sha256:0123456789ab`, `1.5.0@sha256:0123456789ab`."""
        short = self.digest[: len("sha256:") + 12] if self.digest else None
        return "@".join(part for part in (self.tag, short) if part)

    def __str__(self) -> str:
        tag = f":{self.tag}" if self.tag else ""
        return self.repository + tag + (f"@{self.digest}" if self.digest else "")

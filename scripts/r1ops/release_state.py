"""The promotable state of each environment (`overlays/<env>/release.yaml`) and the promotion path.

A release.yaml is a local-config ConfigMap; its `data` holds `image`, `model` and `modelRevision`
(docs/DESIGN.md). It is edited with ruamel.yaml round-trip so that a promotion's Git diff is the
changed values and nothing else: comments, key order and quoting survive.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from r1ops.cli import CommandError
from r1ops.image_ref import ImageRef

OVERLAYS = "overlays"
RELEASE_FILE = "release.yaml"
PROMOTION_FILE = f"{OVERLAYS}/promotion.yaml"

# Hugging Face hub ids and revisions; both end up in a Job's command line and a local path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_REVISION = re.compile(r"^[\w][\w./-]{0,254}$")

# Commit-message names of the fields, in the order a message lists them.
FIELD_LABELS = {"image": "image", "model": "model", "modelRevision": "model rev"}


def _yaml() -> YAML:
    yaml = YAML()  # round-trip
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap a long digest or comment
    return yaml


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]


class ReleaseState(BaseModel):
    """What a promotion moves from one environment to the next."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    image: str
    model: str
    modelRevision: str  # the ConfigMap key, as release.yaml spells it

    @field_validator("image")
    @classmethod
    def _pinned_image(cls, value: str) -> str:
        ImageRef.parse(value)
        return value

    @field_validator("model")
    @classmethod
    def _hub_id(cls, value: str) -> str:
        if not _HUB_ID.match(value):
            raise ValueError(f"{value!r} is not a Hugging Face model id (org/name)")
        return value

    @field_validator("modelRevision")
    @classmethod
    def _revision(cls, value: str) -> str:
        if not _REVISION.match(value):
            raise ValueError(f"{value!r} is not a git revision (commit, tag or branch)")
        return value

    def changes_to(self, other: ReleaseState) -> dict[str, tuple[str, str]]:
        """field -> (old, new) for every field that differs, in FIELD_LABELS order."""
        return {
            key: (getattr(self, key), getattr(other, key))
            for key in FIELD_LABELS
            if getattr(self, key) != getattr(other, key)
        }


def describe_changes(changes: dict[str, tuple[str, str]]) -> str:
    """`r1serve 1.4.2 -> 1.5.0, model rev abc -> def`: the commit subject's summary."""
    parts = []
    for key, (old, new) in changes.items():
        if key == "image":
            old_ref, new_ref = ImageRef.parse(old), ImageRef.parse(new)
            if old_ref.repository == new_ref.repository:
                parts.append(f"{new_ref.name} {old_ref.version} -> {new_ref.version}")
            else:
                parts.append(f"image {old_ref} -> {new_ref}")
        elif key == "modelRevision":
            parts.append(f"{FIELD_LABELS[key]} {old[:12]} -> {new[:12]}")
        else:
            parts.append(f"{FIELD_LABELS[key]} {old} -> {new}")
    return ", ".join(parts)


@dataclass(frozen=True)
class Environment:
    name: str
    overlay: Path

    @property
    def release_path(self) -> Path:
        return self.overlay / RELEASE_FILE


def environments(root: Path) -> dict[str, Environment]:
    """Every directory under overlays/ that has a release.yaml, by name."""
    overlays = root / OVERLAYS
    found = sorted(p.parent for p in overlays.glob(f"*/{RELEASE_FILE}")) if overlays.is_dir() else []
    return {path.name: Environment(path.name, path) for path in found}


def environment(root: Path, name: str) -> Environment:
    envs = environments(root)
    if name not in envs:
        known = ", ".join(envs) or "none"
        raise CommandError(f"unknown environment {name!r} (known: {known})")
    return envs[name]


class ReleaseFile:
    """One release.yaml, loaded for a round-trip edit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.text = path.read_text()
        try:
            self._doc = _yaml().load(self.text)
            data = self._doc["data"]
            self.state = ReleaseState(**{key: data.get(key) for key in FIELD_LABELS})
        except (YAMLError, TypeError, KeyError, AttributeError) as exc:
            raise CommandError(f"{path}: not a release ConfigMap with a data mapping ({exc})") from exc
        except ValidationError as exc:
            raise CommandError(f"{path}: data.{_first_error(exc)}") from exc

    def text_with(self, state: ReleaseState) -> str:
        """The file's text with `state` written in; untouched lines stay byte for byte."""
        data = self._doc["data"]
        for key in FIELD_LABELS:
            old, new = data[key], getattr(state, key)
            if old != new:
                # Keep the author's quoting: a DoubleQuotedScalarString stays double quoted.
                data[key] = type(old)(new) if isinstance(old, str) and type(old) is not str else new
        out = io.StringIO()
        _yaml().dump(self._doc, out)
        return out.getvalue()


class PromotionPath(BaseModel):
    """overlays/promotion.yaml: which environment may be promoted into which."""

    model_config = ConfigDict(extra="forbid")

    promotions: dict[str, list[str]]

    @model_validator(mode="after")
    def _well_formed(self) -> PromotionPath:
        if not self.promotions:
            raise ValueError("promotions is empty")
        for source, targets in self.promotions.items():
            if source in targets:
                raise ValueError(f"{source} is promoted into itself")
        return self

    @property
    def first(self) -> str:
        """Where new builds land (`r1ops bump`): the first source listed."""
        return next(iter(self.promotions))

    def allows(self, source: str, target: str) -> bool:
        return target in self.promotions.get(source, [])

    def describe(self) -> str:
        return ", ".join(f"{s} -> {t}" for s, targets in self.promotions.items() for t in targets)


def promotion_path(root: Path) -> PromotionPath:
    path = root / PROMOTION_FILE
    if not path.is_file():
        raise CommandError(f"no promotion path: {PROMOTION_FILE} is missing")
    try:
        return PromotionPath.model_validate(_yaml().load(path.read_text()))
    except YAMLError as exc:
        raise CommandError(f"{PROMOTION_FILE}: {str(exc).splitlines()[0]}") from exc
    except ValidationError as exc:
        raise CommandError(f"{PROMOTION_FILE}: {_first_error(exc)}") from exc


def add_promotion(root: Path, source: str, target: str) -> None:
    """Allow `source -> target` in promotion.yaml, keeping its comments."""
    path = root / PROMOTION_FILE
    yaml = _yaml()
    doc = yaml.load(path.read_text())
    targets = doc["promotions"].setdefault(source, [])
    if target not in targets:
        targets.append(target)
    with path.open("w") as out:
        yaml.dump(doc, out)

"""Validate rendered manifests: upstream schemas (Kubernetes + CRDs) and the repository's policies."""

from __future__ import annotations

from functools import cache

import yaml
from jsonschema import Draft202012Validator

from r1ops.policy import policy_problems
from r1ops.schemas import SchemaStore


def load_objects(text: str) -> list[dict]:
    """The objects of a multi-document YAML stream (empty documents dropped)."""
    docs = yaml.safe_load_all(text)
    return [d for d in docs if d]


def ref(obj: dict) -> str:
    """`Kind/name` (or `Kind/namespace/name`) for messages."""
    meta = obj.get("metadata") or {}
    ns = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj.get('kind', '?')}/{ns}{meta.get('name', '?')}"


@cache
def _store() -> SchemaStore:
    return SchemaStore()


_validators: dict[tuple[str, str], Draft202012Validator | None] = {}


def _validator(api_version: str, kind: str) -> Draft202012Validator | None:
    key = (api_version, kind)
    if key not in _validators:
        schema = _store().schema_for(api_version, kind)
        _validators[key] = Draft202012Validator(schema) if schema is not None else None
    return _validators[key]


def schema_problems(objects: list[dict]) -> list[str]:
    """Each object against the schema of its apiVersion/kind; an unknown kind is a problem too."""
    problems = []
    for obj in objects:
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        if not api_version or not kind:
            problems.append(f"{ref(obj)}: missing apiVersion or kind")
            continue
        validator = _validator(api_version, kind)
        if validator is None:
            problems.append(f"{ref(obj)}: no upstream schema for {api_version} {kind}")
            continue
        for err in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
            path = ".".join(str(p) for p in err.absolute_path) or "(root)"
            message = err.message if len(err.message) < 200 else err.message[:197] + "..."
            problems.append(f"{ref(obj)}: {path}: {message}")
    return problems


def validate_rendered(text: str) -> list[str]:
    """All problems of one rendered overlay or app tree (schema, then policy); empty means valid."""
    try:
        objects = load_objects(text)
    except yaml.YAMLError as exc:
        return [f"not valid YAML: {exc}"]
    return schema_problems(objects) + policy_problems(objects)

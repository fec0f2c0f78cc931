"""Kubernetes OpenAPI v3 and CRD `openAPIV3Schema` -> JSON Schema (draft 2020-12), the way the API
server reads them: int-or-string, nullable, preserve-unknown-fields and embedded resources, and unknown
fields rejected wherever the schema lists the properties (structural schemas prune or reject them).
"""

from __future__ import annotations

from typing import Any

_REF_PREFIX = "#/components/schemas/"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
# Keywords that only document; dropping them keeps the converted schemas small.
_DROP = {"description", "example", "externalDocs", "default", "nullable"}


def convert(node: Any) -> Any:
    """Convert one schema node (recursively). Field names under `properties` are never keywords."""
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP or key.startswith("x-"):
            continue
        if key == "properties":
            out[key] = {name: convert(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            out[key] = convert(value) if isinstance(value, dict) else value
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [convert(sub) for sub in value]
        elif key == "$ref":
            out[key] = "#/$defs/" + value.removeprefix(_REF_PREFIX)
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("x-kubernetes-embedded-resource") and "properties" in out:
        for field in ("apiVersion", "kind"):
            out["properties"].setdefault(field, {"type": "string"})
        out["properties"].setdefault("metadata", {"type": "object"})
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if node.get("nullable"):
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        else:
            out = {"anyOf": [{"type": "null"}, out]}
    return out


def k8s_definitions(schemas: dict[str, dict]) -> dict[str, dict]:
    """Convert the `components.schemas` of one Kubernetes group-version file.

    Each converted definition keeps its group-version-kinds under the private key `x-gvk` so the
    root schema can be found; JSON Schema ignores unknown keywords.
    """
    defs = {}
    for name, schema in schemas.items():
        converted = convert(schema)
        if gvks := schema.get("x-kubernetes-group-version-kind"):
            converted["x-gvk"] = [(g["group"], g["version"], g["kind"]) for g in gvks]
        defs[name] = converted
    return defs


def root_schema(defs: dict[str, dict], group: str, version: str, kind: str) -> dict | None:
    for name, schema in defs.items():
        if (group, version, kind) in schema.get("x-gvk", ()):
            return {"$defs": defs, "$ref": f"#/$defs/{name}"}
    return None


def crd_version_schema(open_api_v3: dict, k8s_core_defs: dict[str, dict]) -> dict:
    """One served CRD version: its schema, with `metadata` checked as a real ObjectMeta."""
    schema = convert(open_api_v3) or {"type": "object"}
    props = schema.setdefault("properties", {})
    props["apiVersion"] = {"type": "string"}
    props["kind"] = {"type": "string"}
    props["metadata"] = {"$ref": f"#/$defs/{OBJECT_META}"}
    if not open_api_v3.get("x-kubernetes-preserve-unknown-fields"):
        schema.setdefault("additionalProperties", False)
    schema["$defs"] = k8s_core_defs
    return schema

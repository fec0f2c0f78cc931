"""The schema layer: OpenAPI/CRD conversion, pinned-hash checking, and rejection of bad manifests
by the real upstream schemas (Kubernetes v1.34, Argo Rollouts, Argo CD, prometheus-operator, KEDA,
Gateway API)."""

from __future__ import annotations

import copy
import io
import zipfile

import pytest
from jsonschema import Draft202012Validator
from r1ops import schemas
from r1ops.openapi import convert
from r1ops.validate import schema_problems

from .conftest import find


def _valid(schema: dict, value: object) -> bool:
    return Draft202012Validator(schema).is_valid(value)


def test_int_or_string_accepts_both_and_nothing_else() -> None:
    schema = convert({"type": "object", "properties": {"port": {"x-kubernetes-int-or-string": True}}})
    assert _valid(schema, {"port": 8080}) and _valid(schema, {"port": "http"})
    assert not _valid(schema, {"port": 1.5}) and not _valid(schema, {"port": [1]})


def test_unknown_fields_rejected_unless_preserved() -> None:
    structural = convert({"type": "object", "properties": {"a": {"type": "string"}}})
    assert not _valid(structural, {"a": "x", "b": 1})
    preserved = convert(
        {
            "type": "object",
            "properties": {"a": {"type": "string"}},
            "x-kubernetes-preserve-unknown-fields": True,
        }
    )
    assert _valid(preserved, {"a": "x", "b": 1})
    free_map = convert({"type": "object", "additionalProperties": {"type": "string"}})
    assert _valid(free_map, {"any": "x"}) and not _valid(free_map, {"any": 1})


def test_nullable_and_embedded_resource() -> None:
    schema = convert(
        {
            "type": "object",
            "properties": {
                "n": {"type": "string", "nullable": True},
                "obj": {
                    "type": "object",
                    "x-kubernetes-embedded-resource": True,
                    "properties": {"spec": {"type": "object"}},
                },
            },
        }
    )
    assert _valid(schema, {"n": None, "obj": {"apiVersion": "v1", "kind": "X", "metadata": {}, "spec": {}}})
    assert not _valid(schema, {"obj": {"other": 1}})


def test_field_named_like_a_keyword_is_a_field() -> None:
    # A property called "type" or "nullable" must not be read as a schema keyword.
    schema = convert(
        {"type": "object", "properties": {"type": {"type": "string"}, "nullable": {"type": "boolean"}}}
    )
    assert _valid(schema, {"type": "RuntimeDefault", "nullable": True})
    assert not _valid(schema, {"type": 3})


def test_module_zip_with_wrong_hash_is_refused(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    mod = schemas.SchemaModule("fake", "example.com/fake", "v1.0.0", "h1:not-the-hash", "crds/")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("example.com/fake@v1.0.0/crds/x.yaml", "kind: CustomResourceDefinition\n")
    data = buf.getvalue()
    with pytest.raises(schemas.SchemaFetchError, match="does not match the pinned"):
        schemas._extract(mod, data)
    assert not schemas.module_dir(mod).exists()
    # With the right hash the schema files (and only those) land in the versioned cache folder.
    right = schemas.SchemaModule(
        mod.name, mod.module, mod.version, schemas.dirhash_h1(zipfile.ZipFile(buf)), "crds/"
    )
    schemas._extract(right, data)
    assert [p.name for p in schemas.module_dir(right).iterdir()] == ["x.yaml"]
    assert schemas.module_dir(right) == tmp_path / "r1-gitops" / "schemas" / "fake@v1.0.0"


def test_pinned_modules_are_cached_by_version() -> None:
    for mod in schemas.MODULES:
        folder = schemas.module_dir(mod)
        assert folder.name == f"{mod.name}@{mod.version}" and any(folder.iterdir())


def test_bad_rollout_fields_are_rejected(objects: dict) -> None:
    rollout = copy.deepcopy(find(objects["prod"], "Rollout"))
    rollout["spec"]["strategy"]["blueGreen"]["autoPromotionSeconds"] = "soon"
    rollout["spec"]["strategy"]["blueGreen"]["previewServce"] = "typo"
    rollout["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    problems = "\n".join(schema_problems([rollout]))
    assert "autoPromotionSeconds: 'soon' is not of type 'integer'" in problems
    assert "'previewServce' was unexpected" in problems
    assert "'livenessProbes' was unexpected" in problems


def test_bad_core_and_crd_objects_are_rejected(objects: dict) -> None:
    service = copy.deepcopy(find(objects["prod"], "Service", "deepseek-r1"))
    service["spec"]["ports"][0]["port"] = "80"
    monitor = copy.deepcopy(find(objects["prod"], "PodMonitor"))
    monitor["metadata"]["lables"] = {}
    template = copy.deepcopy(find(objects["prod"], "AnalysisTemplate", "inference-p99-latency"))
    template["spec"]["metrics"][0]["provider"]["prometheus"]["qurey"] = "up"
    app = copy.deepcopy(find(objects["apps"], "Application", "keda"))
    app["spec"]["syncPolicy"]["automated"]["prune"] = "yes"
    problems = "\n".join(schema_problems([service, monitor, template, app]))
    assert "spec.ports.0.port: '80' is not of type 'integer'" in problems
    assert "PodMonitor/ai-inference-prod/deepseek-r1: metadata: Additional properties" in problems
    assert "'qurey' was unexpected" in problems
    assert "spec.syncPolicy.automated.prune: 'yes' is not of type 'boolean'" in problems


def test_unknown_kind_is_a_problem() -> None:
    obj = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert schema_problems([obj]) == ["Widget/w: no upstream schema for example.com/v1 Widget"]

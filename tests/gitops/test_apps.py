"""Argo CD: the projects allow exactly what the environments render, the repo URL lives in one
place, charts are pinned, prod is the only environment that waits for a human, and sync waves put
the model volume and download before the workload."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from r1ops.validate import schema_problems

from .conftest import ENVS, find

PLACEHOLDER = "https://github.com/example-org/r1-gitops.git"
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


def _group(api_version: str) -> str:
    return api_version.rpartition("/")[0]


@pytest.mark.parametrize("env", ENVS)
def test_inference_project_allows_every_rendered_kind(objects: dict, env: str) -> None:
    project = find(objects["apps"], "AppProject", "r1-inference")["spec"]
    namespaced = {(r["group"], r["kind"]) for r in project["namespaceResourceWhitelist"]}
    cluster = {(r["group"], r["kind"]) for r in project["clusterResourceWhitelist"]}
    for obj in objects[env]:
        key = (_group(obj["apiVersion"]), obj["kind"])
        allowed = cluster if obj["kind"] in CLUSTER_SCOPED else namespaced
        assert key in allowed, f"{env}: {key} is not allowed by AppProject r1-inference"
    assert any(
        re.fullmatch(d["namespace"].replace("*", ".*"), f"ai-inference-{env}")
        for d in project["destinations"]
    )


def test_inference_project_allows_nothing_more(objects: dict) -> None:
    project = find(objects["apps"], "AppProject", "r1-inference")["spec"]
    rendered = {(_group(o["apiVersion"]), o["kind"]) for env in ENVS for o in objects[env]}
    rendered.add(("gateway.networking.k8s.io", "HTTPRoute"))  # components/canary-gateway-api
    listed = {(r["group"], r["kind"]) for r in project["namespaceResourceWhitelist"]}
    listed |= {(r["group"], r["kind"]) for r in project["clusterResourceWhitelist"]}
    assert listed == rendered


def test_repo_url_is_written_in_one_place(repo_root: Path, objects: dict) -> None:
    holders = [
        p.relative_to(repo_root).as_posix()
        for folder in ("apps", "overlays", "base", "components")
        for p in (repo_root / folder).rglob("*.yaml")
        if PLACEHOLDER in p.read_text()
    ]
    assert holders == ["apps/repo/repo.yaml"]
    from_repo = [
        o
        for tree in ("apps", "bootstrap")
        for o in objects[tree]
        if o["kind"] == "Application"
        and o["metadata"].get("labels", {}).get("r1.example.org/source") == "repo"
    ]
    assert {o["metadata"]["name"] for o in from_repo} == {"r1-root", "r1-observability"}
    for app in from_repo:
        assert (app["spec"]["source"]["repoURL"], app["spec"]["source"]["targetRevision"]) == (
            PLACEHOLDER,
            "main",
        )
    appset = find(objects["apps"], "ApplicationSet", "r1-environments")["spec"]
    assert (
        appset["generators"][0]["git"]["repoURL"]
        == appset["template"]["spec"]["source"]["repoURL"]
        == PLACEHOLDER
    )
    for project in (o for o in objects["apps"] if o["kind"] == "AppProject"):
        assert project["spec"]["sourceRepos"][0] == PLACEHOLDER


def test_platform_charts_are_pinned_and_allowed(objects: dict) -> None:
    project = find(objects["apps"], "AppProject", "r1-platform")["spec"]
    destinations = {d["namespace"] for d in project["destinations"]}
    charts = {o["metadata"]["name"]: o["spec"] for o in objects["apps"] if o["kind"] == "Application"}
    charts = {name: spec for name, spec in charts.items() if "chart" in spec["source"]}
    assert set(charts) == {"argo-cd", "argo-rollouts", "kube-prometheus-stack", "gpu-operator", "keda"}
    for name, spec in charts.items():
        assert re.fullmatch(r"v?\d+\.\d+\.\d+", spec["source"]["targetRevision"]), name
        assert spec["source"]["repoURL"] in project["sourceRepos"], name
        assert spec["destination"]["namespace"] in destinations, name
        assert spec["project"] == "r1-platform"
    rollouts = charts["argo-rollouts"]["source"]["helm"]["valuesObject"]
    assert rollouts["dashboard"]["enabled"] is True
    assert rollouts["controller"]["trafficRouterPlugins"][0]["name"] == "argoproj-labs/gatewayAPI"
    extensions = charts["argo-cd"]["source"]["helm"]["valuesObject"]["server"]["extensions"]
    assert extensions["extensionList"][0]["name"] == "rollout-extension"
    assert charts["gpu-operator"]["source"]["helm"]["valuesObject"]["dcgmExporter"]["enabled"] is True


def test_only_autoscaled_replicas_are_ignored(objects: dict) -> None:
    template = find(objects["apps"], "ApplicationSet", "r1-environments")["spec"]["template"]["spec"]
    assert template["ignoreDifferences"] == [
        {"group": "argoproj.io", "kind": "Rollout", "jsonPointers": ["/spec/replicas"]}
    ]
    for app in (o for o in objects["apps"] if o["kind"] == "Application"):
        assert "ignoreDifferences" not in app["spec"], app["metadata"]["name"]


GO_TEMPLATE = """package main

import (
\t"os"
\t"text/template"
)

func main() {
\tt := template.Must(template.New("patch").Option("missingkey=error").Parse(os.Args[1]))
\tdata := map[string]any{"path": map[string]any{"basename": os.Args[2], "path": "overlays/" + os.Args[2]}}
\tif err := t.Execute(os.Stdout, data); err != nil {
\t\tpanic(err)
\t}
}
"""


@pytest.mark.skipif(shutil.which("go") is None, reason="Go executes the ApplicationSet's Go templates")
def test_generated_applications(objects: dict, tmp_path: Path) -> None:
    """What the ApplicationSet generates per overlay directory, through Go's text/template like the
    ApplicationSet controller: valid Applications, prod and prod-* regions the only ones without
    automated sync."""
    appset = find(objects["apps"], "ApplicationSet", "r1-environments")["spec"]
    (tmp_path / "main.go").write_text(GO_TEMPLATE)
    build = subprocess.run(
        ["go", "build", "-o", "render", "main.go"], cwd=tmp_path, capture_output=True, text=True
    )
    assert build.returncode == 0, build.stderr

    def execute(template: str, env: str) -> dict:
        proc = subprocess.run(
            [tmp_path / "render", template, env], capture_output=True, text=True, check=True
        )
        return yaml.safe_load(proc.stdout)

    for env in [*ENVS, "qa", "prod-eu"]:
        app = execute(json.dumps(appset["template"]), env)
        patch = execute(appset["templatePatch"], env)
        app["spec"]["syncPolicy"] = patch["spec"]["syncPolicy"]
        app = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Application", **app}
        assert schema_problems([app]) == []
        assert app["metadata"]["name"] == f"r1-{env}"
        assert app["spec"]["destination"]["namespace"] == f"ai-inference-{env}"
        assert app["spec"]["source"]["path"] == f"overlays/{env}"
        policy = app["spec"]["syncPolicy"]
        assert "RespectIgnoreDifferences=true" in policy["syncOptions"]
        if env.startswith("prod"):
            assert "automated" not in policy, env
        else:
            assert policy["automated"] == {"prune": True, "selfHeal": True}, env


@pytest.mark.parametrize("env", ENVS)
def test_model_volume_and_download_sync_before_the_workload(objects: dict, env: str) -> None:
    def wave(obj: dict) -> int:
        return int(obj["metadata"].get("annotations", {}).get("argocd.argoproj.io/sync-wave", 0))

    volumes = [o for o in objects[env] if o["kind"] == "PersistentVolumeClaim"]  # models (+ GPU kernels)
    assert volumes and max(map(wave, volumes)) < wave(find(objects[env], "Job")) < wave(
        find(objects[env], "Rollout")
    )
    job = find(objects[env], "Job")["metadata"]["annotations"]
    assert job["argocd.argoproj.io/hook"] == "Sync"


def test_platform_syncs_before_the_environments(objects: dict) -> None:
    def wave(obj: dict) -> int:
        return int(obj["metadata"].get("annotations", {}).get("argocd.argoproj.io/sync-wave", 0))

    environments = wave(find(objects["apps"], "ApplicationSet", "r1-environments"))
    platform = [o for o in objects["apps"] if o["kind"] == "Application" and "chart" in o["spec"]["source"]]
    assert platform and all(wave(o) < environments for o in platform)

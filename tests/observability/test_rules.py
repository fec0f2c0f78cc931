"""The PrometheusRules: promtool-clean, unit-tested with promtool, loaded by a real Prometheus."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml
from r1ops.prometheus import PrometheusProcess
from r1ops.prometheus_rules import prometheus_rule_files, rule_groups

from .render import find, kustomize

REPO = Path(__file__).resolve().parents[2]
PROMTOOL_TESTS = sorted((REPO / "observability" / "tests").glob("*.yaml"))
RUNBOOK = REPO / "docs" / "RUNBOOK.md"


def alerts() -> list[dict]:
    return [r for p in prometheus_rule_files() for g in rule_groups(p) for r in g["rules"] if "alert" in r]


def test_rule_files_are_listed_in_the_kustomization() -> None:
    names = {p.name for p in prometheus_rule_files()}
    assert {"recording-rules.yaml", "alerts.yaml"} <= names


def test_promtool_check_rules(promtool: str, rules_dir: Path) -> None:
    result = subprocess.run(
        [promtool, "check", "rules", *sorted(map(str, rules_dir.glob("*.yaml")))],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("test_file", PROMTOOL_TESTS, ids=lambda p: p.name)
def test_promtool_unit_tests(promtool: str, rules_dir: Path, tmp_path: Path, test_file: Path) -> None:
    # promtool resolves rule_files next to the test file: put both in one directory.
    for rules in rules_dir.glob("*.yaml"):
        shutil.copy(rules, tmp_path)
    shutil.copy(test_file, tmp_path)
    result = subprocess.run(
        [promtool, "test", "rules", test_file.name], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test() -> None:
    tested = {
        t["alertname"]
        for f in PROMTOOL_TESTS
        for case in yaml.safe_load(f.read_text())["tests"]
        for t in case.get("alert_rule_test", [])
        if t.get("exp_alerts")
    }
    assert {a["alert"] for a in alerts()} <= tested


def _github_anchors(markdown: str) -> set[str]:
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_every_alert_links_to_its_runbook_section() -> None:
    anchors = _github_anchors(RUNBOOK.read_text())
    for alert in alerts():
        url = alert["annotations"]["runbook_url"]
        assert "/docs/RUNBOOK.md#" in url, alert["alert"]
        assert url.split("#", 1)[1] in anchors, f"{alert['alert']}: no section for {url} in docs/RUNBOOK.md"
        assert alert["labels"]["severity"] in {"warning", "critical"}, alert["alert"]


def test_a_real_prometheus_loads_and_evaluates_every_rule(empty_prometheus: PrometheusProcess) -> None:
    expected = {
        r.get("record") or r.get("alert")
        for p in prometheus_rule_files()
        for g in rule_groups(p)
        for r in g["rules"]
    }
    deadline = time.monotonic() + 30
    while True:  # health is "unknown" until a rule's first evaluation, "err" if it cannot run
        groups = httpx.get(f"{empty_prometheus.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        health = {r["name"]: r["health"] for g in groups for r in g["rules"]}
        if "unknown" not in health.values() or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert health == dict.fromkeys(expected, "ok")


def _gate_thresholds(rollout: dict) -> set[float]:
    """p99-threshold-seconds the Rollout passes to its analysis gates (canary or blue-green)."""
    strategy = rollout["spec"]["strategy"]
    runs = [
        strategy.get("canary", {}).get("analysis"),
        strategy.get("blueGreen", {}).get("prePromotionAnalysis"),
        strategy.get("blueGreen", {}).get("postPromotionAnalysis"),
    ]
    args = [a for run in runs if run for a in run["args"]]
    return {float(a["value"]) for a in args if a["name"] == "p99-threshold-seconds"}


def _per_namespace(record: str) -> dict[str, float]:
    """namespace -> value of a per-environment constant recorded as `vector(N)` with a namespace label."""
    return {
        r["labels"]["namespace"]: float(r["expr"].removeprefix("vector(").removesuffix(")"))
        for p in prometheus_rule_files()
        for g in rule_groups(p)
        for r in g["rules"]
        if r.get("record") == record
    }


def test_latency_objectives_are_the_gates_thresholds() -> None:
    objectives = _per_namespace("namespace:inference_latency_seconds:p99_objective")
    namespaces = set()
    for overlay in sorted(p.parent for p in (REPO / "overlays").glob("*/kustomization.yaml")):
        rollout = find(kustomize(overlay), "Rollout", "deepseek-r1")
        namespace, thresholds = rollout["metadata"]["namespace"], _gate_thresholds(rollout)
        namespaces.add(namespace)
        if namespace in objectives:
            assert thresholds == {objectives[namespace]}, f"{overlay.name}: {thresholds} vs {objectives}"
        else:  # the alert's 30 s default; an environment with gates should get its own objective
            assert not thresholds or overlay.name not in {"staging", "prod"}
    assert set(objectives) <= namespaces, "objective for a namespace no overlay renders"
    assert {"ai-inference-staging", "ai-inference-prod"} <= set(objectives)


def test_start_up_budgets_are_the_overlays_startup_probes() -> None:
    """InferencePodNotReady waits for a pod's start-up budget: the recorded one (30 min where none is
    recorded) must be what its startupProbe allows, or a pod still loading pages someone."""
    budgets = _per_namespace("namespace:inference_pod_startup_budget_seconds")
    for overlay in sorted(p.parent for p in (REPO / "overlays").glob("*/kustomization.yaml")):
        rollout = find(kustomize(overlay), "Rollout", "deepseek-r1")
        probe = rollout["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
        allowed = probe["failureThreshold"] * probe["periodSeconds"]
        assert budgets.get(rollout["metadata"]["namespace"], 1800) == allowed, overlay.name

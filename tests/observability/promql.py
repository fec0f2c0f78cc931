"""Every PromQL expression this area ships, and the metric names each one reads.

Prometheus 2.42 has no parse-only API, so names come from a small tokenizer and syntax is checked by
running each expression against a real, empty Prometheus (tests/observability/conftest.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from r1ops.prometheus_rules import prometheus_rule_files, rule_groups

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "observability" / "dashboards" / "r1-inference.json"
COMPONENTS = [REPO / "components" / "autoscaling-keda", REPO / "components" / "autoscaling-gpu-dcgm"]

# Series this stack reads that other software exports, and where each name is defined upstream.
_SOURCES = {
    "NVIDIA/dcgm-exporter etc/default-counters.csv": [
        "DCGM_FI_DEV_GPU_UTIL",
        "DCGM_FI_DEV_GPU_TEMP",
        "DCGM_FI_DEV_FB_USED",
        "DCGM_FI_DEV_FB_FREE",
        "DCGM_FI_DEV_XID_ERRORS",
    ],
    "kubernetes/kube-state-metrics docs/metrics (pod, replicaset, horizontalpodautoscaler)": [
        "kube_pod_status_ready",
        "kube_pod_start_time",
        "kube_pod_container_state_started",
        "kube_pod_deletion_timestamp",
        "kube_pod_owner",
        "kube_replicaset_owner",
        "kube_horizontalpodautoscaler_status_desired_replicas",
        "kube_horizontalpodautoscaler_status_current_replicas",
    ],
    "argoproj/argo-rollouts controller/metrics/prommetrics.go": [
        "rollout_info",
        "rollout_info_replicas_available",
        "analysis_run_metric_phase",
    ],
}
UPSTREAM = {name: source for source, names in _SOURCES.items() for name in names}

_GRAFANA_VARS = {"$__rate_interval": "1m", "$namespace": "r1-prod", "$hash": "abc123"}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool"}
_KEYWORDS |= {"and", "or", "unless", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (not functions, keywords, labels or durations)."""
    s = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # string literals
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # range and subquery selectors
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.:])[A-Za-z_:][\w:]*", s):
        if m.group().lower() in _KEYWORDS or s[m.end() :].lstrip().startswith("("):
            continue
        names.add(m.group())
    return names


def rule_expressions() -> dict[str, str]:
    exprs = {}
    for path in prometheus_rule_files():
        for group in rule_groups(path):
            for rule in group["rules"]:
                exprs[f"{path.name}: {rule.get('record') or rule.get('alert')}"] = rule["expr"]
    return exprs


def recorded_names() -> set[str]:
    return {
        r["record"]
        for p in prometheus_rule_files()
        for g in rule_groups(p)
        for r in g["rules"]
        if "record" in r
    }


def dashboard_expressions() -> dict[str, str]:
    """Panel queries with Grafana's variables replaced by sample values, so they run as PromQL."""
    exprs = {}
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for i, t in enumerate(panel.get("targets", [])):
            expr = t["expr"]
            for var, value in _GRAFANA_VARS.items():
                expr = expr.replace(var, value)
            exprs[f"dashboard: {panel['title']} #{i}"] = expr
    return exprs


def scaledobject_expressions() -> dict[str, str]:
    exprs = {}
    for component in COMPONENTS:
        for path in sorted(component.glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                for trigger in _triggers(doc):
                    exprs[f"{component.name}/{path.name}: {trigger.get('name', '')}"] = trigger["metadata"][
                        "query"
                    ]
    return exprs


def _triggers(doc: object) -> list[dict]:
    """Prometheus triggers in a ScaledObject or in a JSON/strategic patch of one."""
    found = []
    if isinstance(doc, dict):
        if doc.get("type") == "prometheus" and "query" in doc.get("metadata", {}):
            return [doc]
        for value in doc.values():
            found += _triggers(value)
    elif isinstance(doc, list):
        for value in doc:
            found += _triggers(value)
    return found


def all_expressions() -> dict[str, str]:
    return {**rule_expressions(), **dashboard_expressions(), **scaledobject_expressions()}

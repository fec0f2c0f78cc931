"""The Grafana dashboard: generated, delivered to the sidecar, and showing what the issue asks for."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import yaml
from r1ops.render import render_overlay, validate_rendered

from .promql import DASHBOARD, dashboard_expressions, metric_names
from .render import find, kustomize

REPO = Path(__file__).resolve().parents[2]


def _generator():
    spec = importlib.util.spec_from_file_location("generate", DASHBOARD.with_name("generate.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_json_is_what_the_generator_writes() -> None:
    assert _generator().render() == DASHBOARD.read_text(), "run observability/dashboards/generate.py"


def test_observability_renders_for_the_sidecar_and_the_operator() -> None:
    docs = kustomize(REPO / "observability")
    dashboard = find(docs, "ConfigMap", "r1-inference-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["r1-inference.json"]) == json.loads(DASHBOARD.read_text())
    # kube-prometheus-stack selects rules by its Helm release name.
    app = yaml.safe_load((REPO / "apps" / "platform" / "kube-prometheus-stack.yaml").read_text())
    release = app["spec"]["source"]["helm"]["releaseName"]
    rules = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert len(rules) == 2
    assert all(r["metadata"]["labels"]["release"] == release for r in rules)
    assert {d["metadata"]["namespace"] for d in docs} == {"monitoring"}


def test_observability_is_valid_against_the_upstream_schemas() -> None:
    # PrometheusRule (prometheus-operator CRD) and ConfigMap, as `r1ops validate` checks overlays.
    assert validate_rendered(render_overlay(REPO / "observability")) == []


def test_dashboard_shows_every_signal_the_issue_lists() -> None:
    names = set().union(*(metric_names(e) for e in dashboard_expressions().values()))
    rec = "namespace_rollouts_pod_template_hash:"
    required = {
        "inference_requests_total",  # request rate
        rec + "inference_latency_seconds:p99_2m",  # P99 end to end
        rec + "inference_latency_seconds:p50_2m",  # P50
        rec + "inference_error_ratio:rate2m",  # error rate
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:inter_token_latency_seconds_bucket",
        "r1serve_engine_step_interval_seconds_bucket",  # the engine's share of the ITL
        "r1serve_token_delivery_seconds_bucket",  # the API process's share
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:generation_tokens_total",  # tokens/s
        "DCGM_FI_DEV_GPU_UTIL",
        "DCGM_FI_DEV_GPU_TEMP",
        "DCGM_FI_DEV_FB_USED",
    }
    assert required <= names, required - names


def test_canary_and_stable_side_by_side() -> None:
    board = json.loads(DASHBOARD.read_text())
    hash_var = next(v for v in board["templating"]["list"] if v["name"] == "hash")
    assert hash_var["multi"] and hash_var["includeAll"]
    repeated = [p for p in board["panels"] if p.get("repeat") == "hash"]
    assert len(repeated) >= 3
    for panel in repeated:
        assert panel["repeatDirection"] == "h" and panel["maxPerRow"] == 2
        assert all('rollouts_pod_template_hash=~"$hash"' in t["expr"] for t in panel["targets"])
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))

"""Writes r1-inference.json, the Grafana dashboard of the inference service.

The JSON is generated so every panel has the same shape and the queries sit together here, readable;
`tests/observability/test_dashboard.py` fails when the committed JSON is not what this produces.
Run: .venv/bin/python observability/dashboards/generate.py
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).with_name("r1-inference.json")
NS = 'namespace="$namespace"'
HASH = "rollouts_pod_template_hash"
REC = f"namespace_{HASH}"  # prefix of the recorded series (observability/recording-rules.yaml)
H = "{{" + HASH + "}}"  # legend: the pod template hash
FB = f"DCGM_FI_DEV_FB_USED{{{NS}}}"
HPA = "kube_horizontalpodautoscaler_status"


def quantile(q: float, histogram: str, by: str = HASH) -> str:
    return f"histogram_quantile({q}, sum by (le, {by}) (rate({histogram}_bucket{{{NS}}}[$__rate_interval])))"


def target(expr: str, legend: str) -> dict:
    return {
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "expr": expr,
        "legendFormat": legend,
    }


def panel(title: str, unit: str, targets: list[dict], w: int = 8, kind: str = "timeseries", **extra) -> dict:
    return {
        "type": kind,
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]}
        },
        "targets": targets,
        "gridPos": {"w": w, "h": 8},
        **extra,
    }


def row(title: str, **extra) -> dict:
    return {
        "type": "row",
        "title": title,
        "collapsed": False,
        "panels": [],
        "gridPos": {"w": 24, "h": 1},
        **extra,
    }


SERVICE = [
    row("Service"),
    panel(
        "Request rate by status code",
        "reqps",
        [target(f"sum by (code) (rate(inference_requests_total{{{NS}}}[$__rate_interval]))", "{{code}}")],
    ),
    panel(
        "End-to-end latency P50 / P99 (recorded, per hash)",
        "s",
        [
            target(f"{REC}:inference_latency_seconds:p99_2m{{{NS}}}", f"P99 {H}"),
            target(f"{REC}:inference_latency_seconds:p50_2m{{{NS}}}", f"P50 {H}"),
        ],
    ),
    panel(
        "Error rate (5xx / all, recorded, per hash)",
        "percentunit",
        [target(f"{REC}:inference_error_ratio:rate2m{{{NS}}}", H)],
    ),
    panel(
        "Time to first token P50 / P99",
        "s",
        [
            target(quantile(0.99, "vllm:time_to_first_token_seconds"), f"P99 {H}"),
            target(quantile(0.5, "vllm:time_to_first_token_seconds"), f"P50 {H}"),
        ],
    ),
    panel(
        "Inter-token latency P50 / P99, the engine's share (step interval P99) and delivery's (P99)",
        "s",
        [
            target(quantile(0.99, "vllm:inter_token_latency_seconds"), f"P99 {H}"),
            target(quantile(0.5, "vllm:inter_token_latency_seconds"), f"P50 {H}"),
            # the engine's pace: ITL above it is delivery (API processes, HTTP), not the GPU
            target(quantile(0.99, "r1serve_engine_step_interval_seconds"), f"engine step P99 {H}"),
            # the tokens' way from the engine to their handler: its variation, the API process's share
            target(quantile(0.99, "r1serve_token_delivery_seconds"), f"delivery P99 {H}"),
        ],
    ),
    panel(
        "Tokens per second",
        "short",
        [
            target(
                f"sum by ({HASH}) (rate(vllm:generation_tokens_total{{{NS}}}[$__rate_interval]))",
                f"generated {H}",
            ),
            target(
                f"sum by ({HASH}) (rate(vllm:prompt_tokens_total{{{NS}}}[$__rate_interval]))",
                f"prompt {H}",
            ),
        ],
    ),
    panel(
        "Running and waiting requests (the autoscaling signal)",
        "short",
        [
            target(f"sum by (pod) (vllm:num_requests_running{{{NS}}})", "running {{pod}}"),
            target(f"sum by (pod) (vllm:num_requests_waiting{{{NS}}})", "waiting {{pod}}"),
        ],
    ),
    panel(
        "KV cache usage",
        "percentunit",
        [target(f"max by (pod) (vllm:kv_cache_usage_perc{{{NS}}})", "{{pod}}")],
    ),
    panel(
        "Replicas: autoscaler desired / current, Rollout available",
        "short",
        [
            target(
                f"max by (horizontalpodautoscaler) ({HPA}_desired_replicas{{{NS}}})",
                "desired",
            ),
            target(
                f"max by (horizontalpodautoscaler) ({HPA}_current_replicas{{{NS}}})",
                "current",
            ),
            target(f"max by (name) (rollout_info_replicas_available{{{NS}}})", "available {{name}}"),
        ],
    ),
]

GPU = [
    row("GPUs (DCGM exporter)"),
    panel(
        "GPU utilization",
        "percent",
        [target(f"max by (pod, gpu) (DCGM_FI_DEV_GPU_UTIL{{{NS}}})", "{{pod}} gpu{{gpu}}")],
    ),
    panel(
        "GPU temperature",
        "celsius",
        [target(f"max by (pod, gpu) (DCGM_FI_DEV_GPU_TEMP{{{NS}}})", "{{pod}} gpu{{gpu}}")],
    ),
    panel(
        "GPU memory used",
        "percentunit",
        [
            target(
                f"max by (pod, gpu) ({FB} / ({FB} + DCGM_FI_DEV_FB_FREE{{{NS}}}))",
                "{{pod}} gpu{{gpu}}",
            )
        ],
    ),
]

# One column per selected hash: canary and stable side by side during a rollout.
CANARY = [
    row("Canary vs stable (one column per rollouts-pod-template-hash)"),
    *[
        panel(
            title,
            unit,
            [target(expr.format(sel=f'{NS}, {HASH}=~"$hash"'), legend)],
            w=24,  # Grafana splits it into maxPerRow columns, one per hash
            repeat="hash",
            repeatDirection="h",
            maxPerRow=2,
        )
        for title, unit, expr, legend in [
            ("$hash: P99 latency", "s", REC + ":inference_latency_seconds:p99_2m{{{sel}}}", "P99"),
            ("$hash: error rate", "percentunit", REC + ":inference_error_ratio:rate2m{{{sel}}}", "5xx ratio"),
            ("$hash: request rate", "reqps", REC + ":inference_requests:rate2m{{{sel}}}", "req/s"),
            (
                "$hash: time to first token P99",
                "s",
                "histogram_quantile(0.99, sum by (le) "
                "(rate(vllm:time_to_first_token_seconds_bucket{{{sel}}}[$__rate_interval])))",
                "TTFT P99",
            ),
        ]
    ],
]


def variables() -> list[dict]:
    def query_var(name: str, query: str, **extra) -> dict:
        return {
            "name": name,
            "type": "query",
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "query": {"query": query, "refId": name},
            "refresh": 2,
            "sort": 1,
            **extra,
        }

    return [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
        query_var("namespace", "label_values(inference_requests_total, namespace)"),
        query_var(
            "hash",
            f"label_values(inference_requests_total{{{NS}}}, {HASH})",
            multi=True,
            includeAll=True,
            label="pod template hash",
        ),
    ]


def layout(panels: list[dict]) -> list[dict]:
    """Give panels ids and grid positions, left to right, wrapping at 24 columns."""
    x = y = height = 0
    for i, p in enumerate(panels, start=1):
        p["id"] = i
        w, h = p["gridPos"]["w"], p["gridPos"]["h"]
        if p["type"] == "row" or x + w > 24:
            x, y, height = 0, y + height, 0
        p["gridPos"].update(x=x, y=y)
        x, height = x + w, max(height, h)
        if p["type"] == "row":
            x, y, height = 0, y + h, 0
    return panels


def dashboard() -> dict:
    return {
        "uid": "r1-inference",
        "title": "DeepSeek-R1 inference",
        "description": "Serving SLIs, GPUs, canary vs stable. Source: observability/dashboards/generate.py",
        "tags": ["r1-gitops", "inference"],
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "time": {"from": "now-3h", "to": "now"},
        "refresh": "30s",
        "timezone": "utc",
        "templating": {"list": variables()},
        "annotations": {"list": []},
        "panels": layout(SERVICE + GPU + CANARY),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")

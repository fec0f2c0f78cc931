"""The AnalysisTemplates: their conditions never pass without data, their PromQL parses and behaves
in Prometheus' own engine (promtool), their metrics are what the server exports, and their args
are the ones docs/DESIGN.md promises."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from .conftest import find

PROMETHEUS_METRICS = ("inference-p99-latency", "inference-error-rate", "inference-p99-vs-stable")
SAMPLE_ARGS = {
    "namespace": "ai-inference-staging",
    "canary-hash": "canary1",
    "stable-hash": "stable1",
    "p99-threshold-seconds": "2",
}


def _templates(objects: dict) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects["staging"] if o["kind"] == "AnalysisTemplate"}


def _resolve(text: str, template: dict, overrides: dict[str, str] | None = None) -> str:
    values = {a["name"]: a.get("value") for a in template["spec"]["args"]}
    values.update({k: v for k, v in SAMPLE_ARGS.items() if k in values})
    values.update(overrides or {})
    return re.sub(r"\{\{\s*args\.([\w-]+)\s*\}\}", lambda m: values[m.group(1)], text)


def _metric(objects: dict, name: str, overrides: dict[str, str] | None = None) -> dict:
    template = _templates(objects)[name]
    metric = template["spec"]["metrics"][0]
    return {
        "success": _resolve(metric["successCondition"], template, overrides),
        "failure": _resolve(metric["failureCondition"], template, overrides),
        "query": _resolve(metric["provider"]["prometheus"]["query"], template, overrides),
        "raw": metric,
    }


@pytest.mark.parametrize("name", PROMETHEUS_METRICS)
def test_limits_are_explicit(objects: dict, name: str) -> None:
    raw = _metric(objects, name)["raw"]
    assert (raw["failureLimit"], raw["inconclusiveLimit"], raw["consecutiveErrorLimit"]) == (1, 1, 2)
    assert raw["initialDelay"] == "1m"


@pytest.mark.parametrize("name", PROMETHEUS_METRICS)
def test_no_data_is_never_a_pass(objects: dict, name: str) -> None:
    from r1ops.analysis.conditions import evaluate_result
    from r1ops.analysis.phases import Phase

    m = _metric(objects, name)
    # An empty vector (no series yet) and NaN (0/0, a quantile over no requests) are Inconclusive,
    # never an evaluation Error (which would abort) and never Successful.
    assert evaluate_result([], m["success"], m["failure"]) == Phase.INCONCLUSIVE
    assert evaluate_result([math.nan], m["success"], m["failure"]) == Phase.INCONCLUSIVE


@pytest.mark.parametrize(
    ("name", "good", "bad"),
    [
        ("inference-p99-latency", 1.5, 2.5),
        ("inference-error-rate", 0.0, 0.05),
        ("inference-p99-vs-stable", -0.1, 0.3),
    ],
)
def test_conditions_judge_real_values(objects: dict, name: str, good: float, bad: float) -> None:
    from r1ops.analysis.conditions import evaluate_result
    from r1ops.analysis.phases import Phase

    m = _metric(objects, name)
    assert evaluate_result([good], m["success"], m["failure"]) == Phase.SUCCESSFUL
    assert evaluate_result([bad], m["success"], m["failure"]) == Phase.FAILED


def _promtool_test(tmp_path: Path, series: list[dict], tests: list[dict]) -> subprocess.CompletedProcess:
    (tmp_path / "empty-rules.yaml").write_text("groups: []\n")
    spec = {
        "rule_files": ["empty-rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": tests}],
    }
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return subprocess.run(
        ["promtool", "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True, text=True
    )


def _requests(hash_: str, code: str, values: str) -> dict:
    labels = f'namespace="ai-inference-staging",rollouts_pod_template_hash="{hash_}",code="{code}"'
    series = f'inference_requests_total{{{labels},route="/v1/chat/completions"}}'
    return {"series": series, "values": values}


def _latency(hash_: str, le_counts: dict[str, int]) -> list[dict]:
    labels = f'namespace="ai-inference-staging",rollouts_pod_template_hash="{hash_}"'
    return [
        {"series": f'inference_latency_seconds_bucket{{{labels},le="{le}"}}', "values": f"0+{per_min}x10"}
        for le, per_min in le_counts.items()
    ]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is installed by scripts/setup.sh")
def test_queries_in_the_prometheus_engine(objects: dict, tmp_path: Path) -> None:
    error_rate = _metric(objects, "inference-error-rate")["query"]
    p99 = _metric(objects, "inference-p99-latency")["query"]
    vs_stable = _metric(objects, "inference-p99-vs-stable")["query"]
    lenient = _metric(objects, "inference-p99-vs-stable", {"max-ratio": "2.4"})["query"]
    series = [
        _requests("canary1", "200", "0+60x10"),  # canary: 1 req/s, no 5xx series at all
        _requests("stable1", "200", "0+54x10"),
        _requests("stable1", "503", "0+6x10"),  # stable: 10% 5xx
        # canary: every request under 1 s; stable: every request under 0.5 s
        *_latency("canary1", {"0.5": 0, "1": 60, "+Inf": 60}),
        *_latency("stable1", {"0.5": 60, "1": 60, "+Inf": 60}),
    ]
    other_hash = _metric(objects, "inference-error-rate", {"canary-hash": "nobody"})["query"]
    tests = [
        # A healthy canary without a single 5xx: 0, not an empty vector (`or vector(0)`).
        {"expr": error_rate, "eval_time": "5m", "exp_samples": [{"labels": "{}", "value": 0}]},
        # No traffic to this hash: empty, which the conditions turn into Inconclusive.
        {"expr": other_hash, "eval_time": "5m", "exp_samples": []},
        {
            "expr": _metric(objects, "inference-error-rate", {"canary-hash": "stable1"})["query"],
            "eval_time": "5m",
            "exp_samples": [{"labels": "{}", "value": 0.1}],
        },
        # P99 of the canary: linear interpolation inside the (0.5, 1] bucket.
        {"expr": p99, "eval_time": "5m", "exp_samples": [{"labels": "{}", "value": 0.995}]},
        # canary 0.995 - (1.2 * stable 0.495 + 0.25) = +0.151: the relative gate fails it ...
        {"expr": f"sgn({vs_stable})", "eval_time": "5m", "exp_samples": [{"labels": "{}", "value": 1}]},
        # ... and with twice the ratio it passes (0.995 - (2.4 * 0.495 + 0.25) < 0).
        {"expr": f"sgn({lenient})", "eval_time": "5m", "exp_samples": [{"labels": "{}", "value": -1}]},
    ]
    proc = _promtool_test(tmp_path, series, tests)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_background_analysis_outlasts_the_canary_steps(objects: dict) -> None:
    """Argo Rollouts starts no second background run: one that reaches its count before the last step
    ends leaves the rest of the canary unchecked. Allow each setWeight 10 minutes for GPU pods to load."""
    canary = find(objects["staging"], "Rollout")["spec"]["strategy"]["canary"]
    args = {a["name"]: a.get("value") for a in canary["analysis"]["args"]}
    steps = canary["steps"][canary["analysis"]["startingStep"] :]
    pauses = sum(int(s["pause"]["duration"].removesuffix("m")) for s in steps if "pause" in s)
    loads = 10 * sum("setWeight" in s for s in steps)
    for name, template in _templates(objects).items():
        if name in {t["templateName"] for t in canary["analysis"]["templates"]}:
            metric = template["spec"]["metrics"][0]
            interval = next(a["value"] for a in template["spec"]["args"] if a["name"] == "interval")
            window = int(metric["initialDelay"].removesuffix("m")) + int(args["count"]) * int(interval[:-1])
            assert window >= pauses + loads, (name, window, pauses + loads)


def test_preview_load_outlasts_the_pre_promotion_measurements(objects: dict) -> None:
    strategy = find(objects["prod"], "Rollout")["spec"]["strategy"]["blueGreen"]["prePromotionAnalysis"]
    args = {a["name"]: a.get("value") for a in strategy["args"]}
    templates = _templates(objects)
    p99 = templates["inference-p99-latency"]
    interval = next(a["value"] for a in p99["spec"]["args"] if a["name"] == "interval")

    def minutes(d: str) -> int:
        assert d.endswith("m"), d
        return int(d[:-1])

    window = minutes(p99["spec"]["metrics"][0]["initialDelay"]) + int(args["count"]) * minutes(interval)
    assert window <= minutes(args["run-time"])
    assert "inference-preview-load" in [t["templateName"] for t in strategy["templates"]]


def test_args_match_the_design_contract(repo_root: Path, objects: dict) -> None:
    design = (repo_root / "docs" / "DESIGN.md").read_text()
    templates = _templates(objects)
    for row in re.findall(r"^\| `(inference-[\w-]+)` \| ([^|]+)\|", design, flags=re.M):
        name, args = row
        promised = [a for a in re.findall(r"`([\w-]+)`", args)]
        declared = [a["name"] for a in templates[name]["spec"]["args"]]
        assert set(promised) <= set(declared), (name, promised, declared)


def _query_metric_names(objects: dict) -> set[str]:
    names = set()
    for name in PROMETHEUS_METRICS:
        names |= set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", _metric(objects, name)["query"]))
    return names


def test_metric_names_are_exported_by_the_server(objects: dict, request: pytest.FixtureRequest) -> None:
    pytest.importorskip("r1serve.cli", reason="the server (r1serve) is not importable yet")
    from prometheus_client.parser import text_string_to_metric_families

    server = request.getfixturevalue("live_server")
    model = httpx.get(f"{server.base_url}/v1/models", timeout=10).json()["data"][0]["id"]
    # Labelled histograms and counters appear once a request has been observed.
    reply = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    exported = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    wanted = _query_metric_names(objects)
    assert wanted == {"inference_latency_seconds_bucket", "inference_requests_total"}
    assert wanted <= exported, wanted - exported

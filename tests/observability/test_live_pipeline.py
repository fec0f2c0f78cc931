"""The real chain: r1serve /metrics -> a real Prometheus with our rules -> dashboard, alerts, KEDA.

Prometheus scrapes the live server with the target labels the PodMonitor adds in a cluster
(namespace, pod, rollouts_pod_template_hash), so the queries see the series they will see there.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from r1ops.processes import ServerProcess
from r1ops.prometheus import PrometheusProcess, ScrapeTarget

from .promql import UPSTREAM, all_expressions, metric_names, recorded_names
from .render import find, kustomize

if importlib.util.find_spec("r1serve.cli") is None:
    pytest.skip("the server (r1serve.cli) is not importable yet", allow_module_level=True)

REPO = Path(__file__).resolve().parents[2]
NAMESPACE, HASH = "ai-inference-test", "abc123"
REC = "namespace_rollouts_pod_template_hash:"
SELECTOR = f'{{namespace="{NAMESPACE}", rollouts_pod_template_hash="{HASH}"}}'


def _chat(server: ServerProcess, model: str, n: int) -> None:
    for i in range(n):
        r = httpx.post(
            f"{server.base_url}/v1/chat/completions",
            json={
                "model": model,
                "messages": [{"role": "user", "content": f"count to {i}"}],
                "max_tokens": 8,
            },
            timeout=60,
        )
        assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def prometheus(live_server: ServerProcess, fast_rules_dir: Path) -> Iterator[PrometheusProcess]:
    labels = {"namespace": NAMESPACE, "pod": "p1", "rollouts_pod_template_hash": HASH}
    target = ScrapeTarget(f"{live_server.host}:{live_server.port}", labels)
    with PrometheusProcess([target], rule_files=sorted(fast_rules_dir.glob("*.yaml"))) as prom:
        prom.wait_for(f'up{{namespace="{NAMESPACE}"}}', lambda v: v == 1)
        # Requests while Prometheus watches, so the rates over the window are not zero.
        model = httpx.get(f"{live_server.base_url}/v1/models", timeout=10).json()["data"][0]["id"]
        _chat(live_server, model, 5)
        prom.wait_for(f"{REC}inference_latency_seconds:p99_2m{SELECTOR}")
        yield prom


def test_every_metric_name_is_exported_recorded_or_upstream(
    live_server: ServerProcess, prometheus: PrometheusProcess
) -> None:
    text = httpx.get(f"{live_server.base_url}/metrics", timeout=10).text
    exported = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    known = exported | recorded_names() | set(UPSTREAM)
    unknown = {
        f"{where}: {name}" for where, expr in all_expressions().items() for name in metric_names(expr) - known
    }
    assert not unknown, "\n".join(sorted(unknown))


def test_recording_rules_on_real_server_metrics(prometheus: PrometheusProcess) -> None:
    p99 = prometheus.query_value(f"{REC}inference_latency_seconds:p99_2m{SELECTOR}")
    assert 0 < p99 <= 60
    # No 5xx at all: the ratio is there and 0, not missing.
    assert prometheus.wait_for(f"{REC}inference_error_ratio:rate2m{SELECTOR}") == 0
    assert prometheus.wait_for(f'namespace:inference_requests:rate5m{{namespace="{NAMESPACE}"}}') > 0


@pytest.mark.parametrize(
    ("template", "recorded"),
    [
        ("p99-latency.yaml", "inference_latency_seconds:p99_2m"),
        ("error-rate.yaml", "inference_error_ratio:rate2m"),
    ],
)
def test_recorded_series_equal_the_analysis_template_query(
    prometheus: PrometheusProcess, template: str, recorded: str
) -> None:
    """One definition: at the same instant the gate's query and the recorded series agree."""
    doc = yaml.safe_load((REPO / "rollouts" / template).read_text())
    query = doc["spec"]["metrics"][0]["provider"]["prometheus"]["query"]
    query = query.replace("{{args.namespace}}", NAMESPACE).replace("{{args.canary-hash}}", HASH)
    sample = prometheus.query(f"{REC}{recorded}{SELECTOR}")[0]["value"]
    gate = httpx.get(f"{prometheus.url}/api/v1/query", params={"query": query, "time": sample[0]}, timeout=10)
    assert float(gate.json()["data"]["result"][0]["value"][1]) == pytest.approx(float(sample[1]))


@pytest.mark.parametrize("overlay", ["staging", "prod"])
def test_keda_queries_return_one_sample(prometheus: PrometheusProcess, overlay: str) -> None:
    """KEDA needs a one-element vector; with ignoreNullValues=false an empty one is an error."""
    scaled = find(kustomize(REPO / "overlays" / overlay), "ScaledObject", "deepseek-r1")
    for trigger in scaled["spec"]["triggers"]:
        query = trigger["metadata"]["query"].replace(scaled["metadata"]["namespace"], NAMESPACE)
        result = prometheus.query(query)
        assert len(result) == 1, f"{overlay} {trigger['name']}: {result}"
        assert float(result[0]["value"][1]) >= 0

"""A real Prometheus scrapes the live server; the canary gate's P99 query returns a number."""

from __future__ import annotations

import math

import httpx
import pytest
from r1ops.processes import ServerProcess
from r1ops.prometheus import PrometheusProcess, ScrapeTarget

pytestmark = pytest.mark.slow

P99 = "histogram_quantile(0.99, sum(rate(inference_latency_seconds_bucket[1m])) by (le))"
# As rollouts/error-rate.yaml: no 5xx series at all is a rate of 0.
ERROR_RATE = (
    '(sum(rate(inference_requests_total{code=~"5.."}[1m])) or vector(0))'
    " / sum(rate(inference_requests_total[1m]))"
)


def test_p99_and_error_rate_queries_over_real_scrapes(live_server: ServerProcess, tmp_path) -> None:
    target = ScrapeTarget(
        f"127.0.0.1:{live_server.port}", {"pod": "r1-canary", "rollouts_pod_template_hash": "c1"}
    )
    with PrometheusProcess([target], labels={"namespace": "test"}, log_path=tmp_path / "prom.log") as prom:
        prom.wait_for("sum(up)", lambda v: v == 1)  # one scrape before the traffic: rate() has a base
        body = {"model": live_server.model_dir.name, "prompt": "Hi", "max_tokens": 4}
        with httpx.Client(base_url=live_server.base_url, timeout=60) as client:
            for _ in range(20):
                assert client.post("/v1/completions", json=body).status_code == 200
        p99 = prom.wait_for(P99, lambda v: not math.isnan(v))
        assert 0 < p99 <= 60
        assert prom.wait_for(ERROR_RATE, lambda v: not math.isnan(v)) == 0
        # Probes and scrapes are not API traffic: only /v1 routes are counted.
        routes = {s["metric"]["route"] for s in prom.query("inference_requests_total")}
        assert routes == {"/v1/completions", "/v1/chat/completions"}
        series = prom.query('inference_requests_total{route="/v1/completions",code="200"}')
        assert series[0]["metric"]["rollouts_pod_template_hash"] == "c1"
        assert series[0]["metric"]["namespace"] == "test"

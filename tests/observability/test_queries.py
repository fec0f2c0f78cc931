"""Every PromQL expression of this area (rules, dashboard, KEDA triggers) runs in a real Prometheus."""

from __future__ import annotations

import pytest
from r1ops.prometheus import PrometheusError, PrometheusProcess

from .promql import all_expressions, metric_names, scaledobject_expressions


def test_every_expression_parses_and_runs(empty_prometheus: PrometheusProcess) -> None:
    errors = []
    for where, expr in all_expressions().items():
        try:
            empty_prometheus.query(expr)
        except PrometheusError as exc:
            errors.append(f"{where}: {exc}")
    assert not errors, "\n".join(errors)


def test_a_syntax_error_is_caught(empty_prometheus: PrometheusProcess) -> None:
    # The check above could pass vacuously if the API accepted anything.
    with pytest.raises(PrometheusError, match="parse error"):
        empty_prometheus.query("sum by (le (rate(inference_latency_seconds_bucket[2m]))")


def test_keda_triggers_are_found() -> None:
    names = {where.split(":")[0] for where in scaledobject_expressions()}
    assert names == {"autoscaling-keda/scaledobject.yaml", "autoscaling-gpu-dcgm/triggers.yaml"}


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('histogram_quantile(0.99, sum by (le) (rate(a_bucket{x="y", le=~"1e3"}[5m])))', {"a_bucket"}),
        ("a > on (namespace) group_left (z) b offset 15m unless c", {"a", "b", "c"}),
        (
            'vllm:num_requests_waiting > 0 and label_replace(k, "dst", "$1", "src", "(.+)")',
            {"vllm:num_requests_waiting", "k"},
        ),
        ("sum without (pod) (x[10m:1m]) * 1e-3 > bool 2", {"x"}),
        ("max_over_time(inf_total[5m]) > Inf", {"inf_total"}),
    ],
)
def test_metric_names_tokenizer(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names

"""The Prometheus provider against a real Prometheus: result typing as Argo's provider does it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from r1ops.analysis.phases import Phase
from r1ops.analysis.providers import PrometheusProvider, format_sample
from r1ops.analysis.spec import Metric
from r1ops.prometheus import PrometheusProcess


@pytest.fixture(scope="module")
def prometheus() -> Iterator[PrometheusProcess]:
    with PrometheusProcess([]) as prom:
        yield prom


def measure(
    prom: PrometheusProcess, query: str, success: str = "", failure: str = ""
) -> tuple[Phase, str, str]:
    metric = Metric.model_validate(
        {
            "name": "m",
            "successCondition": success,
            "failureCondition": failure,
            "provider": {"prometheus": {"address": prom.url, "query": query}},
        }
    )
    m = PrometheusProvider().measure(metric)
    return m.phase, m.value, m.message


@pytest.mark.parametrize(
    ("query", "success", "phase", "value"),
    [
        ("vector(0.5)", "result[0] == 0.5", Phase.SUCCESSFUL, "[0.5]"),  # a vector is a list
        ("scalar(vector(0.5))", "result == 0.5", Phase.SUCCESSFUL, "0.5"),  # a scalar is a float
        ("vector(0.5) > 1", "len(result) == 0", Phase.SUCCESSFUL, "[]"),  # empty vector, no series
        ("vector(0.5) > 1", "result[0] < 1", Phase.ERROR, "[]"),  # indexing nothing is an Error
        ("vector(0) / 0", "result[0] < 1", Phase.FAILED, "[NaN]"),  # NaN is no pass
        ("vector(1) / 0", "isInf(result[0])", Phase.SUCCESSFUL, "[+Inf]"),
        (
            "vector(1) or label_replace(vector(2), 'x', 'y', '', '')",
            "len(result) == 2",
            Phase.SUCCESSFUL,
            "[1,2]",
        ),
    ],
)
def test_result_typing(
    prometheus: PrometheusProcess, query: str, success: str, phase: Phase, value: str
) -> None:
    got_phase, got_value, message = measure(prometheus, query, success)
    assert (got_phase, got_value) == (phase, value), message


def test_string_result_is_not_supported(prometheus: PrometheusProcess) -> None:
    assert measure(prometheus, '"text"')[::2] == (Phase.ERROR, "Prometheus metric type not supported")


def test_bad_query_is_an_error(prometheus: PrometheusProcess) -> None:
    phase, _, message = measure(prometheus, "sum(")
    assert phase == Phase.ERROR and "bad_data" in message


@pytest.mark.parametrize(
    ("value", "text"), [(0.5, "0.5"), (3.0, "3"), (1e-07, "0.0000001"), (1e21, "1000000000000000000000")]
)
def test_sample_format_is_gos(value: float, text: str) -> None:
    assert format_sample(value) == text

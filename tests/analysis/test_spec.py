"""Loading AnalysisTemplates and resolving their args as an AnalysisRun would."""

from __future__ import annotations

import pytest
from r1ops.analysis.spec import SpecError, build_metrics, load_templates, parse_duration, resolve_args

TEMPLATES = """
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {name: p99}
spec:
  args:
  - name: namespace
  - name: canary-hash
    valueFrom: {podTemplateHashValue: Latest}
  - name: threshold
    value: "2.5"
  - name: count
    value: "3"
  dryRun:
  - metricName: shadow.*
  metrics:
  - name: p99
    interval: 30s
    count: "{{args.count}}"
    successCondition: result[0] <= {{ args.threshold }}
    provider:
      prometheus:
        address: http://127.0.0.1:9090
        query: 'q{namespace="{{args.namespace}}",hash="{{args.canary-hash}}"}'
  - name: shadow-p50
    provider:
      prometheus: {address: http://127.0.0.1:9090, query: 'x'}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: other}
"""


def test_args_resolve_into_the_metric() -> None:
    docs = load_templates(TEMPLATES)
    args = resolve_args(docs, {"namespace": "prod", "canary-hash": "abc123"})
    metrics, dry = build_metrics(docs, args)
    p99 = metrics[0]
    assert p99.count == 3 and p99.interval_seconds == 30
    assert p99.success_condition == "result[0] <= 2.5"
    assert p99.provider["prometheus"]["query"] == 'q{namespace="prod",hash="abc123"}'
    assert dry == {"shadow-p50"}
    assert metrics[1].effective_count == 1  # no count and no interval: one measurement


def test_command_line_overrides_a_default() -> None:
    docs = load_templates(TEMPLATES)
    args = resolve_args(docs, {"namespace": "p", "canary-hash": "h", "threshold": "9"})
    assert build_metrics(docs, args)[0][0].success_condition == "result[0] <= 9"


def test_value_from_arg_must_be_given() -> None:
    with pytest.raises(SpecError, match=r"canary-hash \(valueFrom podTemplateHashValue\)"):
        resolve_args(load_templates(TEMPLATES), {"namespace": "prod"})


def test_unknown_arg_is_refused() -> None:
    with pytest.raises(SpecError, match=r"unknown arg.*nmespace"):
        resolve_args(load_templates(TEMPLATES), {"nmespace": "prod"})


def test_template_selection() -> None:
    with pytest.raises(SpecError, match="not found: nope"):
        load_templates(TEMPLATES, ["nope"])
    with pytest.raises(SpecError, match="no AnalysisTemplate"):
        load_templates("kind: ConfigMap\nmetadata: {name: x}\n")


def test_dry_run_rule_matching_nothing_is_an_error() -> None:
    text = TEMPLATES.replace("shadow.*", "nothing-like-this")
    docs = load_templates(text)
    with pytest.raises(SpecError, match="didn't match"):
        build_metrics(docs, resolve_args(docs, {"namespace": "p", "canary-hash": "h"}))


def test_count_above_one_needs_an_interval() -> None:
    text = TEMPLATES.replace("    interval: 30s\n", "")
    docs = load_templates(text)
    with pytest.raises(SpecError, match="interval must be specified"):
        build_metrics(docs, resolve_args(docs, {"namespace": "p", "canary-hash": "h"}))


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("1m30s", 90), ("500ms", 0.5), ("2h", 7200)])
def test_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["30", "1x", "m", "-1s"])
def test_bad_duration(text: str) -> None:
    with pytest.raises(SpecError, match="invalid duration"):
        parse_duration(text)

"""AnalysisTemplates: loaded from an overlay (kustomize) or a file, args resolved, metrics typed.

Argo resolves `{{args.NAME}}` in the JSON of each metric before reading it, so a placeholder may
stand for a number (`count: "{{args.count}}"`); this module does the same.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from r1ops.analysis.conditions import check_condition
from r1ops.analysis.expr import ExprError

TEMPLATE_KINDS = ("AnalysisTemplate", "ClusterAnalysisTemplate")
_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class SpecError(Exception):
    """The templates or their args are unusable (Argo: the AnalysisRun goes to Error at once)."""


def parse_duration(text: str) -> float:
    """Go's time.ParseDuration (what Argo's DurationString uses), in seconds."""
    s = text.strip()
    if s in ("0", ""):
        return 0.0
    pos, total = 0, 0.0
    for m in _DURATION.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(s) or pos == 0:
        raise SpecError(f'time: invalid duration "{text}"')
    return total


class Metric(BaseModel):
    """One entry of spec.metrics, after args are resolved (Argo v1alpha1.Metric)."""

    model_config = ConfigDict(populate_by_name=True, extra="allow")

    name: str
    interval: str = ""
    initial_delay: str = Field("", alias="initialDelay")
    count: int | None = None
    failure_limit: int = Field(0, alias="failureLimit")
    inconclusive_limit: int = Field(0, alias="inconclusiveLimit")
    consecutive_error_limit: int = Field(4, alias="consecutiveErrorLimit")
    consecutive_success_limit: int = Field(0, alias="consecutiveSuccessLimit")
    success_condition: str = Field("", alias="successCondition")
    failure_condition: str = Field("", alias="failureCondition")
    provider: dict[str, Any]

    @field_validator("count", "failure_limit", "inconclusive_limit", "consecutive_error_limit", mode="before")
    @classmethod
    def _int_or_string(cls, v: Any) -> Any:
        return int(v) if isinstance(v, str) and v.strip().lstrip("-").isdigit() else v

    @property
    def provider_type(self) -> str:
        return next(iter(self.provider), "none")

    @property
    def interval_seconds(self) -> float | None:
        return parse_duration(self.interval) if self.interval else None

    @property
    def initial_delay_seconds(self) -> float:
        return parse_duration(self.initial_delay) if self.initial_delay else 0.0

    @property
    def effective_count(self) -> int | None:
        """Argo's EffectiveCount: no count and no interval means a single measurement."""
        if self.count is None or self.count == 0:
            return 1 if not self.interval else None
        return self.count


def render(source: Path) -> str:
    """YAML text of a kustomization directory (r1ops render's kustomize) or of a file."""
    from r1ops.render import RenderError, render_overlay

    if source.is_file():
        return source.read_text()
    if not source.is_dir():
        raise SpecError(f"{source}: no such file or directory")
    try:
        return render_overlay(source)
    except RenderError as exc:
        raise SpecError(str(exc)) from None


def load_templates(text: str, names: list[str] | None = None) -> list[dict[str, Any]]:
    """The AnalysisTemplates in a multi-document YAML stream, optionally only those named."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]
    except yaml.YAMLError as exc:
        raise SpecError(f"invalid YAML: {exc}") from None
    found = {d["metadata"]["name"]: d for d in docs if d.get("kind") in TEMPLATE_KINDS}
    if not found:
        raise SpecError("no AnalysisTemplate or ClusterAnalysisTemplate found")
    if not names:
        return list(found.values())
    missing = [n for n in names if n not in found]
    if missing:
        raise SpecError(f"template(s) not found: {', '.join(missing)} (have: {', '.join(sorted(found))})")
    return [found[n] for n in names]


def resolve_args(templates: list[dict[str, Any]], given: dict[str, str]) -> dict[str, str]:
    """Merge the templates' args with the command line's; every arg must end up with a value.

    A `valueFrom` arg (podTemplateHashValue, fieldRef, secretKeyRef) is filled by the Rollout in a
    cluster; here it must come from the command line.
    """
    values: dict[str, str] = {}
    declared: dict[str, dict[str, Any]] = {}
    for t in templates:
        for arg in t.get("spec", {}).get("args", []) or []:
            declared.setdefault(arg["name"], arg)
            if "value" in arg and arg["name"] not in values:
                values[arg["name"]] = str(arg["value"])
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise SpecError(
            f"unknown arg(s): {', '.join(unknown)} (templates declare: {', '.join(sorted(declared))})"
        )
    values.update(given)
    missing = [n for n in declared if n not in values]
    if missing:
        hints = []
        for n in missing:
            source = declared[n].get("valueFrom")
            hints.append(f"{n} (valueFrom {next(iter(source))})" if source else n)
        raise SpecError(f"args need a value: {', '.join(hints)}; pass --arg NAME=VALUE")
    return values


def substitute(text: str, args: dict[str, str]) -> str:
    def replace(m: re.Match[str]) -> str:
        tag = m.group(1)
        if not tag.startswith("args."):
            return m.group(0)  # Argo leaves other {{ }} text alone
        name = tag[len("args.") :]
        if name not in args:
            raise SpecError(f"failed to resolve {{{{{tag}}}}}")
        # The metric is JSON while args are substituted: escape like Argo's ResolveQuotedArgs.
        return json.dumps(args[name])[1:-1]

    return _PLACEHOLDER.sub(replace, text)


def build_metrics(templates: list[dict[str, Any]], args: dict[str, str]) -> tuple[list[Metric], set[str]]:
    """The merged metrics of the templates (as one AnalysisRun) and the names of dryRun metrics."""
    metrics: list[Metric] = []
    dry_patterns: list[str] = []
    for t in templates:
        spec = t.get("spec", {})
        dry_patterns += [d["metricName"] for d in spec.get("dryRun", []) or []]
        for raw in spec.get("metrics", []) or []:
            resolved = json.loads(substitute(json.dumps(raw), args))
            try:
                metrics.append(Metric.model_validate(resolved))
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise SpecError(f"metric {raw.get('name', '?')!r}: {where}: {first['msg']}") from None
    names = [m.name for m in metrics]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise SpecError(f"duplicate metric name(s) across templates: {', '.join(sorted(duplicates))}")
    for m in metrics:
        validate_metric(m)
    dry_run: set[str] = set()
    for i, pattern in enumerate(dry_patterns):
        # Argo's GetDryRunMetrics: an unanchored regexp; a rule that matches nothing is an error.
        matched = {n for n in names if re.search(pattern, n)}
        if not matched:
            raise SpecError(f"dryRun[{i}]: rule {pattern!r} didn't match any metric name(s)")
        dry_run |= matched
    return metrics, dry_run


def validate_metric(m: Metric) -> None:
    """The checks of Argo's ValidateMetric that a dry run can hit."""
    if len(m.provider) != 1:
        raise SpecError(
            f"metric {m.name!r}: exactly one provider expected, got {sorted(m.provider) or 'none'}"
        )
    if m.count is not None and m.count > 1 and not m.interval:
        raise SpecError(f"metric {m.name!r}: interval must be specified when count > 1")
    for field, value in (("interval", m.interval), ("initialDelay", m.initial_delay)):
        if value:
            try:
                parse_duration(value)
            except SpecError as exc:
                raise SpecError(f"metric {m.name!r}: {field}: {exc}") from None
    if m.count is not None and m.count < m.failure_limit:
        raise SpecError(f"metric {m.name!r}: count must be >= failureLimit")
    if m.count is not None and m.count < m.inconclusive_limit:
        raise SpecError(f"metric {m.name!r}: count must be >= inconclusiveLimit")
    for field, condition in (
        ("successCondition", m.success_condition),
        ("failureCondition", m.failure_condition),
    ):
        if condition:
            try:
                check_condition(condition)  # Argo would fail every measurement on it: say so up front
            except ExprError as exc:
                raise SpecError(f"metric {m.name!r}: {field}: {exc}") from None
    if m.consecutive_success_limit:
        raise SpecError(f"metric {m.name!r}: consecutiveSuccessLimit is not supported by this dry run")

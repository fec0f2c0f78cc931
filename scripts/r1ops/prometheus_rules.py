"""PrometheusRule manifests -> plain Prometheus rule files, for promtool and local Prometheus instances.

The cluster loads the rules through the Prometheus Operator; promtool and a bare `prometheus` only
read the `groups:` format, so this copies `spec.groups` out unchanged (one source of truth).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
OBSERVABILITY = REPO / "observability"


def prometheus_rule_files(directory: Path = OBSERVABILITY) -> list[Path]:
    """The PrometheusRule manifests a kustomization lists in `resources:`, in its order."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    files = [directory / name for name in kustomization.get("resources", [])]
    return [f for f in files if f.is_file() and any(d["kind"] == "PrometheusRule" for d in _docs(f))]


def rule_groups(path: Path) -> list[dict]:
    """`spec.groups` of every PrometheusRule in one manifest file."""
    return [g for d in _docs(path) if d["kind"] == "PrometheusRule" for g in d["spec"]["groups"]]


def write_rule_files(manifests: Iterable[Path], out_dir: Path, interval: str | None = None) -> list[Path]:
    """Write each manifest's groups to `out_dir/<same name>` (promtool tests name them that way).

    `interval` replaces every group's evaluation interval: a short-lived local Prometheus wants
    results within seconds, not after the cluster's 30s.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for manifest in manifests:
        groups = rule_groups(manifest)
        if interval is not None:
            groups = [{**g, "interval": interval} for g in groups]
        target = out_dir / manifest.name
        target.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
        written.append(target)
    return written


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]

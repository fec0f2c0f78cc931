"""Real tools for the observability tests: promtool and Prometheus on 127.0.0.1 (r1ops.prometheus)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from r1ops.prometheus import PrometheusProcess
from r1ops.prometheus_rules import prometheus_rule_files, write_rule_files


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: scripts/setup.sh installs the Debian prometheus package")
    return path


@pytest.fixture(scope="session")
def rules_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The PrometheusRules of observability/ as plain rule files, named like their manifests."""
    return _rules(tmp_path_factory.mktemp("rules"))


def _rules(out: Path, interval: str | None = None) -> Path:
    write_rule_files(prometheus_rule_files(), out, interval=interval)
    return out


@pytest.fixture(scope="session")
def fast_rules_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same rules evaluated every second, so a short-lived Prometheus has results at once."""
    return _rules(tmp_path_factory.mktemp("fast-rules"), interval="1s")


@pytest.fixture(scope="session")
def empty_prometheus(fast_rules_dir: Path) -> Iterator[PrometheusProcess]:
    """A real Prometheus with an empty TSDB and our rules: parses and runs any expression."""
    with PrometheusProcess([], rule_files=sorted(fast_rules_dir.glob("*.yaml"))) as prom:
        yield prom

"""Blue-green (the prod overlay) driven by the real Argo Rollouts controller on real metrics.

Version 1.0.0 serves client traffic through the active Service. A new version comes up behind the
preview Service; the pre-promotion analysis runs its Locust Job against the preview (really run, see
r1ops/e2e/job_pods.py) while the P99 and error-rate gates read Prometheus. Prod promotes by hand: a
healthy preview passes its analysis, waits for the person, and after `promote` the active Service
switches to it (post-promotion gates on real traffic). A slow preview fails the gate and is aborted:
the active Service never leaves the old pods.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from r1ops.e2e.analyze import DryRun
from r1ops.e2e.deploy import promote, service_hash
from r1ops.e2e.job_pods import LocustJobPods
from r1ops.e2e.scenario import Scenario

pytestmark = pytest.mark.e2e

Factory = Callable[[str], Scenario]
ACTIVE, PREVIEW = "deepseek-r1", "deepseek-r1-preview"


def _started(scenario: Factory) -> tuple[Scenario, dict]:
    sc = scenario("blue-green")
    sc.deploy("1.0.0")
    return sc, sc.wait_healthy()


def _run_phase(sc: Scenario, index: int) -> str | None:
    runs = sc.analysis_runs()
    return runs[index].get("status", {}).get("phase") if len(runs) > index else None


def test_healthy_preview_passes_analysis_then_is_switched_active(scenario: Factory) -> None:
    sc, first = _started(scenario)
    old = first["stableRS"]
    with sc.load([ACTIVE]) as load, LocustJobPods(sc.kubectl, sc.namespace, sc.pods, sc.dir / "jobs") as jobs:
        sc.deploy("1.1.0")
        with DryRun(sc) as dry_run:
            sc.wait_status(
                lambda s: _run_phase(sc, 0) == "Successful", 300, "pre-promotion analysis Successful"
            )
        st = sc.wait_status(lambda s: s.get("phase") == "Paused", 60, "waiting for the person to promote")
        new = st["currentPodHash"]
        # Nothing switches on its own in prod: active still old, preview on the new version.
        assert service_hash(sc.kubectl, sc.namespace, ACTIVE) == old
        assert service_hash(sc.kubectl, sc.namespace, PREVIEW) == new

        promote(sc.kubectl, sc.namespace)
        st = sc.wait_status(
            lambda s: s.get("phase") == "Healthy" and s.get("stableRS") == new,
            300,
            "switched and post-analysed",
        )
    assert service_hash(sc.kubectl, sc.namespace, ACTIVE) == new
    assert not load.errors and not jobs.errors
    # The analysis Job's Locust really ran against the preview and succeeded.
    assert jobs.finished and set(jobs.finished.values()) == {0}
    pre, post = sc.analysis_runs()[:2]
    assert pre["status"]["phase"] == post["status"]["phase"] == "Successful", sc.describe_analysis()
    assert dry_run.phase() == "Successful", dry_run.output


def test_slow_preview_fails_analysis_and_active_never_switches(scenario: Factory) -> None:
    sc, first = _started(scenario)
    old = first["stableRS"]
    with sc.load([ACTIVE]) as load, LocustJobPods(sc.kubectl, sc.namespace, sc.pods, sc.dir / "jobs"):
        sc.deploy("1.1.0-slow", env={"R1SERVE_TEST_DELAY_SECONDS": "6"})
        with DryRun(sc) as dry_run:
            st = sc.wait_status(lambda s: s.get("abort") is True, 300, "slow preview aborted")
    assert not load.errors
    assert st["stableRS"] == old
    run = sc.analysis_runs()[0]
    assert run["status"]["phase"] == "Failed", sc.describe_analysis()
    failed = {m["name"] for m in run["status"]["metricResults"] if m["phase"] == "Failed"}
    assert "p99-latency" in failed
    assert service_hash(sc.kubectl, sc.namespace, ACTIVE) == old
    sc.kubectl.wait_for(
        lambda: {ps.template_hash for ps in sc.pods.ready.values()} == {old}, 90, "only the old pods serve"
    )
    assert dry_run.phase() == "Failed", dry_run.output

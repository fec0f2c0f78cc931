"""Canary (the staging overlay) driven by the real Argo Rollouts controller on real metrics.

Version 1.0.0 is deployed and serves client traffic (Locust through the `deepseek-r1` Service). Then
a new version arrives: a healthy one must be promoted to 100% after its background analysis
succeeds; a slow one (R1SERVE_TEST_DELAY_SECONDS: on the CPU engine no real setting makes a version
reliably slower, see docs/E2E.md) has a P99 above the gate and must be aborted, leaving the stable
ReplicaSet serving behind both Services. With no traffic there is no data, and no data must never
promote.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from r1ops.e2e.analyze import DryRun
from r1ops.e2e.deploy import service_hash
from r1ops.e2e.scenario import Scenario

Factory = Callable[[str], Scenario]

pytestmark = pytest.mark.e2e

CLIENTS = "deepseek-r1"  # what clients call (base/service.yaml)
SERVICES = (CLIENTS, "deepseek-r1-stable", "deepseek-r1-canary")
# Every completion 6 s late: a P99 twice the gate, whatever the load on the machine.
SLOW = {"R1SERVE_TEST_DELAY_SECONDS": "6"}


def _started(scenario: Factory) -> tuple[Scenario, dict]:
    sc = scenario("canary")
    sc.deploy("1.0.0")
    return sc, sc.wait_healthy()


def _metric(run: dict, name: str) -> dict:
    return next(m for m in run["status"]["metricResults"] if m["name"] == name)


def test_healthy_version_is_promoted_after_analysis(scenario: Factory) -> None:
    sc, first = _started(scenario)
    with sc.load([CLIENTS]) as load:
        sc.deploy("1.1.0")
        with DryRun(sc) as dry_run:
            st = sc.wait_status(
                lambda s: s.get("phase") == "Healthy" and s.get("stableRS") not in (None, first["stableRS"]),
                420,
                "1.1.0 promoted to 100%",
            )
    assert not load.errors
    new_hash = st["stableRS"]
    assert st["currentPodHash"] == new_hash
    sc.kubectl.wait_for(lambda: sc.serving(CLIENTS) == {new_hash}, 60, "clients served by 1.1.0 only")

    run = sc.analysis_runs()[-1]
    assert run["status"]["phase"] == "Successful", sc.describe_analysis()
    p99 = _metric(run, "p99-latency")
    # Real measurements of the canary, each one a number under the gate: not a pass by absence.
    assert p99["measurements"] and all(m["phase"] == "Successful" for m in p99["measurements"])
    assert all(float(m["value"].strip("[]")) > 0 for m in p99["measurements"])
    assert dry_run.phase() == "Successful", dry_run.output


def test_slow_version_is_aborted_and_stable_keeps_serving(scenario: Factory) -> None:
    sc, first = _started(scenario)
    stable = first["stableRS"]
    with sc.load([CLIENTS]) as load:
        sc.deploy("1.1.0-slow", env=SLOW)
        with DryRun(sc) as dry_run:
            st = sc.wait_status(lambda s: s.get("abort") is True, 420, "slow canary aborted")
    assert not load.errors
    assert st["phase"] == "Degraded"
    assert st["stableRS"] == stable

    run = sc.analysis_runs()[-1]
    assert run["status"]["phase"] == "Failed", sc.describe_analysis()
    assert _metric(run, "p99-latency")["phase"] == "Failed"

    # Back to stable: every Service's selector (where Argo set one) and endpoints are the stable
    # ReplicaSet's, and the canary's is scaled to zero.
    for svc in SERVICES:
        assert service_hash(sc.kubectl, sc.namespace, svc) in (None, stable), svc
    sc.kubectl.wait_for(
        lambda: all(sc.serving(s) == {stable} for s in SERVICES), 60, "only stable pods behind the Services"
    )
    rs = {
        r["metadata"]["labels"]["rollouts-pod-template-hash"]: r for r in sc.kubectl.items("rs", sc.namespace)
    }
    assert rs[st["currentPodHash"]]["spec"]["replicas"] == 0
    assert rs[stable]["status"].get("readyReplicas") == first["readyReplicas"]
    sc.kubectl.wait_for(
        lambda: {ps.template_hash for ps in sc.pods.ready.values()} == {stable}, 60, "only stable pods serve"
    )
    assert dry_run.phase() == "Failed", dry_run.output


def test_no_traffic_means_no_data_and_no_promotion(scenario: Factory) -> None:
    sc, first = _started(scenario)
    sc.deploy("1.1.0")  # and nobody calls the Service
    st = sc.wait_status(
        lambda s: any(r.get("status", {}).get("phase") == "Inconclusive" for r in sc.analysis_runs()),
        420,
        "analysis Inconclusive",
    )
    # Held where it was for a person to decide: not promoted, not past the analysed step.
    assert st["stableRS"] == first["stableRS"]
    assert st.get("phase") == "Paused"
    assert "InconclusiveAnalysisRun" in [c["reason"] for c in st["pauseConditions"]]
    steps = sc.rollout()["spec"]["strategy"]["canary"]["steps"]
    assert st["currentStepIndex"] < len(steps)
    assert {ps.template_hash for ps in sc.pods.ready.values()} >= {first["stableRS"]}

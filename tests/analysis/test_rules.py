"""Argo's AnalysisRun rules, one case per rule, on a fake clock and scripted measurements.

The provider here is a script of phases (a fake: these tests pin the state machine, the live
Prometheus path is covered by test_live.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from r1ops.analysis.phases import Phase
from r1ops.analysis.run import AnalysisRun, Measurement
from r1ops.analysis.spec import Metric

S, F, I, E = Phase.SUCCESSFUL, Phase.FAILED, Phase.INCONCLUSIVE, Phase.ERROR  # noqa: E741 - the phase initials read as a table


@dataclass
class FakeClock:
    t: float = 0.0
    sleeps: list[float] = field(default_factory=list)

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += max(seconds, 0.0)


class Script:
    """Returns the scripted phases in order, then repeats the last one; records when it ran."""

    def __init__(self, clock: FakeClock, phases: list[Phase]):
        self.clock, self.phases, self.times = clock, list(phases), []

    def measure(self, metric: Metric) -> Measurement:
        self.times.append(self.clock.t)
        phase = self.phases.pop(0) if len(self.phases) > 1 else self.phases[0]
        return Measurement(phase, value="1")


def metric(name: str = "m", **spec: object) -> Metric:
    return Metric.model_validate({"name": name, "provider": {"prometheus": {"query": "x"}}, **spec})


def run_one(spec: dict, phases: list[Phase], dry_run: bool = False) -> tuple[AnalysisRun, Script]:
    clock = FakeClock()
    script = Script(clock, phases)
    m = metric(**spec)
    run = AnalysisRun([m], lambda _: script, {m.name} if dry_run else set(), clock)
    run.run(max_duration=3600)
    return run, script


RULES = [
    # (rule, metric spec, scripted phases, final phase, measurements taken)
    ("no count, no interval: a single measurement", {}, [S], S, 1),
    ("count reached with successes", {"interval": "10s", "count": 3}, [S], S, 3),
    ("failureLimit 0: the first failure fails", {"interval": "10s", "count": 5}, [S, F], F, 2),
    ("failureLimit 2 fails on the 3rd failure", {"interval": "1s", "count": 5, "failureLimit": 2}, [F], F, 3),
    (
        "failures within failureLimit still succeed",
        {"interval": "1s", "count": 4, "failureLimit": 2},
        [F, F, S],
        S,
        4,
    ),
    ("failureLimit -1 never fails", {"interval": "1s", "count": 3, "failureLimit": -1}, [F], S, 3),
    (
        "inconclusive over inconclusiveLimit",
        {"interval": "1s", "count": 5, "inconclusiveLimit": 1},
        [I],
        I,
        2,
    ),
    ("inconclusiveLimit 0: first inconclusive ends it", {"interval": "1s", "count": 5}, [S, I], I, 2),
    ("consecutiveErrorLimit default 4: Error on the 5th", {"interval": "1s", "count": 3}, [E], E, 5),
    (
        "consecutiveErrorLimit 1: Error on the 2nd",
        {"interval": "1s", "count": 3, "consecutiveErrorLimit": 1},
        [E],
        E,
        2,
    ),
    ("errors do not count towards count", {"interval": "1s", "count": 2}, [E, S, E, S], S, 4),
    (
        "a success resets consecutive errors",
        {"interval": "1s", "count": 2},
        [E, E, E, E, S, E, E, E, E, S],
        S,
        10,
    ),
    ("count given as a string", {"interval": "1s", "count": "2"}, [S], S, 2),
]


@pytest.mark.parametrize(("rule", "spec", "phases", "final", "taken"), RULES, ids=[r[0] for r in RULES])
def test_rule(rule: str, spec: dict, phases: list[Phase], final: Phase, taken: int) -> None:
    run, script = run_one(spec, phases)
    assert run.phase == final
    assert len(script.times) == taken


def test_interval_spacing_and_error_retry() -> None:
    # Measurements are `interval` apart; after an Error, Argo retries in 10 s whatever the interval.
    run, script = run_one({"interval": "30s", "count": 3}, [S, E, S, S])
    assert run.phase == S
    assert script.times == [0, 30, 40, 70]


def test_initial_delay() -> None:
    _, script = run_one({"initialDelay": "1m", "interval": "5s", "count": 2}, [S])
    assert script.times == [60, 65]


def test_failed_metric_terminates_the_others_and_worst_phase_wins() -> None:
    clock = FakeClock()
    good, bad = Script(clock, [S]), Script(clock, [F])
    a = metric("a", interval="10s", count=10)
    b = metric("b", interval="10s", count=10, failureLimit=1)
    run = AnalysisRun([a, b], lambda m: good if m.name == "a" else bad, set(), clock)
    assert run.run() == F
    assert len(bad.times) == 2 and len(good.times) == 2  # "a" stopped when "b" failed
    assert run.results["a"].phase == S  # terminated with measurements: Successful
    assert "failed (2) > failureLimit (1)" in run.message


def test_worst_phase_order() -> None:
    # Inconclusive is worse than Successful; Error is worse than Inconclusive; Failed is worst.
    clock = FakeClock()
    scripts = {"s": Script(clock, [S]), "i": Script(clock, [I]), "e": Script(clock, [E])}
    metrics = [metric(n, consecutiveErrorLimit=0) for n in scripts]
    run = AnalysisRun(metrics, lambda m: scripts[m.name], set(), clock)
    assert run.run() == E


def test_dry_run_metric_failure_does_not_fail_the_run() -> None:
    clock = FakeClock()
    scripts = {"real": Script(clock, [S]), "shadow": Script(clock, [F])}
    metrics = [metric("real", interval="1s", count=3), metric("shadow", interval="1s", count=3)]
    run = AnalysisRun(metrics, lambda m: scripts[m.name], {"shadow"}, clock)
    assert run.run() == S
    assert run.results["shadow"].phase == F and run.results["shadow"].dry_run
    assert len(scripts["real"].times) == 3  # a failing dryRun metric does not terminate the run


def test_only_dry_run_metrics_is_successful() -> None:
    run, _ = run_one({"interval": "1s", "count": 2}, [F], dry_run=True)
    assert run.phase == S


def test_indefinite_metric_is_terminated_by_the_time_budget() -> None:
    clock = FakeClock()
    script = Script(clock, [S])
    run = AnalysisRun([metric(interval="10s")], lambda _: script, set(), clock)
    assert run.run(max_duration=35) == S  # Argo: a terminated run with good measurements succeeds
    assert script.times == [0, 10, 20, 30]


def test_time_budget_before_count_is_flagged() -> None:
    # Argo's terminate rule makes this Successful; the dry run must not pass it off as a verdict.
    clock = FakeClock()
    script = Script(clock, [S])
    run = AnalysisRun([metric(interval="10s", count=10)], lambda _: script, set(), clock)
    assert run.run(max_duration=25) == S
    assert run.timed_out and run.unfinished() == ["m"]

"""One AnalysisRun, reconciled the way Argo Rollouts' analysis controller does it.

`generate_tasks`, `assess_metric` and `assess_run` mirror analysis/analysis.go (v1.9): counts,
failureLimit (fails on the N+1th failure), inconclusiveLimit, consecutiveErrorLimit, errors not
counted towards `count`, initialDelay, retry after an error every 10 s, the run terminating as soon
as a non-dryRun metric is Failed/Error/Inconclusive, and the worst phase across metrics. Time comes
from a `Clock`, so the rules are unit-tested without sleeping and the demo may run faster.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from r1ops.analysis.phases import Phase, is_worse
from r1ops.analysis.spec import Metric

ERROR_RETRY_INTERVAL = 10.0  # Argo's DefaultErrorRetryInterval


@dataclass
class Measurement:
    phase: Phase
    value: str = ""
    message: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0


@dataclass
class MetricResult:
    name: str
    dry_run: bool = False
    phase: Phase = Phase.RUNNING
    measurements: list[Measurement] = field(default_factory=list)
    count: int = 0
    successful: int = 0
    failed: int = 0
    inconclusive: int = 0
    error: int = 0
    consecutive_error: int = 0
    message: str = ""


class Provider(Protocol):
    def measure(self, metric: Metric) -> Measurement: ...


class Clock(Protocol):
    def now(self) -> float: ...
    def sleep(self, seconds: float) -> None: ...


class ScaledClock:
    """Analysis time runs `speed` times faster than the wall clock (the demo's --speed)."""

    def __init__(self, speed: float = 1.0):
        self.speed = speed
        self._t0 = time.monotonic()

    def now(self) -> float:
        return (time.monotonic() - self._t0) * self.speed

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds) / self.speed)


def _limit_exceeded(value: int, limit: int) -> bool:
    return limit >= 0 and value > limit  # a negative limit (-1) disables the check


def failure_inconclusive_or_error(metric: Metric, result: MetricResult) -> tuple[Phase | None, str]:
    """Argo's assessMetricFailureInconclusiveOrError: a later check overrides an earlier one."""
    phase, message = None, ""
    if _limit_exceeded(result.failed, metric.failure_limit):
        phase, message = Phase.FAILED, f"failed ({result.failed}) > failureLimit ({metric.failure_limit})"
    if _limit_exceeded(result.inconclusive, metric.inconclusive_limit):
        phase = Phase.INCONCLUSIVE
        message = f"inconclusive ({result.inconclusive}) > inconclusiveLimit ({metric.inconclusive_limit})"
    if _limit_exceeded(result.consecutive_error, metric.consecutive_error_limit):
        phase = Phase.ERROR
        message = (
            f"consecutiveErrors ({result.consecutive_error}) > "
            f"consecutiveErrorLimit ({metric.consecutive_error_limit})"
        )
    return phase, message


def assess_metric(metric: Metric, result: MetricResult, terminating: bool) -> Phase:
    if result.phase.completed:
        return result.phase
    if not result.measurements:
        return Phase.SUCCESSFUL if terminating else Phase.PENDING
    if not result.measurements[-1].phase.completed:
        return Phase.RUNNING
    phase, _ = failure_inconclusive_or_error(metric, result)
    if phase is not None:
        return phase
    count = metric.effective_count
    if count is not None and result.count >= count:
        return Phase.SUCCESSFUL
    return Phase.SUCCESSFUL if terminating else Phase.RUNNING


class AnalysisRun:
    def __init__(
        self,
        metrics: list[Metric],
        provider_for: Callable[[Metric], Provider],
        dry_run: set[str] | None = None,
        clock: Clock | None = None,
        on_measurement: Callable[[Metric, Measurement, MetricResult], None] | None = None,
    ):
        self.metrics = metrics
        self.provider_for = provider_for
        self.dry_run = dry_run or set()
        self.clock = clock or ScaledClock()
        self.on_measurement = on_measurement
        self.results: dict[str, MetricResult] = {}
        self.phase = Phase.PENDING
        self.message = ""
        self.started_at: float | None = None
        self.terminate = False  # spec.terminate: set when the dry run's time budget runs out
        self.timed_out = False

    # --- Argo's reconcile loop -------------------------------------------------------------

    def terminating(self) -> bool:
        if self.terminate:
            return True
        return any(
            r.phase in (Phase.FAILED, Phase.ERROR, Phase.INCONCLUSIVE) and not r.dry_run
            for r in self.results.values()
        )

    def _interval_after(self, metric: Metric, last: Measurement) -> float:
        if last.phase == Phase.ERROR:
            return ERROR_RETRY_INTERVAL
        return metric.interval_seconds or ERROR_RETRY_INTERVAL

    def generate_tasks(self, now: float) -> list[Metric]:
        tasks: list[Metric] = []
        terminating = self.terminating()
        for metric in self.metrics:
            result = self.results.get(metric.name)
            if result is not None and result.phase.completed:
                continue
            if terminating:
                continue
            last = result.measurements[-1] if result and result.measurements else None
            if last is None:
                if self.started_at is None and metric.initial_delay:
                    continue
                if self.started_at is not None and self.started_at + metric.initial_delay_seconds > now:
                    continue
                tasks.append(metric)
                continue
            count = metric.effective_count
            if count is not None and result is not None and result.count >= count:
                continue
            if now >= last.finished_at + self._interval_after(metric, last):
                tasks.append(metric)
        return tasks

    def run_measurement(self, metric: Metric) -> None:
        result = self.results.setdefault(metric.name, MetricResult(metric.name, metric.name in self.dry_run))
        started = self.clock.now()
        m = self.provider_for(metric).measure(metric)
        m.started_at = m.started_at or started
        m.finished_at = m.finished_at or self.clock.now()
        if m.phase in (Phase.SUCCESSFUL, Phase.FAILED, Phase.INCONCLUSIVE):
            result.count += 1
            result.consecutive_error = 0
            if m.phase == Phase.SUCCESSFUL:
                result.successful += 1
            elif m.phase == Phase.FAILED:
                result.failed += 1
            else:
                result.inconclusive += 1
        elif m.phase == Phase.ERROR:
            result.error += 1
            result.consecutive_error += 1
        elif m.phase == Phase.SKIPPED:
            result.phase = Phase.SKIPPED
        result.measurements.append(m)
        if self.on_measurement:
            self.on_measurement(metric, m, result)

    def assess_run(self) -> Phase:
        worst: Phase | None = None
        message = ""
        terminating = self.terminating()
        everything_completed = True
        if self.started_at is None:
            self.started_at = self.clock.now()
        for metric in self.metrics:
            result = self.results.get(metric.name)
            if result is None:
                everything_completed = False  # not started yet (initialDelay)
                continue
            if result.phase == Phase.SKIPPED:
                continue  # not runnable here: reported, never part of the verdict
            status = assess_metric(metric, result, terminating)
            if status != result.phase:
                result.phase = status
                if result.measurements:
                    result.message = result.measurements[-1].message
            if not status.completed:
                everything_completed = False
                continue
            _, why = failure_inconclusive_or_error(metric, result)
            if result.dry_run:
                worst = worst or Phase.SUCCESSFUL
                continue
            if worst is None or is_worse(worst, status):
                worst = status
                message = f'Metric "{metric.name}" assessed {status} due to {why}' if why else ""
        self.message = message
        if terminating:
            return worst or Phase.SUCCESSFUL
        if not everything_completed or worst is None:
            return Phase.RUNNING
        return worst

    def unfinished(self) -> list[str]:
        """Metrics that gate the run but stopped short of their count (the run was terminated)."""
        out = []
        for metric in self.metrics:
            result = self.results.get(metric.name)
            count = metric.effective_count
            if metric.name in self.dry_run or (result and result.phase == Phase.SKIPPED) or count is None:
                continue
            if result is None or result.count < count:
                out.append(metric.name)
        return out

    def next_time(self) -> float | None:
        """Argo's calculateNextReconcileTime: the earliest moment a metric is due."""
        due: list[float] = []
        for metric in self.metrics:
            result = self.results.get(metric.name)
            if result is not None and result.phase.completed:
                continue
            last = result.measurements[-1] if result and result.measurements else None
            if last is None:
                if metric.initial_delay:
                    due.append((self.started_at or 0.0) + metric.initial_delay_seconds)
                continue
            count = metric.effective_count
            if count is not None and result is not None and result.count >= count:
                continue
            if last.phase != Phase.ERROR and not metric.interval:
                continue
            due.append(last.finished_at + self._interval_after(metric, last))
        return min(due) if due else None

    def reconcile(self) -> Phase:
        now = self.clock.now()
        for metric in self.generate_tasks(now):
            self.run_measurement(metric)
        self.phase = self.assess_run()
        return self.phase

    def run(self, max_duration: float | None = None) -> Phase:
        """Reconcile until the run completes; past `max_duration` (analysis time) it is terminated."""
        start = self.clock.now()
        while True:
            if max_duration is not None and self.clock.now() - start >= max_duration:
                self.terminate = self.timed_out = True
            phase = self.reconcile()
            if phase.completed:
                return phase
            wake = self.next_time()
            if wake is None:
                if self.terminate:
                    return phase
                self.terminate = True  # nothing left to measure: Argo would wait forever; we stop
                continue
            if max_duration is not None:
                wake = min(wake, start + max_duration)
            self.clock.sleep(wake - self.clock.now())

"""The SLO gate: at the end of a run, compare P99s and the error ratio with the thresholds.

Runs where the statistics are complete (a local run or the master), prints a rich table of what
passed and what did not, and sets the process exit code: 1 when a gated figure breaks its
threshold, or when nothing was measured at all, 0 otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from r1load.chat import E2E, TTFT


@dataclass
class Check:
    name: str
    measured: float | None
    threshold: float
    unit: str
    fmt: str = ".3f"

    @property
    def passed(self) -> bool:
        return self.measured is not None and self.measured <= self.threshold


def three_digit_buckets(response_time: float) -> int:
    """Response times rounded to 3 significant digits: Locust's default keeps 2, so a P99 read
    anywhere from 14.5 to 15.5 s is 15 s, and a 15 s gate would pass a 15.4 s one."""
    if response_time < 1000:
        return round(response_time)
    return int(round(response_time, 3 - len(str(int(response_time)))))


def use_three_digit_buckets() -> None:
    """Locust's documented hook for its response-time buckets (locust.stats.bucket_response_time):
    set in every process of a run (the locustfile does, on import), since workers bucket too."""
    import locust.stats

    locust.stats.bucket_response_time = three_digit_buckets


def _merged_p99(stats: Any, request_type: str) -> float | None:
    from locust.stats import StatsEntry

    merged = StatsEntry(stats, "all", request_type)
    for (_, method), entry in stats.entries.items():
        if method == request_type:
            merged.extend(entry)
    if merged.num_requests == 0:
        return None
    return merged.get_response_time_percentile(0.99) / 1000


def request_counts(stats: Any) -> tuple[int, int]:
    """(requests, failures) of the real HTTP requests, not of the custom timing entries."""
    from r1load.chat import CUSTOM_TYPES

    total = failed = 0
    for (_, method), entry in stats.entries.items():
        if method not in CUSTOM_TYPES:
            total += entry.num_requests  # failed requests are counted in num_requests too
            failed += entry.num_failures
    return total, failed


def checks(stats: Any, options: Any) -> list[Check]:
    out = []
    if options.slo_p99 > 0:
        out.append(Check("end-to-end latency P99", _merged_p99(stats, E2E), options.slo_p99, "s"))
    if options.slo_ttft_p99 > 0:
        out.append(Check("time to first token P99", _merged_p99(stats, TTFT), options.slo_ttft_p99, "s"))
    if options.slo_error_ratio >= 0:
        total, failed = request_counts(stats)
        out.append(Check("error ratio", failed / total if total else None, options.slo_error_ratio, ""))
    return out


def gate(environment: Any, console: Console | None = None) -> int | None:
    """Print the table and return the exit code, or None when no threshold was given."""
    results = checks(environment.stats, environment.parsed_options)
    if not results:
        return None
    # The exit code set here replaces Locust's own, which would be non-zero for a task that raised.
    raised = sum(e["count"] for e in (getattr(environment.runner, "exceptions", None) or {}).values())
    results.append(Check("exceptions raised in tasks", raised, 0, "", "d"))
    total, failed = request_counts(environment.stats)
    table = Table(title=f"SLO gate ({total} requests, {failed} failed)", title_justify="left")
    for col in ("check", "measured", "threshold", "result"):
        table.add_column(col)
    for c in results:
        shown = "no data" if c.measured is None else f"{c.measured:{c.fmt}}{c.unit}"
        verdict = "[green]PASS[/]" if c.passed else "[red]FAIL[/]"
        table.add_row(c.name, shown, f"<= {c.threshold:g}{c.unit}", verdict)
    (console or Console(stderr=True)).print(table)
    return 0 if all(c.passed for c in results) else 1

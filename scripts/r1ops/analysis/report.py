"""What the dry run prints: one line per measurement as it lands, then a table and the verdict."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from r1ops.analysis.phases import Phase
from r1ops.analysis.run import AnalysisRun, Measurement, MetricResult
from r1ops.analysis.spec import Metric

STYLE = {
    Phase.SUCCESSFUL: "green",
    Phase.FAILED: "red",
    Phase.ERROR: "magenta",
    Phase.INCONCLUSIVE: "yellow",
    Phase.SKIPPED: "dim",
    Phase.RUNNING: "cyan",
    Phase.PENDING: "cyan",
}


def make_console() -> Console:
    """Rich console; when piped (CI logs), wide enough for the tables instead of 80 columns."""
    return Console(highlight=False, width=None if sys.stdout.isatty() else 120)


def styled(phase: Phase) -> str:
    return f"[{STYLE.get(phase, 'white')}]{phase}[/]"


def measurement_printer(console: Console):
    def show(metric: Metric, m: Measurement, result: MetricResult) -> None:
        n = len(result.measurements)
        of = f"/{metric.effective_count}" if metric.effective_count else ""
        dry = " [dim](dryRun)[/]" if result.dry_run else ""
        extra = f"  [dim]{m.message}[/]" if m.message else ""
        console.print(
            f"  {metric.name}{dry} #{n}{of}: {styled(m.phase)} value={m.value or '-'}{extra}", highlight=False
        )

    return show


def summary_table(run: AnalysisRun) -> Table:
    table = Table(title="Analysis dry run", title_justify="left")
    for col in (
        "metric",
        "phase",
        "taken",
        "ok",
        "failed/limit",
        "inconcl./limit",
        "errors/limit",
        "last value",
    ):
        table.add_column(col, no_wrap=col == "metric")
    for metric in run.metrics:
        r = run.results.get(metric.name)
        if r is None:
            table.add_row(metric.name, styled(Phase.PENDING), "0", "", "", "", "", "")
            continue
        last = r.measurements[-1].value if r.measurements else ""
        name = f"{metric.name} (dryRun)" if r.dry_run else metric.name
        table.add_row(
            name,
            styled(r.phase),
            str(len(r.measurements)),
            str(r.successful),
            f"{r.failed}/{metric.failure_limit}",
            f"{r.inconclusive}/{metric.inconclusive_limit}",
            f"{r.consecutive_error}/{metric.consecutive_error_limit} ({r.error} in all)",
            last,
        )
    return table


def print_verdict(console: Console, run: AnalysisRun) -> None:
    console.print(summary_table(run))
    why = f": {run.message}" if run.message else ""
    console.print(f"AnalysisRun phase: [bold]{styled(run.phase)}[/]{why}", highlight=False)

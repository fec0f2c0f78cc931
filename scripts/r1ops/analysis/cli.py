"""`r1ops analyze`: run rendered AnalysisTemplates against a live Prometheus, with Argo's semantics."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from r1ops.analysis.phases import Phase
from r1ops.analysis.providers import provider_factory
from r1ops.analysis.report import make_console, measurement_printer, print_verdict
from r1ops.analysis.run import AnalysisRun, ScaledClock
from r1ops.analysis.spec import SpecError, build_metrics, load_templates, parse_duration, render, resolve_args

REPO = Path(__file__).resolve().parents[3]
EXIT_CODES = {Phase.SUCCESSFUL: 0, Phase.FAILED: 2, Phase.ERROR: 3, Phase.INCONCLUSIVE: 4}


def parse_args_kv(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SpecError(f"--arg expects NAME=VALUE, got {pair!r}")
        out[name] = value
    return out


def prepare(
    source: Path,
    templates: list[str] | None,
    args: dict[str, str],
    run_jobs: bool = False,
    speed: float = 1.0,
) -> AnalysisRun:
    """Load, resolve and build an AnalysisRun ready to `.run()` (used by the CLI and the demo)."""
    docs = load_templates(render(source), templates)
    values = resolve_args(docs, args)
    metrics, dry_run = build_metrics(docs, values)
    runnable = [
        m for m in metrics if m.provider_type == "prometheus" or (run_jobs and m.provider_type == "job")
    ]
    if not runnable:
        kinds = sorted({m.provider_type for m in metrics})
        raise SpecError(
            f"no metric runnable here (providers: {', '.join(kinds)}); --run-jobs runs job metrics"
        )
    return AnalysisRun(metrics, provider_factory(run_jobs, REPO / "loadtests"), dry_run, ScaledClock(speed))


def cmd_analyze(ns: argparse.Namespace) -> int:
    from r1ops.cli import CommandError

    console = make_console()
    try:
        if ns.speed <= 0:
            raise SpecError(f"--speed must be > 0, got {ns.speed:g}")
        run = prepare(Path(ns.source), ns.template, parse_args_kv(ns.arg), ns.run_jobs, ns.speed)
        max_duration = parse_duration(ns.max_duration) if ns.max_duration else None
    except SpecError as exc:
        raise CommandError(str(exc)) from None
    if ns.speed != 1.0:
        console.print(
            f"[yellow]analysis time compressed {ns.speed:g}x (--speed): intervals are shorter than Argo's[/]"
        )
    names = ", ".join(m.name for m in run.metrics)
    console.print(f"AnalysisRun over {len(run.metrics)} metric(s): {names}")
    run.on_measurement = measurement_printer(console)
    run.run(max_duration)
    print_verdict(console, run)
    if ns.json:
        Path(ns.json).write_text(json.dumps(to_json(run), indent=2))
    short = run.unfinished() if run.timed_out else []
    if short:
        # Argo calls a terminated run Successful; here the budget ran out, which proves nothing.
        console.print(
            f"[yellow]--max-duration {ns.max_duration} ended the run before {', '.join(short)} "
            "reached its count: not a verdict (exit 4)[/]"
        )
        return EXIT_CODES[Phase.INCONCLUSIVE]
    return EXIT_CODES.get(run.phase, 3)


def to_json(run: AnalysisRun) -> dict:
    return {
        "phase": str(run.phase),
        "message": run.message,
        "metrics": {name: asdict(r) for name, r in run.results.items()},
    }


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze",
        help="Argo Rollouts analysis dry run against a live Prometheus",
        description=f"{__doc__} Exit code: 0 Successful, 2 Failed, 3 Error, 4 Inconclusive or out of time, "
        "1 bad input.",
    )
    p.add_argument("source", nargs="?", default=str(REPO / "rollouts"), help="kustomize dir or YAML file")
    p.add_argument("-t", "--template", action="append", help="only this AnalysisTemplate (repeatable)")
    p.add_argument("-a", "--arg", action="append", default=[], metavar="NAME=VALUE", help="template arg")
    p.add_argument("--speed", type=float, default=1.0, help="DEMO ONLY: run intervals/delays N times faster")
    p.add_argument("--max-duration", default="15m", help="terminate the run after this (analysis time)")
    p.add_argument("--run-jobs", action="store_true", help="run `job` provider metrics' command locally")
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    p.set_defaults(func=cmd_analyze)

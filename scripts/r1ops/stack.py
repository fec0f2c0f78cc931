"""`r1ops stack` and `r1ops demo`: the canary release, on one machine.

A "stable" and a "canary" r1serve (tiny model, CPU) stand in for two ReplicaSets; a real Prometheus
scrapes them with the target labels a cluster's PodMonitor adds (namespace, pod,
rollouts_pod_template_hash), so the repo's AnalysisTemplates run unchanged. `demo` drives Locust
traffic split across both like a replica-weighted canary step and runs the analysis dry run.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.status import Status
from rich.table import Table

from r1ops.analysis.cli import to_json
from r1ops.analysis.phases import Phase
from r1ops.processes import ServerProcess
from r1ops.prometheus import PrometheusProcess, ScrapeTarget

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "r1-local"
# The misconfiguration the degraded demo ships: a canary that cannot batch.
DEGRADED_SETTINGS = {"max_num_seqs": 1}


def tiny_model_dir() -> Path:
    """The tiny checkpoint, generated once into the user's cache."""
    from r1serve.tiny_model import write_tiny_model

    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "r1-gitops" / "tiny-model"
    if not (cache / "config.json").exists():
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="tiny-", dir=cache.parent))  # same filesystem: rename is atomic
        write_tiny_model(tmp)
        try:
            tmp.rename(cache)
        except OSError:  # another process won the race: use its copy
            shutil.rmtree(tmp, ignore_errors=True)
    return cache


def template_hash(settings: dict[str, object]) -> str:
    """Stand-in for Argo's pod-template hash: same settings, same hash."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return digest[:10]


@dataclass
class Version:
    """One version of the server, as one ReplicaSet of a Rollout with a single pod."""

    role: str
    settings: dict[str, object]
    server: ServerProcess | None = None

    @property
    def hash(self) -> str:
        return template_hash(self.settings)

    @property
    def pod(self) -> str:
        return f"deepseek-r1-{self.hash}-0"

    def target(self) -> ScrapeTarget:
        assert self.server is not None
        labels = {"pod": self.pod, "rollouts_pod_template_hash": self.hash, "role": self.role}
        return ScrapeTarget(f"{self.server.host}:{self.server.port}", labels)


@dataclass
class LocalStack:
    workdir: Path
    versions: list[Version]
    console: Console = field(default_factory=Console)
    prometheus: PrometheusProcess | None = None

    def start(self, exits: ExitStack) -> LocalStack:
        """Starts the servers and Prometheus (stopped by `exits`); one that does not come up is a
        CommandError: its message, not a traceback."""
        from r1ops.cli import CommandError

        try:
            return self._start(exits)
        except (RuntimeError, TimeoutError, OSError) as exc:  # PrometheusError is a RuntimeError
            raise CommandError(str(exc)) from exc

    def _start(self, exits: ExitStack) -> LocalStack:
        with self.console.status("writing the tiny model"):
            model = tiny_model_dir()
        for v in self.versions:
            v.server = ServerProcess(model, settings=v.settings, log_path=self.workdir / f"{v.role}.log")
            exits.callback(v.server.stop)
        roles = ", ".join(f"{v.role} ({_describe(v.settings)})" for v in self.versions)
        with (
            self.console.status(f"starting the servers: {roles}"),
            ThreadPoolExecutor(len(self.versions)) as pool,
        ):
            # Started together: each spends seconds importing torch and loading weights.
            for future in [pool.submit(v.server.start) for v in self.versions if v.server]:
                future.result()
        for v in self.versions:
            assert v.server is not None and v.server.proc is not None
            self.console.print(f"  {v.role:<7} {v.server.base_url}  hash={v.hash}  pid={v.server.proc.pid}")
        with self.console.status("starting Prometheus"):
            self.prometheus = PrometheusProcess(
                [v.target() for v in self.versions],
                labels={"namespace": NAMESPACE},
                log_path=self.workdir / "prometheus.log",
            )
            exits.callback(self.prometheus.stop)
            self.prometheus.start()
            self.prometheus.wait_for("count(up == 1)", lambda n: n == len(self.versions), timeout=30)
        assert self.prometheus.proc is not None
        self.console.print(f"  prometheus {self.prometheus.url}  pid={self.prometheus.proc.pid}")
        return self

    def version(self, role: str) -> Version:
        return next(v for v in self.versions if v.role == role)


def _describe(settings: dict[str, object]) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items() if k != "model_revision") or "defaults"


def versions(degraded_canary: bool, canary: bool = True) -> list[Version]:
    out = [Version("stable", {"model_revision": "stable"})]
    if canary:
        canary_settings: dict[str, object] = {"model_revision": "canary"}
        if degraded_canary:
            canary_settings.update(DEGRADED_SETTINGS)
        out.append(Version("canary", canary_settings))
    return out


def locust_command(
    stack: LocalStack, weights: dict[str, int], users: int, run_time: str, csv_prefix: Path, max_tokens: str
) -> list[str]:
    split = ",".join(f"{v.role}@{v.server.base_url}={weights[v.role]}" for v in stack.versions if v.server)
    return [
        str(Path(sys.executable).with_name("locust")),
        "-f",
        str(REPO / "loadtests" / "locustfile.py"),
        "--headless",
        "--only-summary",
        "--users",
        str(users),
        "--spawn-rate",
        str(users),
        "--run-time",
        run_time,
        "--host",
        stack.versions[0].server.base_url,  # type: ignore[union-attr]
        "--split",
        split,
        "--max-tokens",
        max_tokens,
        "--stream-ratio",
        "0.75",
        "--csv",
        str(csv_prefix),
    ]


def _terminate_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt so the ExitStack stops every child (no orphans)."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def cmd_stack(ns: argparse.Namespace) -> int:
    _terminate_on_sigterm()
    console = Console()
    with ExitStack() as exits, tempfile.TemporaryDirectory(prefix="r1-stack-") as tmp:
        stack = LocalStack(Path(tmp), versions(ns.degraded_canary, not ns.no_canary), console).start(exits)
        console.print(
            f"[green]stack ready[/] (namespace={NAMESPACE}; logs in {tmp}). Try:\n"
            f"  r1ops analyze -t inference-p99-latency --arg namespace={NAMESPACE} "
            f"--arg canary-hash={stack.versions[-1].hash} --arg p99-threshold-seconds=5 "
            f"--arg prometheus-address={stack.prometheus.url}\n"  # type: ignore[union-attr]
            "Ctrl-C stops everything.",
            highlight=False,
            soft_wrap=True,
        )
        sys.stdout.flush()
        while True:
            for v in stack.versions:
                if v.server and v.server.proc and v.server.proc.poll() is not None:
                    console.print(f"[red]the {v.role} server exited ({v.server.proc.returncode})[/]")
                    return 1
            time.sleep(1)


ANALYSIS_TEMPLATES = ["inference-p99-latency", "inference-error-rate", "inference-p99-vs-stable"]
VERDICTS = {
    Phase.SUCCESSFUL: "[green]Successful: the Rollout would continue to the next step[/]",
    Phase.FAILED: "[red]Failed: the Rollout would abort and scale the canary down[/]",
    Phase.ERROR: "[magenta]Error: the Rollout would abort (the gate could not measure)[/]",
    Phase.INCONCLUSIVE: "[yellow]Inconclusive: the Rollout would pause for a human[/]",
}


def load_summary(csv_prefix: Path) -> Table:
    """Per-target figures from Locust's own CSV (the custom TTFT/E2E/TOKENS/S entries)."""
    rows: dict[str, dict[str, str]] = {}
    stats = Path(f"{csv_prefix}_stats.csv")
    with suppress(FileNotFoundError), stats.open() as f:
        for r in csv.DictReader(f):
            rows[f"{r['Type']} {r['Name']}"] = r
    table = Table(title="Load (Locust)", title_justify="left")
    for col in ("target", "requests", "failed", "E2E P99", "TTFT P99", "tokens/s (median)"):
        table.add_column(col)
    for role in ("stable", "canary"):
        posts = [r for k, r in rows.items() if k.startswith("POST") and k.endswith(f" {role}]")]
        if not posts:
            continue

        def pick(kind: str, mode: str = "stream", col: str = "99%", role: str = role) -> str:
            return rows.get(f"{kind} {mode} {role}", {}).get(col, "-")

        table.add_row(
            role,
            str(sum(int(r["Request Count"]) for r in posts)),
            str(sum(int(r["Failure Count"]) for r in posts)),
            f"{pick('E2E')} ms",
            f"{pick('TTFT')} ms",
            pick("TOKENS/S", col="50%"),
        )
    return table


def cmd_demo(ns: argparse.Namespace) -> int:
    from r1ops.analysis.cli import prepare
    from r1ops.analysis.report import make_console, measurement_printer, print_verdict
    from r1ops.analysis.spec import SpecError, parse_duration
    from r1ops.cli import CommandError

    if not (math.isfinite(ns.speed) and ns.speed > 0):
        raise CommandError(f"--speed must be a number > 0, got {ns.speed:g}")
    _terminate_on_sigterm()
    console = make_console()
    mode = "degraded canary (max_num_seqs=1)" if ns.degraded_canary else "healthy canary"
    console.rule(f"Local canary release: {mode}")
    started = time.monotonic()
    with ExitStack() as exits:
        workdir = ns.out or Path(exits.enter_context(tempfile.TemporaryDirectory(prefix="r1-demo-")))
        workdir.mkdir(parents=True, exist_ok=True)
        stack = LocalStack(workdir, versions(ns.degraded_canary), console).start(exits)
        stable, canary = stack.version("stable"), stack.version("canary")
        assert stack.prometheus is not None
        args = {
            "namespace": NAMESPACE,
            "canary-hash": canary.hash,
            "stable-hash": stable.hash,
            "p99-threshold-seconds": str(ns.p99_threshold),
            "prometheus-address": stack.prometheus.url,
            "count": str(ns.count),
            "interval": ns.interval,
        }
        try:
            run = prepare(REPO / "rollouts", ANALYSIS_TEMPLATES, args, speed=ns.speed)
            budget = max(m.initial_delay_seconds for m in run.metrics) + ns.count * parse_duration(
                ns.interval
            )
        except SpecError as exc:
            raise CommandError(str(exc)) from None
        weights = {"stable": 100 - ns.canary_weight, "canary": ns.canary_weight}
        run_time = f"{int(budget / ns.speed) + 60}s"
        csv_prefix = workdir / "locust"
        cmd = locust_command(stack, weights, ns.users, run_time, csv_prefix, ns.max_tokens)
        with (workdir / "locust.log").open("wb") as log:
            locust = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        exits.callback(_stop, locust)
        _wait_started(locust, csv_prefix, workdir / "locust.log")
        console.print(
            f"  locust     {ns.users} users, {weights['canary']}% to the canary, pid={locust.pid}\n"
            f"analysis: {', '.join(ANALYSIS_TEMPLATES)} (count={ns.count}, interval={ns.interval}"
            + (f", time compressed {ns.speed:g}x" if ns.speed != 1 else "")
            + f"); about {budget / ns.speed:.0f}s"
        )
        run.on_measurement = measurement_printer(console)
        with console.status("load running; waiting for the first measurements (initialDelay)") as status:
            ticker = _Ticker(status, csv_prefix, started)
            ticker.start()
            try:
                run.run(max_duration=budget * 2)
            finally:
                ticker.stop()
        _stop(locust)
        console.print(load_summary(csv_prefix))
        print_verdict(console, run)
        console.print(f"Verdict: {VERDICTS.get(run.phase, run.phase)}  ({time.monotonic() - started:.0f}s)")
        if ns.out:
            (workdir / "analysis.json").write_text(json.dumps(to_json(run), indent=2))
        expected = Phase.FAILED if ns.degraded_canary else Phase.SUCCESSFUL
        if run.timed_out and run.unfinished():
            console.print(
                f"[red]the analysis ran out of time before {', '.join(run.unfinished())} finished[/]"
            )
            return 1
        if run.phase != expected:
            console.print(f"[red]unexpected: the {mode} should end {expected}[/]")
            return 1
        return 0


class _Ticker(threading.Thread):
    """Keeps the spinner's text current: elapsed time and Locust's request count so far."""

    def __init__(self, status: Status, csv_prefix: Path, started: float):
        super().__init__(daemon=True)
        self.status, self.csv_prefix, self.started = status, csv_prefix, started
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(1.0):
            requests = failures = 0
            with suppress(OSError, ValueError, KeyError), Path(f"{self.csv_prefix}_stats.csv").open() as f:
                for r in csv.DictReader(f):
                    if r["Type"] == "POST":
                        requests += int(r["Request Count"])
                        failures += int(r["Failure Count"])
            elapsed = time.monotonic() - self.started
            self.status.update(
                f"{elapsed:.0f}s: load running, {requests} requests ({failures} failed); analysing"
            )

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=2)


def _wait_started(locust: subprocess.Popen, csv_prefix: Path, log: Path, timeout: float = 30) -> None:
    """Fail fast, with Locust's own words, when it does not start (a bad flag, a missing package)."""
    from r1ops.cli import CommandError

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not Path(f"{csv_prefix}_stats.csv").exists():
        if locust.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise CommandError(f"locust exited with {locust.returncode}: {tail[0]}")
        time.sleep(0.5)


def _stop(proc: subprocess.Popen, timeout: float = 15) -> None:
    if proc.poll() is None:
        proc.terminate()  # Locust stops its users and writes the final CSV
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stack", help="run stable + canary servers and Prometheus locally until Ctrl-C")
    p.add_argument("--degraded-canary", action="store_true", help="the canary cannot batch (max_num_seqs=1)")
    p.add_argument("--no-canary", action="store_true", help="only the stable server")
    p.set_defaults(func=cmd_stack)

    d = sub.add_parser(
        "demo",
        help="local canary release: load, Prometheus, analysis verdict (~2 min)",
        description="Exit 0 when the verdict is the expected one (Failed with --degraded-canary).",
    )
    d.add_argument(
        "--degraded-canary", action="store_true", help="the canary cannot batch: the gate must fail it"
    )
    d.add_argument("--users", type=int, default=8, help="concurrent Locust users (default 8)")
    d.add_argument("--max-tokens", default="96", help="Locust max_tokens distribution (default 96)")
    d.add_argument(
        "--canary-weight", type=int, default=50, help="percent of traffic to the canary (default 50)"
    )
    d.add_argument("--count", type=int, default=3, help="measurements per metric (template arg `count`)")
    d.add_argument("--interval", default="10s", help="between measurements (template arg `interval`)")
    d.add_argument("--p99-threshold", type=float, default=30.0, help="seconds (template arg, default 30)")
    d.add_argument("--speed", type=float, default=1.0, help="compress analysis time (initialDelay) N times")
    d.add_argument("--out", type=Path, help="keep logs, Locust CSV/HTML and the analysis JSON here")
    d.set_defaults(func=cmd_demo)

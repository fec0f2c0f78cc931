"""`r1ops analyze` as a user runs it: exit codes and one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from r1ops.processes import ServerProcess, free_port

REPO = Path(__file__).resolve().parents[2]


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "r1ops.cli", "analyze", *args]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
    )


def test_unreachable_prometheus_is_an_error_not_a_pass() -> None:
    # The real template: consecutiveErrorLimit 2, so the 3rd failed query ends the run in Error.
    out = analyze(
        str(REPO / "rollouts"), "-t", "inference-p99-latency",
        "--arg", "namespace=x", "--arg", "canary-hash=abc", "--arg", "p99-threshold-seconds=1",
        "--arg", f"prometheus-address=http://127.0.0.1:{free_port()}", "--speed", "200",
    )  # fmt: skip
    assert out.returncode == 3, out.stdout + out.stderr
    assert "consecutiveErrors (3) > consecutiveErrorLimit (2)" in out.stdout
    assert "AnalysisRun phase: Error" in out.stdout


def test_missing_value_from_arg_is_one_line() -> None:
    out = analyze(str(REPO / "rollouts"), "-t", "inference-p99-latency", "--arg", "namespace=x")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "r1ops analyze: args need a value: canary-hash, p99-threshold-seconds; pass --arg NAME=VALUE"
    ]


def test_unsupported_condition_is_named_before_any_query(tmp_path: Path) -> None:
    template = tmp_path / "t.yaml"
    template.write_text(
        "apiVersion: argoproj.io/v1alpha1\nkind: AnalysisTemplate\nmetadata: {name: t}\nspec:\n"
        "  metrics:\n  - name: m\n    successCondition: result | len() > 0\n"
        f"    provider: {{prometheus: {{address: 'http://127.0.0.1:{free_port()}', query: up}}}}\n"
    )
    out = analyze(str(template))
    assert out.returncode == 1
    assert "metric 'm': successCondition: the pipe operator '|' is not supported" in out.stderr


def test_bad_speed_and_arg_syntax() -> None:
    assert "--speed must be > 0" in analyze(str(REPO / "rollouts"), "--speed", "0").stderr
    assert "NAME=VALUE" in analyze(str(REPO / "rollouts"), "--arg", "novalue").stderr


@pytest.mark.slow
def test_job_metric_runs_locust_locally_with_run_jobs(live_server: ServerProcess) -> None:
    # inference-preview-load's Job runs `locust -f /loadtests/locustfile.py ...`; --run-jobs runs it here.
    common = [
        str(REPO / "rollouts"),
        "-t",
        "inference-preview-load",
        "--arg",
        f"preview-url={live_server.base_url}",
    ]
    skipped = analyze(*common)
    assert skipped.returncode == 1 and "no metric runnable here" in skipped.stderr
    out = analyze(*common, "--arg", "run-time=4s", "--arg", "users=2", "--run-jobs")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "preview-load #1/1: Successful value=exit 0" in out.stdout


def test_time_budget_is_not_a_pass() -> None:
    out = analyze(
        str(REPO / "rollouts"), "-t", "inference-error-rate", "--max-duration", "1ms",
        "--arg", "namespace=x", "--arg", "canary-hash=y", "--arg", f"prometheus-address=http://127.0.0.1:{free_port()}",
    )  # fmt: skip
    assert out.returncode == 4, out.stdout
    assert "not a verdict" in out.stdout

"""Real Locust runs against a real r1serve on 127.0.0.1: headless, SLO gate, distributed."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from r1ops.processes import ServerProcess, free_port

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
LOCUST = [str(Path(sys.executable).with_name("locust")), "-f", str(REPO / "loadtests" / "locustfile.py")]


def locust(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LOCUST, *args], capture_output=True, text=True, timeout=timeout)


def stats(prefix: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(f"{prefix}_stats.csv") as f:
        return {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}


def test_headless_run_reports_llm_metrics_and_passes_the_gate(
    live_server: ServerProcess, tmp_path: Path
) -> None:
    out = locust(
        "--headless", "-u", "4", "-r", "4", "-t", "6s", "--host", live_server.base_url,
        "--stream-ratio", "0.5", "--max-tokens", "8-32",
        "--slo-p99", "60", "--slo-ttft-p99", "30", "--slo-error-ratio", "0.0",
        "--csv", str(tmp_path / "run"), "--html", str(tmp_path / "run.html"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    rows = stats(tmp_path / "run")
    for kind, name in [("TTFT", "stream"), ("ITL", "stream"), ("E2E", "stream"), ("E2E", "non-stream"),
                       ("TOKENS/S", "stream"), ("POST", "/v1/chat/completions [non-stream]")]:  # fmt: skip
        assert int(rows[kind, name]["Request Count"]) > 0, (kind, name)
    assert rows["POST", "/v1/chat/completions [stream]"]["Failure Count"] == "0"
    assert "SLO gate" in out.stderr and "FAIL" not in out.stderr
    assert (tmp_path / "run.html").stat().st_size > 10_000


def test_slo_gate_fails_the_run(live_server: ServerProcess, tmp_path: Path) -> None:
    out = locust(
        "--headless", "-u", "2", "-r", "2", "-t", "4s", "--host", live_server.base_url,
        "--max-tokens", "16", "--slo-p99", "0.001", "--slo-error-ratio", "0.5",
    )  # fmt: skip
    assert out.returncode == 1
    gate = out.stderr[out.stderr.index("SLO gate") :]
    assert "end-to-end latency P99" in gate and "FAIL" in gate and "PASS" in gate  # error ratio passes


def test_errors_break_the_error_ratio(tmp_path: Path) -> None:
    # Nothing listens on this port: every request fails, and the gate says so.
    out = locust("--headless", "-u", "1", "-t", "3s", "--host", f"http://127.0.0.1:{free_port()}",
                 "--model", "x", "--slo-error-ratio", "0.01")  # fmt: skip
    assert out.returncode == 1
    assert "error ratio" in out.stderr and "1.000" in out.stderr


@pytest.mark.parametrize(
    ("flag", "message"),
    [("--max-tokens=0", "--max-tokens"), ("--split=ftp://x=1", "not an http"), ("--stream-ratio=2", "0..1")],
)
def test_bad_flags_exit_with_one_line(flag: str, message: str) -> None:
    out = locust("--headless", "-u", "1", "-t", "1s", "--host", "http://127.0.0.1:9", flag)
    assert out.returncode == 2
    assert message in out.stderr.strip().splitlines()[-1]


def test_distributed_master_and_worker(live_server: ServerProcess, tmp_path: Path) -> None:
    port = free_port()
    master = subprocess.Popen(
        [*LOCUST, "--master", "--headless", "--expect-workers", "1", "-u", "4", "-r", "4", "-t", "6s",
         "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port), "--host", live_server.base_url,
         "--max-tokens", "8-16", "--slo-error-ratio", "0", "--csv", str(tmp_path / "dist")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    worker = subprocess.Popen(
        [*LOCUST, "--worker", "--master-host", "127.0.0.1", "--master-port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        master_out, _ = master.communicate(timeout=90)
        worker_out, _ = worker.communicate(timeout=30)
    finally:
        for p in (master, worker):
            if p.poll() is None:
                p.kill()
    assert master.returncode == 0, master_out[-2000:]
    assert worker.returncode == 0, worker_out[-2000:]
    rows = stats(tmp_path / "dist")
    assert int(rows["E2E", "stream"]["Request Count"]) > 0  # the worker's custom metrics reach the master
    assert master_out.count("SLO gate") == 1 and "SLO gate" not in worker_out

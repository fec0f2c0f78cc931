"""Real Locust runs against a real r1serve on 127.0.0.1: headless, SLO gate, distributed."""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


class _HalfBrokenStreams(BaseHTTPRequestHandler):
    """Every other stream is cut off after its first chunk, as a crashed or restarted server cuts it.
    A stand-in, said so: r1serve does not break streams on purpose, and this is what the load test
    must count when something does."""

    protocol_version = "HTTP/1.1"
    served = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).served += 1
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        events = [
            {"choices": [{"delta": {"content": "hi"}}]},
            {"choices": [], "usage": {"completion_tokens": 1}},
        ]
        for i, event in enumerate(events):
            self._chunk(f"data: {json.dumps(event)}\n\n")
            if i == 0 and self.served % 2:
                self.connection.shutdown(socket.SHUT_RDWR)  # mid-stream: no more chunks, no end
                self.close_connection = True
                return
        self._chunk("data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")

    def _chunk(self, text: str) -> None:
        data = text.encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def log_message(self, *_args: object) -> None:
        pass


def test_streams_broken_off_are_failures(tmp_path: Path) -> None:
    """A stream cut after its headers once escaped Locust's accounting: neither a request nor a
    failure, so the error ratio read 0 and the gate passed."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HalfBrokenStreams)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        host = f"http://127.0.0.1:{server.server_port}"
        out = locust(
            "--headless", "-u", "2", "-r", "2", "-t", "3s", "--host", host, "--model", "x",
            "--stream-ratio", "1", "--slo-error-ratio", "0.01", "--csv", str(tmp_path / "cut"),
        )  # fmt: skip
    finally:
        server.shutdown()
    assert out.returncode == 1, out.stderr[-2000:]
    row = stats(tmp_path / "cut")["POST", "/v1/chat/completions [stream]"]
    assert int(row["Failure Count"]) > 0 and int(row["Request Count"]) > int(row["Failure Count"])
    assert "response broken off" in (tmp_path / "cut_failures.csv").read_text()
    assert "exceptions raised in tasks" in out.stderr

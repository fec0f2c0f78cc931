"""`r1ops stack`: servers and Prometheus come up labelled like a cluster, and Ctrl-C leaves no orphans."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes; only a running process would be an orphan.
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@contextmanager
def _r1ops(
    args: list[str], cache: Path, until: str, also: str = "", path: str | None = None
) -> Iterator[tuple[subprocess.Popen, str]]:
    """`r1ops ARGS` running (with PATH `path` if given), with its output read up to the first line
    holding `until` (and `also`); killed on the way out if the test left it running."""
    env = dict(os.environ, XDG_CACHE_HOME=str(cache), COLUMNS="200", PATH=path or os.environ["PATH"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "r1ops.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if until in line and also in line:
                break
        yield proc, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()


def _assert_no_orphans(pids: list[int]) -> None:
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in pids if _alive(p)], "orphaned children"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")  # the tiny model is written once, on first use


@pytest.mark.parametrize(
    ("stop_signal", "flags", "children"),
    [(signal.SIGINT, [], 3), (signal.SIGTERM, ["--no-canary"], 2)],
    ids=["ctrl-c", "sigterm"],
)
def test_stack_stops_every_child(
    stop_signal: signal.Signals, flags: list[str], children: int, cache: Path
) -> None:
    with _r1ops(["stack", *flags], cache, until="stack ready") as (proc, text):
        pids = [int(p) for p in re.findall(r"pid=(\d+)", text)]
        assert len(pids) == children, text  # stable, [canary,] prometheus
        prometheus = re.search(r"prometheus (http://127\.0\.0\.1:\d+)", text).group(1)
        hashes = dict(re.findall(r"(stable|canary)\s+http\S+\s+hash=(\w+)", text))
        series = httpx.get(f"{prometheus}/api/v1/query", params={"query": "up"}).json()["data"]["result"]
        labels = {s["metric"]["rollouts_pod_template_hash"]: s["metric"] for s in series}
        assert set(labels) == set(hashes.values())
        assert all(
            m["namespace"] == "r1-local" and m["pod"].startswith("deepseek-r1-") for m in labels.values()
        )
        proc.send_signal(stop_signal)
        assert proc.wait(timeout=60) in (0, 130)
    _assert_no_orphans(pids)


def test_demo_interrupted_under_load_leaves_no_orphans(cache: Path, tmp_path: Path) -> None:
    with _r1ops(["demo", "--out", str(tmp_path)], cache, until="pid=", also="locust") as (proc, text):
        pids = [int(p) for p in re.findall(r"pid=(\d+)", text)]
        assert len(pids) == 4, text  # stable, canary, prometheus, locust
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 130, rest
        assert "interrupted" in rest
    _assert_no_orphans(pids)


def test_a_part_that_does_not_start_is_one_line_and_stops_the_rest(cache: Path, tmp_path: Path) -> None:
    """No Prometheus on PATH: the servers already up are stopped, and the reason is one line."""
    with _r1ops(["stack", "--no-canary"], cache, until="r1ops stack:", path=str(tmp_path)) as (proc, text):
        assert proc.wait(timeout=60) == 1
    assert "r1ops stack: prometheus not found on PATH" in text and "Traceback" not in text
    _assert_no_orphans([int(p) for p in re.findall(r"pid=(\d+)", text)])


@pytest.mark.parametrize("speed", ["0", "nan"])
def test_demo_refuses_a_speed_that_is_not_positive(cache: Path, speed: str) -> None:
    with _r1ops(["demo", "--speed", speed], cache, until="r1ops demo:") as (proc, text):
        assert proc.wait(timeout=30) == 1
    assert text.strip() == f"r1ops demo: --speed must be a number > 0, got {speed}"

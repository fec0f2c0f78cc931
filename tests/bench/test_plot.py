"""python -m bench.plot: runs compared in one PNG; a file without online results is a one-line error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LEVELS = [
    {"concurrency": c, "output_tok_s": 100.0 * c, "ttft_p99_ms": 20.0 + c, "itl_p99_ms": 3.0 + c / 8}
    for c in (1, 8, 64)
]


def plot(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench.plot", *args], cwd=REPO, capture_output=True, text=True, check=False
    )


def test_two_runs_in_one_png(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / f"{name}.json").write_text(json.dumps({"online": LEVELS}))
    out = tmp_path / "cmp.png"
    done = plot(f"{tmp_path / 'a.json'}:process", f"{tmp_path / 'b.json'}:thread", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_run_without_online_results_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "decode.json").write_text(json.dumps({"decode_b1": {}}))
    done = plot(str(tmp_path / "decode.json"), "--out", str(tmp_path / "x.png"))
    assert done.returncode != 0
    assert done.stderr.strip() == f"python -m bench.plot: {tmp_path / 'decode.json'} has no online results"

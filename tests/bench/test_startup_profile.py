"""python -m bench.startup_profile: its phases and code sites from sampled stacks, and one real run on
the tiny model (CPU). Timing is not asserted: only that the samples account for the start-up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.startup_profile import IMPORTS, phase_of, site_of

R1 = "/srv/server/r1serve/"
BUILD = [
    ("<string>", "<module>", 1),
    (R1 + "engine/loader.py", "build_engine", 40),
    (R1 + "model_runner.py", "__init__", 140),
    (R1 + "model_runner.py", "_build", 160),
]


def test_a_sample_falls_in_the_step_its_stack_is_under() -> None:
    in_load = [*BUILD, (R1 + "model/loader.py", "load_model", 137), ("/venv/torch/_tensor.py", "copy_", 9)]
    assert phase_of(in_load) == "model_runner.py:_build > loader.py:load_model"
    importing = [BUILD[0], BUILD[1], ("<frozen importlib._bootstrap>", "_find_and_load", 1)]
    assert phase_of(importing) == "loader.py:build_engine > imports"
    assert phase_of([BUILD[0], ("/venv/torch/__init__.py", "<module>", 3)]) == IMPORTS


def test_a_site_is_the_innermost_r1serve_frame_and_the_leaf() -> None:
    # torch's __init__.py is not ours, though r1serve has files of that name too
    stack = [*BUILD, (R1 + "model/loader.py", "load_model", 137), ("/venv/torch/__init__.py", "empty", 5)]
    assert site_of(stack, R1) == "loader.py:load_model:137 | __init__.py:empty:5"
    assert site_of([("/venv/torch/__init__.py", "<module>", 3)], R1) == "- | __init__.py:<module>:3"


def test_a_real_start_up_is_accounted_for(tiny_model_dir: Path, tmp_path: Path, repo_root: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.startup_profile", str(tiny_model_dir), "--device", "cpu",
         "--interval-ms", "1", "--out", str(tmp_path)],
        cwd=repo_root, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "by start-up step" in done.stdout
    result = json.loads((tmp_path / "startup-profile.json").read_text())
    phases = result["phases_s"]
    # every sample lands in a phase: they add up to the time from the start to the engine built
    assert abs(sum(phases.values()) - result["built_s"]) < 0.05 * result["built_s"] + 0.02
    assert any(name.startswith("model_runner.py:_build > ") for name in phases), phases
    assert "loader.py:build_engine > imports" in phases  # torch, with the engine

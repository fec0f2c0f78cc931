"""Every overlay and app tree renders with kustomize and passes the upstream schemas and policies;
the `r1ops render` / `r1ops validate` commands report it the same way."""

from __future__ import annotations

from pathlib import Path

import pytest
from r1ops.cli import main
from r1ops.render import RenderError, render_overlay, validate_rendered

from .conftest import ENVS, TREES, find


@pytest.mark.parametrize("tree", list(TREES))
def test_tree_is_valid(rendered: dict[str, str], tree: str) -> None:
    assert validate_rendered(rendered[tree]) == []


@pytest.mark.parametrize("env", ENVS)
def test_overlay_namespace_and_release_is_not_applied(objects: dict, env: str) -> None:
    objs = objects[env]
    assert find(objs, "Namespace")["metadata"]["name"] == f"ai-inference-{env}"
    namespaced = [o for o in objs if o["kind"] != "Namespace"]
    assert {o["metadata"].get("namespace") for o in namespaced} == {f"ai-inference-{env}"}
    # release.yaml is local-config: it feeds the replacements and is never applied.
    assert not [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "release"]


def test_validate_command_passes_on_the_repo(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate"]) == 0
    out = capsys.readouterr().out
    assert "valid: dev, prod, staging, apps, bootstrap, observability" in out


def test_render_command_prints_a_summary_and_yaml(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps at 80 columns when not on a terminal
    assert main(["render", "prod"]) == 0
    out = capsys.readouterr().out
    assert "Rollout" in out and "deepseek-r1" in out and "ghcr.io/example-org/r1serve:" in out
    assert main(["render", "prod", "--yaml"]) == 0
    assert "kind: Rollout" in capsys.readouterr().out


def test_unknown_environment_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "qa"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("r1ops render: unknown environment 'qa'") and "\n" not in err


def test_broken_overlay_fails_render_with_kustomize_message(stack_copy: Path) -> None:
    overlay = stack_copy / "overlays" / "dev"
    text = (overlay / "kustomization.yaml").read_text()
    (overlay / "kustomization.yaml").write_text(text.replace("../../base", "../../no-such-base"))
    with pytest.raises(RenderError, match=r"kustomize build .* failed"):
        render_overlay(overlay)


def test_validate_command_fails_on_a_policy_violation(
    stack_copy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    release = stack_copy / "overlays" / "staging" / "release.yaml"
    release.write_text(release.read_text().replace("r1serve:0.1.0", "r1serve:latest"))
    monkeypatch.chdir(stack_copy)
    assert main(["validate", "staging"]) == 1
    out = capsys.readouterr().out
    assert "uses :latest" in out and "invalid: staging" in out

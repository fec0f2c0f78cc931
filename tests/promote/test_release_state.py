"""release.yaml round-trip edits and the promotion path file."""

from __future__ import annotations

from pathlib import Path

import pytest
from r1ops.cli import CommandError
from r1ops.release_state import (
    PromotionPath,
    ReleaseFile,
    ReleaseState,
    add_promotion,
    describe_changes,
    promotion_path,
)

RELEASE = """\
# Promotable state of staging: the only file `r1ops promote` edits.
apiVersion: v1
kind: ConfigMap
metadata:
  name: release
  annotations:
    config.kubernetes.io/local-config: "true"
data:
  # CI bumps this after every build.
  image: ghcr.io/acme/r1serve:1.4.2   # the server image
  model: deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B
  modelRevision: "1234567"
"""


def test_edit_keeps_comments_and_quoting_and_changes_only_the_values(tmp_path: Path) -> None:
    path = tmp_path / "release.yaml"
    path.write_text(RELEASE)
    release = ReleaseFile(path)
    new = release.state.model_copy(update={"image": "ghcr.io/acme/r1serve:1.5.0", "modelRevision": "abcdef0"})
    text = release.text_with(new)
    changed = [(a, b) for a, b in zip(RELEASE.splitlines(), text.splitlines(), strict=True) if a != b]
    assert changed == [
        (
            "  image: ghcr.io/acme/r1serve:1.4.2   # the server image",
            "  image: ghcr.io/acme/r1serve:1.5.0   # the server image",
        ),
        ('  modelRevision: "1234567"', '  modelRevision: "abcdef0"'),
    ]


def test_a_numeric_looking_revision_stays_a_string(tmp_path: Path) -> None:
    path = tmp_path / "release.yaml"
    path.write_text(RELEASE.replace('"1234567"', "abcdef0"))
    release = ReleaseFile(path)
    path.write_text(release.text_with(release.state.model_copy(update={"modelRevision": "0042"})))
    assert ReleaseFile(path).state.modelRevision == "0042"


def test_describe_changes_names_only_what_moved() -> None:
    old = ReleaseState(image="ghcr.io/acme/r1serve:1.4.2", model="org/m", modelRevision="a" * 40)
    new = old.model_copy(update={"image": "ghcr.io/acme/r1serve:1.5.0", "modelRevision": "b" * 40})
    summary = "r1serve 1.4.2 -> 1.5.0, model rev aaaaaaaaaaaa -> bbbbbbbbbbbb"
    assert describe_changes(old.changes_to(new)) == summary
    moved = old.model_copy(update={"image": "quay.io/other/r1serve:2.0"})
    summary = "image ghcr.io/acme/r1serve:1.4.2 -> quay.io/other/r1serve:2.0"
    assert describe_changes(old.changes_to(moved)) == summary
    assert old.changes_to(old) == {}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: t.replace("1.4.2", "latest"), "data.image"),
        (lambda t: t.replace('"1234567"', '""'), "data.modelRevision: Value error, '' is not a git revision"),
        (lambda t: t.replace("data:", "spec:"), "not a release ConfigMap"),
        (lambda t: t[: t.index("data:")] + "data:\n", "not a release ConfigMap"),  # data: null
        (lambda t: t.replace("deepseek-ai/", "../../"), "data.model: Value error, '../../DeepSeek"),
    ],
)
def test_a_broken_release_file_is_one_clear_error(tmp_path: Path, mutate, message: str) -> None:
    path = tmp_path / "release.yaml"
    path.write_text(mutate(RELEASE))
    with pytest.raises(CommandError, match=message):
        ReleaseFile(path)


def test_promotion_path_file(tmp_path: Path) -> None:
    (tmp_path / "overlays").mkdir()
    file = tmp_path / "overlays" / "promotion.yaml"
    file.write_text("# who may promote into whom\npromotions:\n  dev: [staging]\n  staging: [prod]\n")
    path = promotion_path(tmp_path)
    assert path.first == "dev"
    assert path.allows("staging", "prod")
    assert not path.allows("dev", "prod") and not path.allows("prod", "dev")
    add_promotion(tmp_path, "staging", "prod-eu")
    assert promotion_path(tmp_path).promotions["staging"] == ["prod", "prod-eu"]
    assert file.read_text().startswith("# who may promote into whom\n")
    with pytest.raises(ValueError, match="promoted into itself"):
        PromotionPath(promotions={"dev": ["dev"]})
    file.write_text("promotions: {}\n")
    with pytest.raises(CommandError, match="promotions is empty"):
        promotion_path(tmp_path)

"""Every overlay, every Argo CD app and the observability manifests pass the real API server's
validation (server-side dry run) with all CRDs installed: schemas, defaulting and admission, which
rendering alone cannot show."""

from __future__ import annotations

from pathlib import Path

import pytest
from r1ops.e2e.deploy import dump, ensure_namespaces, kustomize, namespaces_of
from r1ops.e2e.kubectl import Kubectl

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
# observability/ is what the platform app `observability` syncs.
PATTERNS = ("overlays/*/kustomization.yaml", "apps/**/kustomization.yaml", "observability/kustomization.yaml")
TARGETS = sorted(p.parent.relative_to(REPO) for pattern in PATTERNS for p in REPO.glob(pattern))


def _is_component(path: Path) -> bool:
    return "kind: Component" in (REPO / path / "kustomization.yaml").read_text()


@pytest.mark.parametrize("target", [t for t in TARGETS if not _is_component(t)], ids=str)
def test_server_side_dry_run(kubectl: Kubectl, target: Path) -> None:
    docs = kustomize(kubectl, REPO / target)
    assert docs, f"{target} renders nothing"
    ensure_namespaces(kubectl, namespaces_of(docs))
    out = kubectl.run("apply", "--dry-run=server", "--server-side", "-f", "-", stdin=dump(docs))
    # One line per object, each one accepted by the API server (kubectl fails on the first rejection).
    assert len([line for line in out.splitlines() if "(server dry run)" in line]) == len(docs)

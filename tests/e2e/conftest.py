"""Fixtures of the e2e tier: the built toolchain and one real control plane for the session.

Each test works in its own namespace and stops every process it started (fixtures with
finalizers), so a failing test leaves nothing behind but its logs under pytest's tmp dir.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from r1ops.e2e.build import Toolchain, ensure
from r1ops.e2e.cluster import Cluster
from r1ops.e2e.kubectl import Kubectl
from r1ops.e2e.scenario import Scenario

OVERLAYS = Path(__file__).resolve().parent / "overlays"


@pytest.fixture(scope="session")
def toolchain() -> Toolchain:
    return ensure()


@pytest.fixture(scope="session")
def cluster(toolchain: Toolchain, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(toolchain, tmp_path_factory.mktemp("cluster")) as c:
        yield c


@pytest.fixture
def kubectl(cluster: Cluster) -> Kubectl:
    return cluster.kubectl


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:30].strip("-")
    name = f"t-{slug}-{uuid.uuid4().hex[:5]}"
    cluster.kubectl.run("create", "namespace", name)
    yield name
    cluster.check_alive()
    cluster.kubectl.run("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def scenario(
    cluster: Cluster, namespace: str, tiny_model_dir: Path, tmp_path: Path
) -> Iterator[Callable[[str], Scenario]]:
    """Factory: scenario("canary") -> a started Scenario on tests/e2e/overlays/canary, stopped after."""
    with contextlib.ExitStack() as stack:

        def make(case: str) -> Scenario:
            overlay = OVERLAYS / case
            return stack.enter_context(Scenario(cluster, namespace, overlay, tiny_model_dir, tmp_path / case))

        yield make

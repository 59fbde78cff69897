"""The demo-model world shared by the cluster and wandb tests (built once per session, in seconds)."""

from __future__ import annotations

import pytest

from tests.cluster.demo_world import DemoWorld, make_demo_world


@pytest.fixture(scope="session")
def demo_world(tmp_path_factory: pytest.TempPathFactory) -> DemoWorld:
    return make_demo_world(tmp_path_factory.mktemp("demo_world"))

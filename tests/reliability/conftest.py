"""Fixtures of the bad-input suite: tiny checkpoint files, and the tiny on-disk world of the end-to-end tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.reliability.contract import Checkpoints
from tests.support.checkpoints import make_checkpoints
from tests.support.world import World, make_world


@pytest.fixture()
def ckpts(tmp_path: Path) -> Checkpoints:
    pre, fts = make_checkpoints(num_tasks=3, seed=1)
    root = tmp_path / "inputs"
    root.mkdir()
    torch.save(pre, root / "zeroshot.pt")
    paths = []
    for i, ft in enumerate(fts):
        torch.save(ft, root / f"ft{i}.pt")
        paths.append(root / f"ft{i}.pt")
    return Checkpoints(root, root / "zeroshot.pt", paths, pre, fts)



@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """Checkpoints, heads, datasets and accuracies of a tiny CLIP for two tasks (read-only: copy before changing)."""
    return make_world(tmp_path_factory.mktemp("world"), datasets=["MNIST", "EuroSAT"], missing_head=False)

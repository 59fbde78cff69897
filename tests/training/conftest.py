"""A tiny world (open_clip model, fixture datasets, published layouts) for fine-tuning tests, the simulated CUDA,
and reading back the checkpoints finetune.py writes (its command line and runner: :mod:`tests.support.finetuning`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.support.fake_cuda import FakeCuda
from tests.support.finetuning import DATASETS
from tests.support.world import MODEL, World, make_world


@pytest.fixture(scope="session")
def ft_world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("ft_world"), DATASETS)


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> FakeCuda:
    """``torch.cuda`` replaced by :class:`tests.support.fake_cuda.FakeCuda` (2 GPUs) for the test."""
    return FakeCuda().install(monkeypatch)


def load_checkpoint(out: Path, dataset: str, kind: str = "finetuned") -> dict[str, torch.Tensor]:
    path = out / "checkpoints" / MODEL / f"{dataset}Val" / f"nonlinear_{kind}.pt"
    return torch.load(path, map_location="cpu", weights_only=True)

"""Tests of the GPU paths. Those marked ``gpu`` need CUDA and are skipped without it (``make gpu-check`` runs them);
the others check, on CPU, how the library drives ``torch.cuda`` (through :mod:`tests.support.fake_cuda`)."""

from __future__ import annotations

import pytest

from tests.support.fake_cuda import FakeCuda
from tests.support.finetuning import DATASETS
from tests.support.world import World, make_world


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one); run by `make gpu-check`")


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> FakeCuda:
    return FakeCuda().install(monkeypatch)


@pytest.fixture(scope="session")
def ft_world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """The tiny fine-tuning world (as in tests/training), for finetune.py on GPUs."""
    return make_world(tmp_path_factory.mktemp("ft_world"), DATASETS)

"""Tests of the GPU paths. Those marked ``gpu`` need CUDA and are skipped without it (``make gpu-check`` runs them);
the others check, on CPU, how the library drives ``torch.cuda`` (through :mod:`tests.gpu.fake_cuda`)."""

from __future__ import annotations

import pytest

from tests.gpu.fake_cuda import FakeCuda
from tests.training.conftest import ft_world  # noqa: F401  (the tiny fine-tuning world, for finetune.py on GPUs)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one); run by `make gpu-check`")


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> FakeCuda:
    return FakeCuda().install(monkeypatch)

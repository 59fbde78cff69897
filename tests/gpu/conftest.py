"""Tests of the GPU paths. Those marked ``gpu`` need CUDA and are skipped without it (``make gpu-check`` runs them);
the others check, on CPU, how the library drives ``torch.cuda`` (through :mod:`tests.gpu.fake_cuda`)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one); run by `make gpu-check`")

"""Markers and comparisons shared by the CUDA tests."""

from __future__ import annotations

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
GPU_COUNT = torch.cuda.device_count() if HAS_CUDA else 0

#: Every CUDA test: marked ``gpu`` and skipped without a GPU.
gpu = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")]
two_gpus = pytest.mark.skipif(GPU_COUNT < 2, reason="needs 2 GPUs")


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """‖got − want‖_F / ‖want‖_F (float64, on the CPU)."""
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    return float(torch.linalg.vector_norm(got - want) / torch.linalg.vector_norm(want).clamp_min(1e-30))


def mismatch_fraction(got: torch.Tensor, want: torch.Tensor, atol: float, rtol: float = 0.0) -> float:
    """Fraction of entries outside ``atol + rtol·|want|``: masks and thresholds may flip a few borderline entries."""
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    bad = (got - want).abs() > atol + rtol * want.abs()
    return float(bad.double().mean()) if bad.numel() else 0.0

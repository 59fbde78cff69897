"""The plain TSV-M baseline of the benchmarks is the definition: it equals SPEC §3's float64 reference, wide and
zero-padded concatenations included, and its accuracy contract reads as the benchmarks state it."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from tests.support import spec_reference as ref

_PATH = Path(__file__).resolve().parents[2] / "bench" / "reference_tsvm.py"
_spec = importlib.util.spec_from_file_location("bench_reference_tsvm", _PATH)
reference_tsvm = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("bench_reference_tsvm", reference_tsvm)  # its dataclass looks its module up there
_spec.loader.exec_module(reference_tsvm)


@pytest.mark.parametrize("shape", [(40, 24), (24, 40), (30, 20)])  # tall, wide, r mod T != 0 (zero-padded columns)
def test_plain_baseline_in_float64_is_the_definition(shape):
    g = torch.Generator().manual_seed(0)
    deltas = torch.randn(3, *shape, generator=g, dtype=torch.float64)
    plain = reference_tsvm.plain_tsvm(deltas, torch.float64)
    assert ref.relative_error(plain, ref.tsvm(list(deltas))) < 1e-12


def test_plain_baseline_in_float32_is_within_float32_round_off():
    deltas = torch.stack(ref.task_matrices(4, 64, 48, seed=1))
    definition = reference_tsvm.plain_tsvm(deltas, torch.float64)
    assert reference_tsvm.relative_error(reference_tsvm.plain_tsvm(deltas), definition) < 1e-4


def test_accuracy_contract():
    assert reference_tsvm.within_contract(2e-5, 1e-5)
    assert not reference_tsvm.within_contract(3e-4, 1e-4)
    assert reference_tsvm.within_contract(9e-5, 1e-6)  # the baseline below 5e-5: up to 1e-4 allowed
    assert not reference_tsvm.within_contract(2e-4, 1e-6)

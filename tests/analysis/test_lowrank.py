"""Spectra, Procrustes error and rank truncation on hand-built task matrices."""

from __future__ import annotations

import math

import pytest
import torch

from tests.support.checkpoints import make_checkpoints
from tsvmerge.analysis.interference import decompose_layer
from tsvmerge.analysis.procrustes import procrustes_table
from tsvmerge.analysis.spectra import energy_curve, layer_spectra, rank_for_energy
from tsvmerge.analysis.truncation import factorize_task, truncation_rank
from tsvmerge.merging import TaskVectors

KEY = "model.visual.transformer.resblocks.0.mlp.c_proj.weight"


def _unit(c: float, n: int) -> torch.Tensor:
    """A unit vector with cosine ``c`` to e0 (in the plane of e0 and e1)."""
    v = torch.zeros(n)
    v[0], v[1] = c, math.sqrt(1 - c * c)
    return v


def _pair(cu: float, cv: float) -> TaskVectors:
    """Two rank-1 tasks on 3×2 matrices (r = 2, T = 2, so k = 1): Û = [u1, u2] with u1ᵀu2 = cu, V̂ likewise."""
    theta0 = {KEY: torch.zeros(3, 2)}
    e3, e2 = torch.eye(3), torch.eye(2)
    ft1 = {KEY: 2.0 * torch.outer(e3[0], e2[0])}
    ft2 = {KEY: 1.0 * torch.outer(_unit(cu, 3), _unit(cv, 2))}
    return TaskVectors(theta0, [ft1, ft2], names=["A", "B"])


def _expected(c: float) -> float:
    """Û = [u1, u2] with cosine c has singular values √(1±c); ‖Û − U⊥‖F = ‖d − 1‖ = √((√(1+c)−1)² + (√(1−c)−1)²)."""
    return math.sqrt((math.sqrt(1 + c) - 1) ** 2 + (math.sqrt(1 - c) - 1) ** 2)


@pytest.mark.parametrize(("cu", "cv"), [(0.0, 0.0), (0.3, 0.7), (0.9, 0.1)])
def test_procrustes_error_matches_the_hand_computed_case(cu, cv):
    entry = procrustes_table(_pair(cu, cv))["per_entry"][KEY]
    assert entry["k"] == 1
    low = entry["low_rank"]
    assert low["U"] == pytest.approx(_expected(cu), abs=1e-5)
    assert low["V"] == pytest.approx(_expected(cv), abs=1e-5)
    assert low["U_relative"] == pytest.approx(_expected(cu) / math.sqrt(2), abs=1e-5)  # ‖Û‖F = √2 (unit columns)


def test_procrustes_error_full_rank_is_the_distance_of_the_singular_values_to_one():
    theta0, finetuned = make_checkpoints(num_tasks=3)
    tasks = TaskVectors(theta0, finetuned)
    table = procrustes_table(tasks)
    for key, entry in table["per_entry"].items():
        layer = decompose_layer(tasks.entry(key).deltas())
        for rank, tsv in (("full_rank", layer.full), ("low_rank", layer.low_rank())):
            for factor, matrix in (("U", tsv.U), ("V", tsv.V)):
                d = torch.linalg.svdvals(matrix.double())
                assert entry[rank][factor] == pytest.approx(float(torch.linalg.vector_norm(d - 1)), rel=1e-4)
        # full rank concatenates T·r unit vectors in an r-dimensional space: never orthonormal
        assert entry["full_rank"]["U"] > entry["low_rank"]["U"]


def test_energy_and_rank_for_energy():
    s = torch.tensor([3.0, 2.0, 1.0])  # energies 9, 4, 1 of 14
    assert energy_curve(s).tolist() == pytest.approx([9 / 14, 13 / 14, 1.0])
    assert rank_for_energy(s, 0.5) == 1
    assert rank_for_energy(s, 0.9) == 2
    assert rank_for_energy(s, 13 / 14) == 2
    assert rank_for_energy(s, 0.95) == 3


def test_layer_spectra_are_the_singular_values_of_each_task_matrix():
    theta0, finetuned = make_checkpoints(num_tasks=2)
    tasks = TaskVectors(theta0, finetuned, names=["A", "B"])
    spectra = layer_spectra(tasks)
    assert set(spectra["per_entry"]) == {k for k in theta0 if theta0[k].ndim == 2 and "text_projection" not in k
                                         and "token_embedding" not in k}
    for key, entry in spectra["per_entry"].items():
        for t, name in enumerate(("A", "B")):
            expected = torch.linalg.svdvals(finetuned[t][key] - theta0[key])
            assert entry["singular_values"][name] == pytest.approx(expected.tolist(), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize(("fraction", "rank", "k"), [(1.0, 768, 768), (1 / 8, 768, 96), (0.3, 10, 3), (0.7, 10, 7),
                                                     (0.001, 10, 1), (0.5, 1, 1)])
def test_truncation_rank(fraction, rank, k):
    assert truncation_rank(fraction, rank) == k


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_truncation_rank_rejects_fractions_outside_0_1(fraction):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        truncation_rank(fraction, 10)


def test_truncated_task_vector_is_the_best_rank_k_approximation_and_exact_at_fraction_1():
    theta0, finetuned = make_checkpoints(num_tasks=2)
    tasks = TaskVectors(theta0, finetuned)
    factors = factorize_task(tasks, 1)
    tau = {k: finetuned[1][k] - theta0[k] for k in theta0 if theta0[k].is_floating_point()
           and not torch.equal(finetuned[1][k], theta0[k])}
    full = dict(factors.truncated(1.0))
    assert set(full) == set(tau)
    for key, value in full.items():
        assert torch.allclose(value, tau[key], atol=1e-5), key
    assert "model.text_projection" in factors.matrices, "text_projection is truncated like every matrix (TSV-C)"
    for key, value in factors.truncated(0.25):
        if key in factors.matrices:
            s = torch.linalg.svdvals(tau[key])
            k = truncation_rank(0.25, s.numel())
            assert torch.linalg.matrix_rank(value).item() == k
            # Eckart-Young: the error is the energy of the dropped singular values
            error = torch.linalg.matrix_norm(value - tau[key])
            assert error.item() == pytest.approx(float(s[k:].square().sum().sqrt()), rel=1e-4)
        else:
            assert torch.equal(value, tau[key]), "non-matrix entries are kept whole"

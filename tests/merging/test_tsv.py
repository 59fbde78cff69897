"""TSV-M, TSV-M (whitening), TSV-C and the ablations against SPEC §3 and the paper's propositions."""

import pytest
import torch

from tests.support import spec_reference as ref
from tsvmerge.merging.svd import gram_polar_factor, polar_factor
from tsvmerge.merging.tsv import (
    mean_of_tasks,
    orthogonalize,
    task_singular_vectors,
    tsv_compress_matrix,
    tsv_merge_matrix,
    uses_svd,
)

SHAPES = [(48, 32), (32, 48), (40, 40), (96, 24)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("num_tasks", [1, 3, 5])
def test_tsvm_matches_naive_definition(shape, num_tasks):
    deltas = ref.task_matrices(num_tasks, *shape, seed=num_tasks)
    merged = tsv_merge_matrix(torch.stack(deltas))
    assert merged.dtype == torch.float32
    assert ref.relative_error(merged, ref.tsvm(deltas)) < 1e-5


@pytest.mark.parametrize("svd", ["exact", "full"])
def test_tsvm_solvers_match_naive_definition(svd):
    deltas = ref.task_matrices(4, 160, 64, seed=7)
    merged = tsv_merge_matrix(torch.stack(deltas), svd=svd)
    assert ref.relative_error(merged, ref.tsvm(deltas)) < 1e-5


def test_all_zero_task_is_skipped_but_still_counts_in_k():
    deltas = ref.task_matrices(3, 30, 24, seed=1)
    deltas.insert(1, torch.zeros(30, 24))
    merged = tsv_merge_matrix(torch.stack(deltas))
    # naive: k = 24 // 4 = 6 per task, only the three non-zero tasks are concatenated
    assert ref.relative_error(merged, ref.tsvm(deltas)) < 1e-5
    assert task_singular_vectors(torch.stack(deltas)).s.numel() == 3 * 6


def test_all_zero_layer_merges_to_zero():
    assert not tsv_merge_matrix(torch.zeros(4, 8, 6)).any()


def test_procrustes_has_orthonormal_columns():
    tsv = task_singular_vectors(torch.stack(ref.task_matrices(4, 64, 48, seed=3)))
    ortho = orthogonalize(tsv, "procrustes")
    eye = torch.eye(tsv.s.numel())
    assert torch.allclose(ortho.U.T @ ortho.U, eye, atol=1e-5)
    assert torch.allclose(ortho.V.T @ ortho.V, eye, atol=1e-5)


def test_procrustes_is_the_nearest_orthonormal_matrix():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(20, 8, generator=g, dtype=torch.float64)
    W = polar_factor(A)
    best = (A - W).norm()
    for _ in range(50):  # random orthonormal competitors are never closer
        Q, _ = torch.linalg.qr(torch.randn(20, 8, generator=g, dtype=torch.float64))
        assert (A - Q).norm() >= best - 1e-12


def test_polar_factor_tall_path_equals_direct_svd():
    A = torch.randn(300, 40, dtype=torch.float64)
    assert torch.allclose(polar_factor(A), ref.procrustes(A), atol=1e-10)


def _concatenated_bases(rows: int, num_tasks: int, k: int, *, overlap: float = 0.0, seed: int = 0) -> torch.Tensor:
    """T orthonormal k-column blocks side by side, like TSV-M's Û; ``overlap`` tilts block 1 onto block 0."""
    g = torch.Generator().manual_seed(seed)
    blocks = [torch.linalg.qr(torch.randn(rows, k, generator=g))[0] for _ in range(num_tasks)]
    blocks[1] = torch.linalg.qr((1 - overlap) * blocks[1] + overlap * blocks[0])[0]
    return torch.cat(blocks, dim=1)


@pytest.mark.parametrize("overlap", [0.0, 0.5, 0.95])
def test_polar_factor_float32_tall_inputs_match_float64(overlap):
    """Tall inputs take the Gram route when well conditioned and QR + SVD otherwise: both to ~1e-5."""
    U = _concatenated_bases(1200, 8, 40, overlap=overlap)
    assert ref.relative_error(polar_factor(U), ref.procrustes(U.double())) < 1e-5


def test_gram_polar_factor_is_close_and_finite_on_square_ill_conditioned_inputs():
    """The randomized mode's Procrustes: exact on well-conditioned inputs, bounded on square ones."""
    tall = _concatenated_bases(1200, 8, 40)
    assert ref.relative_error(gram_polar_factor(tall), ref.procrustes(tall.double())) < 1e-5
    square = _concatenated_bases(320, 8, 40, overlap=0.9)  # cond ~ 10^3 and more
    P = gram_polar_factor(square)
    assert torch.isfinite(P).all()
    assert ref.relative_error(P, ref.procrustes(square.double())) < 0.1
    assert ref.relative_error(gram_polar_factor(square.T), ref.procrustes(square.double()).T) < 0.1


def test_whitening_matches_its_definition_and_equals_procrustes():
    """Prop. 4.1: TSVM_2 equals TSVM on well-conditioned inputs (here in float32, up to round-off)."""
    deltas = ref.task_matrices(4, 64, 48, seed=5)
    whitened = tsv_merge_matrix(torch.stack(deltas), orthogonalization="whitening")
    assert ref.relative_error(whitened, ref.tsvm_whitening(deltas)) < 1e-3
    assert ref.relative_error(whitened, tsv_merge_matrix(torch.stack(deltas))) < 1e-3
    exact64 = tsv_merge_matrix(torch.stack(deltas).double(), orthogonalization="whitening")
    assert ref.relative_error(exact64, ref.tsvm(deltas)) < 1e-8


def test_single_task_full_rank_returns_the_task_vector():
    delta = ref.task_matrices(1, 24, 16, seed=2)[0]
    assert ref.relative_error(tsv_merge_matrix(delta[None]), delta) < 1e-5


def test_low_rank_only_is_sum_of_truncations():
    deltas = ref.task_matrices(3, 36, 24, seed=4)
    merged = tsv_merge_matrix(torch.stack(deltas), orthogonalization="none")
    expected = sum(ref.rank_k(d, 8) for d in deltas)
    assert ref.relative_error(merged, expected) < 1e-5


def test_interference_only_with_full_rank():
    deltas = ref.task_matrices(2, 20, 12, seed=6)
    merged = tsv_merge_matrix(torch.stack(deltas), k=12)
    U, s, V = ref.concatenated(deltas, 12)
    expected = ref.procrustes(U) @ torch.diag(s) @ ref.procrustes(V).T
    assert ref.relative_error(merged, expected) < 1e-5


@pytest.mark.parametrize("shape", [(40, 24), (24, 40)])
def test_tsvc_reconstruction_error_equals_tail_singular_values(shape):
    """Eckart–Young: ‖Δ − Δ_k‖_F² = Σ_{j>k} σ_j²."""
    deltas = ref.task_matrices(4, *shape, seed=8)
    factors = tsv_compress_matrix(torch.stack(deltas))
    k = min(shape) // 4
    for delta, compressed in zip(deltas, factors):
        assert compressed.U.shape == (shape[0], k) and compressed.V.shape == (shape[1], k)
        assert compressed.numel == k * (sum(shape) + 1)
        tail = torch.linalg.svdvals(delta.double())[k:]
        error = (delta.double() - compressed.materialize().double()).norm()
        assert error == pytest.approx(float(tail.norm()), rel=1e-4)


def test_text_projection_and_vectors_are_averaged():
    assert not uses_svd("model.text_projection", (512, 512))
    assert uses_svd("model.text_projection", (512, 512), include_text_projection=True)
    assert not uses_svd("visual.ln_post.weight", (768,))
    assert not uses_svd("visual.conv1.weight", (768, 3, 32, 32))
    deltas = torch.randn(3, 5)
    assert torch.allclose(mean_of_tasks(deltas), deltas.sum(0) / 3)


def test_sign_ambiguity_does_not_change_the_result():
    deltas = ref.task_matrices(3, 30, 20, seed=9)
    flipped = [-d for d in deltas]
    assert ref.relative_error(tsv_merge_matrix(torch.stack(flipped)), -tsv_merge_matrix(torch.stack(deltas))) < 1e-5


def test_gram_polar_factor_uses_the_known_orthonormal_blocks():
    U = _concatenated_bases(600, 6, 30, overlap=0.5)
    assert ref.relative_error(gram_polar_factor(U, block_size=30), gram_polar_factor(U)) < 1e-5
    with pytest.raises(ValueError, match="blocks of 7"):
        gram_polar_factor(U, block_size=7)

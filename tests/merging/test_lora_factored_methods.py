"""Iso-C, Iso-CTS, DC-Merge and CART on LoRA updates: the factored merge equals the dense merge of the materialized
updates, the rank-deficiency rule makes the dense merge independent of round-off, and full-rank inputs still give
the published definitions (the naive float64 references of ``tests.support.spec_beyond_reference``)."""

from __future__ import annotations

import pytest
import torch

from tests.support import spec_beyond_reference as ref
from tests.support.spec_reference import relative_error
from tsvmerge.checkpoints.peft_adapter import LoRAFactors
from tsvmerge.merging import build_method
from tsvmerge.merging.isotropic import iso_c_matrix, iso_cts_matrix
from tsvmerge.merging.task_vectors import TaskEntry
from tsvmerge.merging.tsv import LowRankFactors, significant_components

CPU = torch.device("cpu")
#: A key every method treats as a matrix, and CART as one of its low-rank (attention) entries.
KEY = "model.layers.0.self_attn.q_proj.weight"
TOLERANCE = 1e-5

METHODS = [
    ("iso_c", {}),
    ("iso_cts", {}),
    ("iso_cts", {"common_space_fraction": 0.5}),
    ("dc_merge", {}),
    ("dc_merge", {"density": 0.05}),
    ("cart", {"prior": 0.5, "rank_ratio": 0.25}),
    ("cart", {"prior": 2.0, "rank_ratio": 0.12}),
]

# (rows, cols), one LoRA rank per task (None: the task leaves the entry unchanged). Tall, wide and square; for
# r = 64 and T = 3, DC-Merge keeps k = 21 per task (25 is above), CART k = 16 (ρ = 0.25), Iso-CTS k = 4 (f = 0.8)
# or 11 (f = 0.5), so ranks fall on both sides of every method's k. As for real adapters, the ranks add up to less
# than Iso-CTS' common size except in the last case (f = 0.5: c = 32 < 40, a residual that is not zero).
CASES = [
    ((64, 64), [4, 8, 3]),
    ((64, 64), [25, 4, None]),
    ((96, 40), [6, 12]),
    ((40, 96), [2, None, 12]),
    ((96, 48), [20, 5]),
    ((48, 96), [9, 6]),
    ((64, 64), [40, None]),
]


def lora_updates(rows: int, cols: int, ranks: list[int | None], seed: int) -> tuple[torch.Tensor, list]:
    """θ0 and one LoRA update per task (PEFT's conventions: B [rows, r], A [r, cols], scale α / r)."""
    g = torch.Generator().manual_seed(seed)
    base = 0.02 * torch.randn(rows, cols, generator=g)
    updates = [None if rank is None else LoRAFactors(0.05 * torch.randn(rows, rank, generator=g),
                                                     torch.randn(rank, cols, generator=g) / cols**0.5, 16 / rank)
               for rank in ranks]
    return base, updates


def factored_entry(base: torch.Tensor, updates: list, key: str = KEY) -> TaskEntry:
    return TaskEntry(key, base, [base.clone() if u is None else u for u in updates], CPU)


def dense_entry(base: torch.Tensor, updates: list, key: str = KEY) -> TaskEntry:
    """The same tasks as float32 fine-tuned tensors θ0 + ΔW, as a materialized adapter folder holds them."""
    return TaskEntry(key, base, [base.clone() if u is None else base + u.materialize() for u in updates], CPU)


def dense_merge(method, entry: TaskEntry) -> torch.Tensor:
    return method.merge_entry(entry).task_vector


# ---------------------------------------------------------------------------------------- factored == dense

@pytest.mark.parametrize(("name", "params"), METHODS)
@pytest.mark.parametrize(("shape", "ranks"), CASES)
def test_the_factored_merge_equals_the_dense_merge_of_the_materialized_updates(name, params, shape, ranks):
    base, updates = lora_updates(*shape, ranks, seed=sum(shape) + len(ranks))
    method = build_method(name, params)
    assert method.merges_factors()
    factors = method.merge_factors(factored_entry(base, updates))
    assert isinstance(factors, LowRankFactors)
    merged = factors.materialize()
    expected = dense_merge(method, dense_entry(base, updates))
    assert merged.shape == expected.shape and merged.dtype == torch.float32
    assert relative_error(merged, expected) <= TOLERANCE
    # a low-rank result: never more components than the updates have in all
    assert factors.s.numel() <= sum(rank or 0 for rank in ranks)


@pytest.mark.parametrize(("name", "params"), METHODS)
def test_entries_that_are_not_low_rank_matrices_are_the_mean_of_the_updates(name, params):
    # text_projection is averaged by every method (entry rules); visual.proj is a matrix but not a CART key.
    for key in ("model.text_projection", "model.visual.proj"):
        if key == "model.visual.proj" and name != "cart":
            continue
        base, updates = lora_updates(48, 32, [3, None, 5], seed=4)
        method = build_method(name, params)
        factors = method.merge_factors(factored_entry(base, updates, key))
        mean = torch.stack([u.materialize() if u is not None else torch.zeros(48, 32) for u in updates]).mean(0)
        assert relative_error(factors.materialize(), mean) < 1e-6
        assert relative_error(dense_merge(method, dense_entry(base, updates, key)), mean) < 1e-5


def test_iso_cts_keeps_the_projection_on_the_first_dimension_in_the_factored_path():
    # Ranks above the common size (c = 24, k = 12 for f = 0.5): two tasks keep residual components.
    base, updates = lora_updates(96, 48, [30, 30, None], seed=3)
    method = build_method("iso_cts", {"common_space_fraction": 0.5})
    direct = method.merge_factors(factored_entry(base, updates)).materialize()
    assert relative_error(direct, dense_merge(method, dense_entry(base, updates))) <= TOLERANCE
    transposed = [None if u is None else LoRAFactors(u.A.mT, u.B.mT, u.scale) for u in updates]
    through_transpose = method.merge_factors(factored_entry(base.mT, transposed)).materialize().mT
    assert relative_error(through_transpose, direct) > 1e-2


def test_an_iso_c_result_is_a_flat_spectrum_over_the_range_of_the_sum():
    base, updates = lora_updates(64, 48, [4, 8, 3], seed=2)
    factors = build_method("iso_c").merge_factors(factored_entry(base, updates))
    total = sum(u.materialize().double() for u in updates)
    s = torch.linalg.svdvals(total)
    assert factors.s.numel() == 15  # the rank of the sum, not r = 48
    torch.testing.assert_close(factors.s.double(), torch.full((15,), float(s.sum()) / 48, dtype=torch.float64),
                               rtol=1e-5, atol=0)


# ----------------------------------------------------------------------------- independent of round-off

@pytest.mark.parametrize(("name", "params"), METHODS)
@pytest.mark.parametrize(("shape", "ranks"), [((64, 64), [4, 8, 3]), ((96, 40), [2, None, 5])])
def test_the_dense_merge_of_low_rank_updates_does_not_depend_on_round_off(name, params, shape, ranks):
    """Two copies of θ0 that differ by 1e-7 relative round θ0 + ΔW differently: the null directions of the
    materialized updates are then different noise, which the published definitions would turn into different
    merges; with numerically zero components carrying no direction, both give the factored result."""
    base, updates = lora_updates(*shape, ranks, seed=21)
    g = torch.Generator().manual_seed(5)
    other = base * (1 + 1e-7 * torch.randn(base.shape, generator=g))
    method = build_method(name, params)
    first = dense_merge(method, dense_entry(base, updates))
    second = dense_merge(method, dense_entry(other, updates))
    assert relative_error(first, second) <= TOLERANCE
    assert relative_error(first, method.merge_factors(factored_entry(base, updates)).materialize()) <= TOLERANCE


def test_the_published_definitions_do_depend_on_round_off_there():
    # The literal float64 references on the same two inputs: their null-space choices differ (B6).
    base, updates = lora_updates(64, 64, [4, 8, 3], seed=21)
    g = torch.Generator().manual_seed(5)
    other = base * (1 + 1e-7 * torch.randn(base.shape, generator=g))
    first, second = (dense_entry(b, updates).deltas() for b in (base, other))
    assert relative_error(ref.iso_c(list(first)), ref.iso_c(list(second))) > 1e-2
    assert relative_error(ref.iso_cts(list(first)), ref.iso_cts(list(second))) > 1e-2


# ------------------------------------------------------------------------- full rank: the published methods

def full_rank_deltas(num_tasks: int, rows: int, cols: int, seed: int) -> torch.Tensor:
    """Fine-tuning-like task matrices: a few strong directions on a full-rank floor."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(num_tasks, rows, 3, generator=g) @ torch.randn(num_tasks, 3, cols, generator=g)
    return 1e-2 * (low / 3 + 0.5 * torch.randn(num_tasks, rows, cols, generator=g))


@pytest.mark.parametrize(("shape", "num_tasks"), [((48, 48), 2), ((48, 48), 3), ((60, 24), 1), ((60, 24), 3),
                                                  ((24, 60), 1), ((24, 60), 2)])
def test_full_rank_inputs_still_give_the_published_definitions(shape, num_tasks):
    # (A single square task is left out: its own smallest singular value can fall under numpy's rank tolerance, and
    # one task cannot tell such a matrix from a low-rank one; see tsvmerge.merging.isotropic.)
    deltas = full_rank_deltas(num_tasks, *shape, seed=20 + num_tasks)
    as_list = list(deltas)
    for name, params, expected in [
        ("iso_c", {}, ref.iso_c(as_list)),
        ("iso_cts", {}, ref.iso_cts(as_list)),
        ("iso_cts", {"common_space_fraction": 0.5}, ref.iso_cts(as_list, 0.5)),
        ("dc_merge", {"density": 0.05}, ref.dc_merge(as_list, 0.05)),
        ("cart", {"prior": 1.5, "rank_ratio": 0.25}, ref.cart(as_list, KEY, 1.5, 0.25)),
    ]:
        base = torch.zeros(shape)
        entry = TaskEntry(KEY, base, [base + d for d in deltas], CPU)
        assert relative_error(dense_merge(build_method(name, params), entry), expected) < 1e-4, name


def test_iso_c_keeps_tiny_but_real_singular_values_of_a_full_rank_sum():
    """A square full-rank sum whose smallest singular value lies below numpy's rank tolerance (as most 768 × 768
    sums of fine-tuning deltas do) keeps that direction: the tasks' ranks fill r, so nothing is a null direction."""
    g = torch.Generator().manual_seed(3)
    n = 48
    U, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    s = torch.linspace(1.0, 0.05, n, dtype=torch.float64)
    s[-1] = 2e-6  # above float32 round-off, below max(m, n)·eps = 5.7e-6
    total = (U * s) @ V.mT
    noise = 0.3 * torch.randn(n, n, generator=g, dtype=torch.float64)
    deltas = torch.stack([total / 2 + noise, total / 2 - noise]).float()
    assert not bool(significant_components(torch.linalg.svdvals(deltas.sum(0)), n, n).all())
    expected = ref.iso_c(list(deltas))
    assert relative_error(iso_c_matrix(deltas), expected) < 1e-4
    assert relative_error(iso_cts_matrix(deltas), ref.iso_cts(list(deltas))) < 1e-4

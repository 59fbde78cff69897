"""Top-k%, TIES, TALL and consensus on hand-computed 1-D examples (SPEC §3)."""

import pytest
import torch

from tsvmerge.merging.sparsify import (
    consensus_mask,
    disjoint_merge,
    elect_sign,
    keep_top,
    resolve_zero_signs,
    tall_mask,
    tall_mask_levels,
    ties_merge,
    topk_threshold,
)


def test_topk_threshold_follows_published_rule():
    mags = torch.tensor([0.1, 0.5, 0.2, 0.9, 0.3, 0.7, 0.4, 0.8, 0.6, 1.0])
    # d = 10, k = 20% → keep entries ≥ the (10 − 2) = 8th smallest = 0.8 → three entries
    assert topk_threshold(mags, 20) == pytest.approx(0.8)
    assert topk_threshold(mags, 50) == pytest.approx(0.5)
    assert topk_threshold(mags, 100) is None
    with pytest.raises(ValueError):
        topk_threshold(mags, 0)


def test_keep_top_zeroes_small_entries():
    delta = torch.tensor([0.3, -0.8, 0.1, -0.5])
    assert torch.equal(keep_top(delta, 0.5), torch.tensor([0.0, -0.8, 0.0, -0.5]))
    assert keep_top(delta, None) is delta


def test_ties_by_hand():
    trimmed = torch.tensor([[1.0, -2.0, 0.0, 3.0, 0.0],
                            [3.0, 1.0, 0.0, -1.0, 0.0],
                            [-1.0, -1.0, 0.0, -4.0, 2.0]])
    signs = elect_sign(trimmed)  # sums: 3, -2, 0, -2, 2
    assert torch.equal(signs, torch.tensor([1.0, -1.0, 0.0, -1.0, 1.0]))
    assert torch.equal(resolve_zero_signs(signs, -1.0), torch.tensor([1.0, -1.0, -1.0, -1.0, 1.0]))
    resolved = resolve_zero_signs(signs, 1.0)
    # agreeing values: [1,3], [-2,-1], none, [-1,-4], [2]
    assert torch.allclose(disjoint_merge(trimmed, resolved, "mean"), torch.tensor([2.0, -1.5, 0.0, -2.5, 2.0]))
    assert torch.allclose(disjoint_merge(trimmed, resolved, "sum"), torch.tensor([4.0, -3.0, 0.0, -5.0, 2.0]))
    assert torch.allclose(disjoint_merge(trimmed, resolved, "max"), torch.tensor([3.0, -2.0, 0.0, -4.0, 2.0]))


def test_ties_merge_trims_per_task_threshold():
    deltas = torch.tensor([[0.1, -2.0, 1.0], [0.5, 0.2, -3.0]])
    # task 0 keeps |x| ≥ 1, task 1 keeps |x| ≥ 0.5 → [[0,-2,1],[0.5,0,-3]]; signs [+,-,-]
    merged = ties_merge(deltas, [1.0, 0.5], majority_sign=1.0, aggregation="mean")
    assert torch.allclose(merged, torch.tensor([0.5, -2.0, -3.0]))


def test_tall_mask_by_hand():
    theta0 = torch.tensor([0.0, 0.0, 0.0, 1.0])
    theta_t = torch.tensor([1.0, 0.1, -1.0, 1.0])
    merged_tv = torch.tensor([1.5, 2.0, 1.0, 0.0])
    # |θ0−θt| = [1, .1, 1, 0]; |θ0+τ−θt| = [.5, 1.9, 2, 0]
    assert torch.equal(tall_mask(theta0, theta_t, merged_tv, 0.4), torch.tensor([True, False, True, False]))
    assert torch.equal(tall_mask(theta0, theta_t, merged_tv, 0.6), torch.tensor([True, False, False, False]))
    levels = tall_mask_levels(theta0, theta_t, merged_tv)  # λ ∈ .2 .3 .4 .5 .6
    assert levels.dtype == torch.uint8
    assert torch.equal(levels, torch.tensor([5, 0, 3, 0], dtype=torch.uint8))
    for j, lam in enumerate((0.2, 0.3, 0.4, 0.5, 0.6)):
        assert torch.equal(levels > j, tall_mask(theta0, theta_t, merged_tv, lam))


def test_consensus_counts_tasks():
    masks = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(consensus_mask(masks, 2), torch.tensor([True, False, False, False]))
    assert torch.equal(consensus_mask(masks, 1), torch.tensor([True, True, True, False]))

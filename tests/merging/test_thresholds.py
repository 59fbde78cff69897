"""Streaming top-k% thresholds equal the published flat ``kthvalue`` threshold, also split over processes."""

import pytest
import torch

from tsvmerge.merging import TaskVectors
from tsvmerge.merging.sparsify import topk_threshold
from tsvmerge.merging.thresholds import task_thresholds


def _checkpoints(seed: int):
    g = torch.Generator().manual_seed(seed)
    pre = {"a.weight": torch.randn(30, 20, generator=g), "b.bias": torch.randn(17, generator=g),
           "c.count": torch.tensor([3, 4]), "d.weight": torch.randn(8, 8, generator=g).half()}
    fts = []
    for task in range(3):
        ft = {k: v.clone() for k, v in pre.items()}
        ft["a.weight"] += torch.randn(30, 20, generator=g).round(decimals=1)  # many equal magnitudes
        ft["a.weight"][:5] = pre["a.weight"][:5]  # exact zeros in τ
        if task != 1:  # task 1 leaves b unchanged
            ft["b.bias"] += 1e-30 * torch.randn(17, generator=g)  # subnormal-sized deltas
        ft["d.weight"] = (ft["d.weight"].float() + 0.01 * torch.randn(8, 8, generator=g)).half()
        fts.append(ft)
    return pre, fts


def _flat(pre, ft):
    return torch.cat([(ft[k].float() - pre[k].float()).abs().flatten() if pre[k].is_floating_point()
                      else torch.zeros(pre[k].numel()) for k in sorted(pre)])


@pytest.mark.parametrize("k", [0.5, 20.0, 50.0, 99.9])
def test_streaming_threshold_equals_flat_kthvalue(k):
    pre, fts = _checkpoints(0)
    got = task_thresholds(TaskVectors(pre, fts), k)
    assert got == [topk_threshold(_flat(pre, ft), k) for ft in fts]


def test_k100_keeps_everything():
    pre, fts = _checkpoints(1)
    assert task_thresholds(TaskVectors(pre, fts), 100) == [None, None, None]

"""Singular Task Interference (Eq. 7)."""

import pytest
import torch

from tests.support import spec_reference as ref
from tsvmerge.merging.interference import (
    interference_per_block,
    layer_interference,
    singular_task_interference,
    transformer_block,
)
from tsvmerge.merging.tsv import TaskSingularVectors, task_singular_vectors


def _orthogonal_tasks(overlap: float) -> torch.Tensor:
    """Two rank-1 tasks whose left vectors have cosine ``overlap`` (right vectors orthogonal + same)."""
    e = torch.eye(6, dtype=torch.float64)
    u1, u2 = e[0], overlap * e[0] + (1 - overlap**2) ** 0.5 * e[1]
    v1, v2 = e[2], overlap * e[2] + (1 - overlap**2) ** 0.5 * e[3]
    return torch.stack([torch.outer(u1, v1), torch.outer(u2, v2)])


def test_orthogonal_task_components_have_zero_interference():
    tsv = task_singular_vectors(_orthogonal_tasks(0.0), k=1)
    assert singular_task_interference(tsv) == pytest.approx(0.0, abs=1e-12)


def test_interference_grows_with_known_overlap():
    values = []
    for c in (0.1, 0.4, 0.8):
        tsv = task_singular_vectors(_orthogonal_tasks(c), k=1)
        # (ÛᵀÛ − I) = [[0,c],[c,0]] for U and V, s = [1, 1] → product [[c², 0],[0, c²]] → STI = 2c²
        assert singular_task_interference(tsv) == pytest.approx(2 * c * c, rel=1e-9)
        values.append(singular_task_interference(tsv))
    assert values == sorted(values)


def test_matches_naive_definition():
    U, s, V = (torch.randn(10, 4, dtype=torch.float64), torch.rand(4, dtype=torch.float64),
               torch.randn(7, 4, dtype=torch.float64))
    assert singular_task_interference(TaskSingularVectors(U, s, V, 2)) == pytest.approx(ref.sti(U, s, V))


def test_orthogonalization_removes_interference():
    deltas = torch.stack(ref.task_matrices(4, 40, 32, seed=11))
    values = layer_interference(deltas)
    assert values["before"] > 1e-2
    assert values["after"] < 1e-4 * values["before"]
    full = layer_interference(deltas, full_rank=True)
    assert full["before"] > values["before"]


def test_block_aggregation():
    assert transformer_block("model.visual.transformer.resblocks.3.attn.in_proj_weight") == \
        "model.visual.transformer.resblocks.3"
    assert transformer_block("model.visual.proj") is None
    per_block = interference_per_block({
        "v.resblocks.0.attn.in_proj_weight": {"before": 1.0, "after": 0.1},
        "v.resblocks.0.mlp.c_fc.weight": {"before": 2.0, "after": 0.2},
        "v.resblocks.1.mlp.c_fc.weight": {"before": 5.0, "after": 0.0},
        "v.proj": {"before": 9.0, "after": 9.0},
    })
    assert per_block == {"v.resblocks.0": pytest.approx({"before": 3.0, "after": 0.3}),
                         "v.resblocks.1": {"before": 5.0, "after": 0.0}}

"""STI of whole checkpoints (SPEC §3, Eq. 7): exact values on hand-built task matrices."""

from __future__ import annotations

import math

import pytest
import torch

from tests.support.checkpoints import deltas, make_checkpoints
from tsvmerge.analysis.interference import (
    block_overlap,
    decompose_layer,
    gram_data,
    interference_table,
    select_layer,
    sti,
)
from tsvmerge.merging import TaskVectors
from tsvmerge.merging.interference import layer_interference, singular_task_interference
from tsvmerge.merging.tsv import TaskSingularVectors, orthogonalize, tsv_merge_matrix

KEY = "model.visual.transformer.resblocks.0.attn.in_proj_weight"
KEY2 = "model.visual.transformer.resblocks.1.mlp.c_fc.weight"
S1, S2 = (3.0, 2.0, 1.0), (2.5, 1.5, 0.5)


def _overlapping_tasks(c: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rank-3 tasks on 8×6 matrices (k = ⌊6/2⌋ = 3): task 2's first singular pair has cosine ``c`` with task
    1's first pair (left and right), every other pair is orthogonal. By Eq. 7, STI = c² (s1 + t1)."""
    e, f = torch.eye(8, dtype=torch.float64), torch.eye(6, dtype=torch.float64)
    rest = math.sqrt(1 - c * c)
    u2 = [c * e[0] + rest * e[3], e[4], e[5]]
    v2 = [c * f[0] + rest * f[3], f[4], f[5]]
    t1 = sum(s * torch.outer(e[j], f[j]) for j, s in enumerate(S1))
    t2 = sum(s * torch.outer(u, v) for s, u, v in zip(S2, u2, v2, strict=True))
    return t1.float(), t2.float()


def _tasks(c: float, c2: float = 0.0) -> TaskVectors:
    """Checkpoints with two such layers (overlaps ``c`` and ``c2``) in two transformer blocks, plus a bias."""
    g = torch.Generator().manual_seed(0)
    theta0 = {KEY: torch.randn(8, 6, generator=g), KEY2: torch.randn(8, 6, generator=g),
              "model.visual.ln_post.bias": torch.randn(6, generator=g)}
    a, b = _overlapping_tasks(c)
    a2, b2 = _overlapping_tasks(c2)
    bias = "model.visual.ln_post.bias"
    ft1 = {KEY: theta0[KEY] + a, KEY2: theta0[KEY2] + a2, bias: theta0[bias]}
    ft2 = {KEY: theta0[KEY] + b, KEY2: theta0[KEY2] + b2, bias: theta0[bias] + 1}
    return TaskVectors(theta0, [ft1, ft2], names=["A", "B"])


def test_chunked_sti_matches_the_dense_definition():
    g = torch.Generator().manual_seed(3)
    tsv = TaskSingularVectors(torch.randn(20, 37, generator=g), torch.rand(37, generator=g),
                              torch.randn(15, 37, generator=g), 0)
    dense = singular_task_interference(tsv)
    for chunk in (1, 8, 36, 37, 4096):
        assert sti(tsv, chunk) == pytest.approx(dense, rel=1e-5)


def test_orthogonal_task_components_have_zero_interference():
    table = interference_table(_tasks(0.0))
    assert set(table["per_entry"]) == {KEY, KEY2}, "only 2-D entries"
    for values in table["per_entry"].values():
        assert values["low_rank_before"] == pytest.approx(0.0, abs=1e-5)
        assert values["low_rank_after"] == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("c", [0.1, 0.4, 0.8])
def test_interference_equals_the_known_overlap(c):
    table = interference_table(_tasks(c, c2=0.5))
    expected = c * c * (S1[0] + S2[0])
    assert table["per_entry"][KEY]["low_rank_before"] == pytest.approx(expected, rel=1e-4)
    assert table["per_entry"][KEY]["low_rank_after"] < 1e-5 * expected, "TSV-M's orthogonalization removes it"
    assert table["per_entry"][KEY2]["low_rank_before"] == pytest.approx(0.25 * (S1[0] + S2[0]), rel=1e-4)
    # per block: each block holds one of the two layers; total = their sum
    blocks = table["per_block"]
    assert blocks["model.visual.transformer.resblocks.0"]["low_rank_before"] == pytest.approx(expected, rel=1e-4)
    assert table["total"]["low_rank_before"] == pytest.approx(expected + 0.25 * 5.5, rel=1e-4)
    assert table["entries"][KEY]["k"] == 3 and table["entries"][KEY]["block_index"] == 0


def test_interference_grows_with_the_overlap():
    values = [interference_table(_tasks(c))["total"]["low_rank_before"] for c in (0.0, 0.2, 0.5, 0.9)]
    assert values == sorted(values) and values[0] < 1e-5 < values[1]


def test_matches_the_merge_engines_sti_and_tsvm():
    theta0, finetuned = make_checkpoints(num_tasks=3)
    tasks = TaskVectors(theta0, finetuned)
    table = interference_table(tasks)
    for key, values in table["per_entry"].items():
        d = deltas(theta0, finetuned, key)
        low, full = layer_interference(d), layer_interference(d, full_rank=True)
        assert values["low_rank_before"] == pytest.approx(low["before"], rel=1e-4)
        assert values["full_rank_before"] == pytest.approx(full["before"], rel=1e-4)
        assert values["full_rank_after"] == pytest.approx(full["after"], rel=1e-3)
        assert values["low_rank_after"] < 1e-4 * values["low_rank_before"]
        # the low-rank concatenation is TSV-M's: its orthogonalized reconstruction is the TSV-M merge
        layer = decompose_layer(d)
        merged = orthogonalize(layer.low_rank()).reconstruct()
        reference = tsv_merge_matrix(d, svd="full")
        assert torch.linalg.matrix_norm(merged - reference) <= 1e-4 * torch.linalg.matrix_norm(reference)
    assert "model.text_projection" not in table["per_entry"], "TSV-M averages text_projection: no STI"
    assert "model.token_embedding.weight" not in table["per_entry"], "unchanged entries are skipped"


def test_gram_heatmap_data_shows_the_overlap_and_its_removal():
    c = 0.6
    gram = gram_data(_tasks(c), KEY)
    assert gram.tasks == ["A", "B"] and gram.block_sizes == [3, 3]
    before_u = gram.grams["before"]["U"]
    assert before_u.shape == (6, 6)
    assert before_u[0, 3].abs().item() == pytest.approx(c, abs=1e-5)
    assert gram.sti["before"] == pytest.approx(c * c * 5.5, rel=1e-4)
    for factor in ("U", "V"):
        after = gram.grams["after"][factor]
        assert torch.allclose(after, torch.eye(6), atol=1e-5)
    table = block_overlap(before_u, gram.block_sizes)
    assert table[0][1]["frobenius"] == pytest.approx(c, abs=1e-5)
    assert table[0][1]["mean_abs"] == pytest.approx(c / 9, abs=1e-5)
    assert table[0][0]["frobenius"] == pytest.approx(0.0, abs=1e-5)


def test_select_layer():
    keys = [f"model.visual.transformer.resblocks.{b}.{n}" for b in range(4)
            for n in ("attn.in_proj_weight", "mlp.c_fc.weight")] + ["model.visual.proj"]
    assert select_layer(keys, None) == "model.visual.transformer.resblocks.2.attn.in_proj_weight"
    assert select_layer(keys, "model.visual.proj") == "model.visual.proj"
    assert select_layer(keys, r"resblocks\.1\.mlp") == "model.visual.transformer.resblocks.1.mlp.c_fc.weight"
    with pytest.raises(ValueError, match="no 2-D entry matches"):
        select_layer(keys, "nothing")

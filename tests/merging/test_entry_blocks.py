"""Large entries of value-by-value merges are merged in blocks of rows: the same result, a bounded workspace."""

from __future__ import annotations

import pytest
import torch

from tsvmerge.merging import TaskVectors, build_method
from tsvmerge.merging.engine import merge_entry_in_blocks
from tsvmerge.merging.entry_rules import EntryRules


def _tasks(rules: EntryRules | None = None) -> TaskVectors:
    g = torch.Generator().manual_seed(0)
    base = {"model.embed_tokens.weight": torch.randn(40, 6, generator=g),
            "model.layers.0.mlp.up_proj.weight": torch.randn(12, 6, generator=g),
            "model.norm.weight": torch.randn(6, generator=g)}
    fts = [{k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(3)]
    return TaskVectors(base, fts, rules=rules)


@pytest.mark.parametrize(("name", "params"), [("sum", {}), ("sum", {"k": 30}), ("average", {}),
                                              ("ties", {"k": 20}), ("ties", {"agg": "max"}), ("TSVM", {})])
def test_blocks_give_the_whole_entry_result(name: str, params: dict) -> None:
    tasks = _tasks(EntryRules("decoder_lm"))
    method = build_method(name, params)
    method.prepare(tasks)
    entry = tasks.entry("model.embed_tokens.weight")
    assert method.elementwise_on(entry)
    assert len(entry.row_blocks(600)) > 3  # 40 rows of 6 × 4 bytes × (3 + 2): several blocks
    whole = method.merge_entry(entry).task_vector
    blocked = merge_entry_in_blocks(method, entry, block_bytes=600).task_vector
    assert whole is not None and blocked is not None
    torch.testing.assert_close(blocked, whole, rtol=0, atol=0)


def test_matrices_through_the_svd_are_never_split() -> None:
    tasks = _tasks(EntryRules("decoder_lm"))
    method = build_method("TSVM")
    entry = tasks.entry("model.layers.0.mlp.up_proj.weight")
    assert entry.uses_svd() and not method.elementwise_on(entry)
    assert not build_method("TSVC").elementwise_on(entry) and not build_method("iso_c").elementwise_on(entry)

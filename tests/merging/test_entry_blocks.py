"""Large entries of value-by-value merges are merged in blocks of rows: the same result, a bounded workspace."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tsvmerge.checkpoints.tall_mask_files import save_tall_masks
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
                                              ("ties", {"k": 20}), ("ties", {"agg": "max"}), ("TSVM", {}),
                                              ("mag_masking", {"k": 20}), ("tall_mask", {}),
                                              ("tall_mask", {"use_ties": True}),
                                              ("consensus", {"tall_lambda": 0.4}),
                                              ("consensus", {"tall_lambda": 0.4, "use_ties": True})])
def test_blocks_give_the_whole_entry_result(name: str, params: dict) -> None:
    tasks = _tasks(EntryRules("decoder_lm"))
    method = build_method(name, params)
    method.prepare(tasks)
    entry = tasks.entry("model.embed_tokens.weight")
    assert method.elementwise_on(entry)
    assert len(entry.row_blocks(600)) > 3  # 40 rows of 6 × 4 bytes × (3 + 2): several blocks
    whole = method.merge_entry(entry)
    blocked = merge_entry_in_blocks(method, entry, block_bytes=600)
    assert whole.task_vector is not None and blocked.task_vector is not None
    torch.testing.assert_close(blocked.task_vector, whole.task_vector, rtol=0, atol=0)
    assert (whole.masks is None) == (blocked.masks is None)
    if whole.masks is not None:  # the masks of mask-producing methods are assembled from the blocks too
        assert torch.equal(blocked.masks, whole.masks)


def test_saved_masks_keep_the_entry_whole(tmp_path) -> None:
    """Masks read from a file are sliced per entry, not per block: such merges do not split entries."""
    tasks = _tasks(EntryRules("decoder_lm"))
    total = sum(tasks.shape(key).numel() for key in tasks.keys)
    path = tmp_path / "TALL_mask_3task.npy"
    save_tall_masks(path, {name: np.ones(total, bool) for name in tasks.names})
    entry = tasks.entry("model.embed_tokens.weight")
    for name, params in [("tall_mask", {"mask_file": str(path)}), ("consensus", {"mask_file": str(path)})]:
        method = build_method(name, params)
        method.prepare(tasks)
        assert not method.elementwise_on(entry)
        assert merge_entry_in_blocks(method, entry, block_bytes=600).task_vector is not None


def test_matrices_through_the_svd_are_never_split() -> None:
    tasks = _tasks(EntryRules("decoder_lm"))
    method = build_method("TSVM")
    entry = tasks.entry("model.layers.0.mlp.up_proj.weight")
    assert entry.uses_svd() and not method.elementwise_on(entry)
    assert not build_method("TSVC").elementwise_on(entry) and not build_method("iso_c").elementwise_on(entry)

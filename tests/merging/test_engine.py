"""The streaming engine and every registered method on published-shaped state dicts."""

import numpy as np
import pytest
import torch

from tests.support import spec_reference as ref
from tests.support.checkpoints import deltas, flat, make_checkpoints
from tsvmerge.checkpoints.state_dict import CheckpointMismatchError
from tsvmerge.checkpoints.tall_mask_files import load_tall_masks, save_tall_masks
from tsvmerge.merging import TaskVectors, apply_task_vector, available_methods, build_method, merge
from tsvmerge.merging.calibration import InputStatistic

IN_PROJ = "model.visual.transformer.resblocks.0.attn.in_proj_weight"
C_PROJ = "model.visual.transformer.resblocks.0.mlp.c_proj.weight"
PARAMS = {"consensus": {"tall_lambda": 0.4}, "cart": {"prior": 2.0, "rank_ratio": 0.12}}


@pytest.fixture(scope="module")
def ckpts():
    return make_checkpoints()


def _calibrated(name: str, tasks: TaskVectors):
    """The method, built; a data-aware one given random input statistics for every matrix it asks for."""
    method = build_method(name, PARAMS.get(name))
    if method.calibration is None:
        return method
    linear = ("attn.in_proj_weight", "attn.out_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    matrices = {k: tuple(tasks.shape(k)) for k in tasks.keys if k.endswith(linear)}  # the maps a CLIP pass hooks
    keys = method.calibration_keys(matrices, tasks.rules)
    method.begin_calibration(tasks, keys)
    generator = torch.Generator().manual_seed(0)
    for task in range(tasks.num_tasks):
        for key in keys:
            rows = torch.randn(64, matrices[key][1], generator=generator)
            method.absorb(task, key, InputStatistic(count=64, rows=rows, gram=rows.double().T @ rows.double() / 64))
    return method


@pytest.mark.parametrize("name", available_methods())
def test_every_method_runs_and_keeps_shapes(ckpts, name):
    pre, fts = ckpts
    tasks = TaskVectors(pre, fts)
    result = merge(_calibrated(name, tasks), tasks, progress=False)
    if result.method.task_specific:
        for task in range(len(fts)):
            merged = apply_task_vector(pre, result.task_specific_vector(task))
            assert {k: v.shape for k, v in merged.items()} == {k: v.shape for k, v in pre.items()}
    else:
        merged = apply_task_vector(pre, result.task_vector)
        assert merged["model.num_batches_tracked"] is pre["model.num_batches_tracked"]
        assert merged["model.token_embedding.weight"] is pre["model.token_embedding.weight"]
        assert all(merged[k].dtype == pre[k].dtype for k in pre)


def test_task_arithmetic_average_and_zeroshot(ckpts):
    pre, fts = ckpts
    tasks = TaskVectors(pre, fts)
    total = merge("sum", tasks, progress=False).task_vector
    mean = merge("average", tasks, progress=False).task_vector
    zero = merge("zeroshot", tasks, progress=False).task_vector
    for key in total:
        assert torch.allclose(total[key], deltas(pre, fts, key).sum(0), atol=1e-6)
        assert torch.allclose(mean[key], deltas(pre, fts, key).mean(0), atol=1e-6)
    assert zero == {}  # zero-shot: no task-vector entry at all, the merged model is θ0
    assert "model.token_embedding.weight" not in total


def test_tsvm_per_entry_semantics(ckpts):
    pre, fts = ckpts
    result = merge("TSVM", TaskVectors(pre, fts), {"report_sti": True}, progress=False)
    tv = result.task_vector
    for key in (IN_PROJ, C_PROJ):
        assert ref.relative_error(tv[key], ref.tsvm(list(deltas(pre, fts, key)))) < 1e-5
    averaged = ("model.text_projection", "model.visual.ln_post.weight", "model.visual.conv1.weight",
                "model.logit_scale")
    for key in averaged:
        assert torch.allclose(tv[key], deltas(pre, fts, key).mean(0), atol=1e-6)
    assert set(result.stats["sti"]) == {IN_PROJ, C_PROJ}
    assert result.stats["sti"][IN_PROJ]["after"] < 1e-4 * result.stats["sti"][IN_PROJ]["before"]
    assert set(result.stats["sti_per_block"]) == {"model.visual.transformer.resblocks.0"}


def test_ablations(ckpts):
    pre, fts = ckpts
    tasks = TaskVectors(pre, fts)
    low = merge("TSVM_lowrank_only", tasks, progress=False).task_vector
    full = merge("TSVM_interference_only", tasks, progress=False).task_vector
    d = list(deltas(pre, fts, IN_PROJ))
    assert ref.relative_error(low[IN_PROJ], sum(ref.rank_k(x, 8 // 3) for x in d)) < 1e-5
    U, s, V = ref.concatenated(d, 8)
    assert ref.relative_error(full[IN_PROJ], ref.procrustes(U) @ torch.diag(s) @ ref.procrustes(V).T) < 1e-5


def test_tsvc_per_task_vectors_and_storage(ckpts):
    pre, fts = ckpts
    result = merge("TSVC", TaskVectors(pre, fts), progress=False)
    for task in range(3):
        vec = dict(result.task_specific_vector(task))
        for key in (IN_PROJ, C_PROJ, "model.text_projection"):
            k = min(pre[key].shape) // 3
            assert ref.relative_error(vec[key], ref.rank_k(fts[task][key] - pre[key], k)) < 1e-5
        ln = "model.visual.ln_post.weight"
        assert torch.allclose(vec[ln], fts[task][ln] - pre[ln])
    # storage: k(r+c+1) for the 2-D entries (token_embedding included), everything else whole
    expected = 2 * (24 + 8 + 1) + 2 * (8 + 16 + 1) + 2 * (8 + 6 + 1) + 2 * (30 + 6 + 1) + 8 + 8 * 3 * 2 * 2 + 1
    assert result.stats["storage"]["numbers_per_task"] == expected


def _published_topk_mask(flat_tv: torch.Tensor, k: float) -> torch.Tensor:
    d = flat_tv.numel()
    kth = d - int(d * k / 100)
    return flat_tv.abs() >= flat_tv.abs().kthvalue(kth).values


def _published_ties(flat_tvs: torch.Tensor, k: float, agg: str) -> torch.Tensor:
    """The published ties_merging on flat vectors (reimplemented literally as the golden check)."""
    trimmed = torch.stack([t * _published_topk_mask(t, k) for t in flat_tvs])
    signs = torch.sign(trimmed.sum(0))
    signs[signs == 0] = torch.sign(signs.sum())
    keep = torch.where(signs.unsqueeze(0) > 0, trimmed > 0, trimmed < 0)
    selected = trimmed * keep
    if agg == "mean":
        return selected.sum(0) / (selected != 0).sum(0).float().clamp(min=1)
    return selected.sum(0)


def _flat_tvs(pre, fts):
    return torch.stack([flat(ft) - flat(pre) for ft in fts])


@pytest.mark.parametrize("agg", ["mean", "sum"])
def test_ties_matches_published_flat_implementation(ckpts, agg):
    pre, fts = ckpts
    result = merge("ties", TaskVectors(pre, fts), {"k": 20, "agg": agg}, progress=False)
    merged = apply_task_vector(pre, result.task_vector)
    expected = flat(pre) + _published_ties(_flat_tvs(pre, fts), 20, agg)
    assert torch.allclose(flat(merged), expected, atol=1e-6)


def test_topk_sum_matches_published(ckpts):
    pre, fts = ckpts
    merged = apply_task_vector(pre, merge("sum", TaskVectors(pre, fts), {"k": 30}, progress=False).task_vector)
    tvs = _flat_tvs(pre, fts)
    expected = flat(pre) + sum(t * _published_topk_mask(t, 30) for t in tvs)
    assert torch.allclose(flat(merged), expected, atol=1e-6)


def test_magnitude_masking(ckpts):
    pre, fts = ckpts
    result = merge("mag_masking", TaskVectors(pre, fts), {"k": 25}, progress=False)
    tvs = _flat_tvs(pre, fts)
    for task in range(3):
        merged = apply_task_vector(pre, result.task_specific_vector(task))
        expected = flat(pre) + tvs.sum(0) * _published_topk_mask(tvs[task], 25)
        assert torch.allclose(flat(merged), expected, atol=1e-6)


def test_tall_masks_match_published_and_round_trip_through_file(ckpts, tmp_path):
    pre, fts = ckpts
    tasks = TaskVectors(pre, fts, names=["CarsVal", "DTDVal", "MNISTVal"])
    result = merge("tall_mask", tasks, progress=False)
    assert result.mask_labels == (0.2, 0.3, 0.4, 0.5, 0.6)
    flat_pre, tvs = flat(pre), _flat_tvs(pre, fts)
    merged_tv = tvs.sum(0)
    offsets = tasks.flat_offsets()
    saved = {}
    for task, name in enumerate(["Cars", "DTD", "MNIST"]):
        for choice, lam in enumerate(result.mask_labels):
            expected = (flat_pre - flat(fts[task])).abs() > (flat_pre + merged_tv - flat(fts[task])).abs() * lam
            got = torch.zeros_like(expected)
            for key, mask in result.task_mask(task, choice):
                got[offsets[key][0]:offsets[key][1]] = mask.flatten()
            assert torch.equal(got, expected)
            if lam == 0.4:
                saved[name] = got.numpy()
            vec = apply_task_vector(pre, result.task_specific_vector(task, choice))
            assert torch.allclose(flat(vec), flat_pre + merged_tv * expected, atol=1e-6)
    path = tmp_path / "TALL_mask_3task.npy"
    save_tall_masks(path, saved)
    assert all(np.array_equal(v, saved[k]) for k, v in load_tall_masks(path, flat_pre.numel()).items())

    loaded = merge("tall_mask", tasks, {"mask_file": str(path)}, progress=False)
    assert loaded.mask_labels == ("loaded",)
    for task, name in enumerate(["Cars", "DTD", "MNIST"]):
        vec = apply_task_vector(pre, loaded.task_specific_vector(task))
        assert torch.allclose(flat(vec), flat_pre + merged_tv * torch.from_numpy(saved[name]), atol=1e-6)

    from_file = merge("consensus", tasks, {"mask_file": str(path), "prun_thre_k": 2}, progress=False)
    on_the_fly = merge("consensus", tasks, {"tall_lambda": 0.4, "prun_thre_k": 2}, progress=False)
    count = sum(torch.from_numpy(m).int() for m in saved.values())
    expected = flat_pre + merged_tv * (count >= 2)
    assert torch.allclose(flat(apply_task_vector(pre, from_file.task_vector)), expected, atol=1e-6)
    assert torch.allclose(flat(apply_task_vector(pre, on_the_fly.task_vector)), expected, atol=1e-6)


def test_consensus_requires_masks(ckpts):
    pre, fts = ckpts
    with pytest.raises(ValueError, match="mask_file"):
        merge("consensus", TaskVectors(pre, fts), progress=False)


def test_apply_task_vector_copies_unless_inplace(ckpts):
    pre, fts = ckpts
    tv = merge("sum", TaskVectors(pre, fts), progress=False).task_vector
    before = tv[IN_PROJ].clone()
    apply_task_vector(pre, tv, 0.5)
    assert torch.equal(tv[IN_PROJ], before)
    merged = apply_task_vector(pre, tv, 0.5, inplace=True)
    assert merged[IN_PROJ] is tv[IN_PROJ]
    assert torch.allclose(merged[IN_PROJ], pre[IN_PROJ] + 0.5 * before)


def test_mismatched_checkpoints_name_the_key(ckpts):
    pre, fts = ckpts
    broken = dict(fts[1])
    broken[IN_PROJ] = torch.zeros(3, 3)
    with pytest.raises(CheckpointMismatchError, match="in_proj_weight"):
        TaskVectors(pre, [fts[0], broken])
    missing = {k: v for k, v in fts[0].items() if k != "model.logit_scale"}
    with pytest.raises(CheckpointMismatchError, match="logit_scale"):
        TaskVectors(pre, [missing])


def test_unknown_method_and_parameter_list_the_choices():
    with pytest.raises(ValueError, match="TSVM"):
        build_method("TSVM3")
    with pytest.raises(ValueError, match="svd"):
        build_method("TSVM", {"k": 3})
    assert build_method("ties", {"k": "30", "agg": "sum"}).k == 30.0
    with pytest.raises(ValueError, match="mean"):
        build_method("ties", {"agg": "median"})
    assert build_method("tall_mask", {"use_ties": "true"}).use_ties is True


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("name", ["TSVM", "TSVC", "ties", "tall_mask"])
def test_engine_holds_one_layer_of_task_tensors_per_worker(ckpts, monkeypatch, name, workers):
    """Streaming: whatever T, at most one entry's stack of task tensors per worker is alive at a time."""
    import threading
    import weakref

    from tsvmerge.merging.task_vectors import TaskEntry

    pre, fts = make_checkpoints(num_tasks=6, seed=3)
    lock, state = threading.Lock(), {"alive": 0, "peak": 0}
    real = TaskEntry.deltas

    def released() -> None:
        with lock:
            state["alive"] -= 1

    def tracking(self, tasks=None):
        stack = real(self, tasks)
        with lock:
            state["alive"] += 1
            state["peak"] = max(state["peak"], state["alive"])
        weakref.finalize(stack, released)
        return stack

    monkeypatch.setattr(TaskEntry, "deltas", tracking)
    merge(name, TaskVectors(pre, fts), progress=False, workers=workers)
    assert state["alive"] == 0
    assert 1 <= state["peak"] <= workers

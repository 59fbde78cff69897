"""main.py end to end on a tiny open_clip model, through Hydra's real entry point, for every merge method."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
import torch

from tests.support.entry_points import load, run_main
from tests.support.world import MODEL, World
from tsvmerge.checkpoints import head_path, load_tall_masks, open_state_dict, tall_mask_paths, zeroshot_checkpoint_path
from tsvmerge.checkpoints.tall_mask_files import read_mask_record
from tsvmerge.data import get_dataset
from tsvmerge.evaluation.alpha_search import alpha_label
from tsvmerge.evaluation.results import RESULT_SCHEMA
from tsvmerge.merging.sparsify import TALL_LAMBDAS
from tsvmerge.models.encoder import build_image_encoder
from tsvmerge.models.heads import load_classification_head

SHARED = ["average", "sum", "ties", "TSVM", "TSVM_2", "TSVM_lowrank_only", "TSVM_interference_only", "iso_c",
          "iso_cts", "dc_merge"]
GRID = {"sum": 1.0, "ties": 1.0, "TSVM": 3.0, "TSVM_2": 3.0, "TSVM_lowrank_only": 3.0,
        "TSVM_interference_only": 3.0, "consensus": 1.0, "iso_c": 3.0, "iso_cts": 3.0, "dc_merge": 3.0}
KEYS = {"schema", "model", "method", "method_full_name", "method_params", "num_tasks", "datasets", "alpha",
        "alpha_grid", "task_choices", "test", "val", "val_best", "merge_stats", "runtime", "config"}


def _run(world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *overrides: str) -> tuple[dict, Path]:
    results = tmp_path / "results"
    run_dir = tmp_path / "run"
    args = world.main_args(*overrides, f"results_dir={results}", f"ft_accuracies={world.ft_accuracies}",
                           run_dir=run_dir)
    assert run_main(args, monkeypatch) == 0
    files = sorted((results / "merging").glob("*.json"))
    assert len(files) == 1, files
    payload = load(files[0])
    copy = run_dir / files[0].name
    assert copy.is_file() and load(copy) == payload, "a copy of the result file goes to the Hydra run dir"
    assert not list((results / "merging").glob(".*")), "no temporary file is left behind"
    return payload, files[0]


def _check_section(section: dict, splits: list[str], ft: dict) -> None:
    assert set(section) == {f"{s}:{m}" for s in splits for m in ("top1", "normalized_top1")} | {
        "avg_top1", "avg_normalized_top1"}
    for s in splits:
        top1 = section[f"{s}:top1"]
        assert 0.0 <= top1 <= 1.0
        assert section[f"{s}:normalized_top1"] == pytest.approx(top1 / ft[s])
    assert section["avg_top1"] == pytest.approx(statistics.mean(section[f"{s}:top1"] for s in splits))
    assert section["avg_normalized_top1"] == pytest.approx(
        statistics.mean(section[f"{s}:normalized_top1"] for s in splits))


def _check_payload(world: World, payload: dict, method: str) -> None:
    assert KEYS <= set(payload)
    assert payload["schema"] == RESULT_SCHEMA
    assert payload["model"] == MODEL and payload["method"] == method
    assert payload["datasets"] == world.datasets and payload["num_tasks"] == len(world.datasets)
    ft = json.loads(world.ft_accuracies.read_text())
    val_splits = [f"{d}Val" for d in world.datasets]
    _check_section(payload["test"], world.datasets, ft)
    _check_section(payload["val_best"], val_splits, ft)
    for section in payload["val"].values():
        _check_section(section, val_splits, ft)


@pytest.mark.parametrize("method", SHARED)
def test_shared_vector_methods(world: World, method: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    payload, path = _run(world, monkeypatch, tmp_path, f"method={method}")
    _check_payload(world, payload, method)
    assert path.name.startswith(f"{MODEL}_3tasks_{payload['method_full_name']}_nonlinear_additions_")
    assert path.name.endswith("_MNIST-EuroSAT-DTD_valbest.json")
    if method in GRID:  # grid linspace(0, max, n_eval_points=4)[1:]
        assert payload["alpha_grid"] == pytest.approx([GRID[method] / 3, 2 * GRID[method] / 3, GRID[method]])
    else:
        assert payload["alpha_grid"] == [1.0]
    assert list(payload["val"]) == [alpha_label(a) for a in payload["alpha_grid"]]
    scores = [s["avg_normalized_top1"] for s in payload["val"].values()]
    assert payload["alpha"] == payload["alpha_grid"][scores.index(max(scores))], "first maximum on validation"
    assert payload["val_best"] == payload["val"][alpha_label(payload["alpha"])]
    assert payload["task_choices"] is None


def test_iso_sweep_stops_early_by_the_authors_rule(world: World, monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    payload, _ = _run(world, monkeypatch, tmp_path, "method=iso_c", "method.early_stop_patience=1",
                      "n_eval_points=31")
    _check_payload(world, payload, "iso_c")
    absolute = [s["avg_top1"] for s in payload["val"].values()]
    # Patience 1: the sweep ends at the first α whose mean absolute top-1 is not above every earlier one.
    ends = next((i for i in range(1, len(absolute)) if absolute[i] <= max(absolute[:i])), None)
    full_grid = [3.0 * i / 30 for i in range(1, 31)]
    if ends is None:
        assert payload["alpha_grid"] == pytest.approx(full_grid)
    else:
        assert payload["alpha_grid"] == pytest.approx(full_grid[:ends + 1])
        assert payload["alpha_early_stopping"] == {"patience": 1, "stopped_at": payload["alpha_grid"][-1]}
    scores = [s["avg_normalized_top1"] for s in payload["val"].values()]
    assert payload["alpha"] == payload["alpha_grid"][scores.index(max(scores))]


def test_cart_runs_at_alpha_one_with_explicit_settings(world: World, monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    payload, path = _run(world, monkeypatch, tmp_path, "method=cart", "method.prior=2.0", "method.rank_ratio=0.12")
    _check_payload(world, payload, "cart")
    assert payload["alpha"] == 1.0 and payload["alpha_grid"] == [1.0]
    assert payload["method_params"] == {"prior": 2.0, "rank_ratio": 0.12}
    assert path.name.startswith(f"{MODEL}_3tasks_cart_prior2_rank0.12_")


def test_specify_lambda_fixes_alpha(world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    payload, path = _run(world, monkeypatch, tmp_path, "method=TSVM", "specify_lambda=1.0")
    _check_payload(world, payload, "TSVM")
    assert payload["alpha"] == 1.0 and payload["alpha_grid"] == [1.0] and list(payload["val"]) == ["1.0"]
    assert path.name.endswith("_lambda1.json")


@pytest.mark.parametrize("method", ["TSVC", "mag_masking"])
def test_task_specific_methods(world: World, method: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    payload, _ = _run(world, monkeypatch, tmp_path, f"method={method}")
    _check_payload(world, payload, method)
    assert payload["alpha"] == 1.0
    assert set(payload["task_choices"]) == set(world.datasets)
    assert len(payload["val"]) == 1


def test_zeroshot_matches_a_direct_evaluation(world: World, monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    """The cached / uint8-split pipeline gives exactly the accuracy of a plain float evaluation of θ0."""
    payload, _ = _run(world, monkeypatch, tmp_path, "method=zeroshot")
    _check_payload(world, payload, "zeroshot")
    assert payload["alpha"] == 0.0 and payload["merge_stats"] == {}
    path = zeroshot_checkpoint_path(world.checkpoints, MODEL)
    encoder, preprocess = build_image_encoder(world.spec, open_state_dict(path), path)
    for d in world.datasets:
        head = load_classification_head(head_path(world.checkpoints, MODEL, d))
        for name, section in ((d, payload["test"]), (f"{d}Val", payload["val_best"])):
            dataset = get_dataset(name, preprocess, world.data, num_workers=0).test_dataset
            images = torch.stack([dataset[i][0] for i in range(len(dataset))])
            labels = torch.tensor([dataset[i][1] for i in range(len(dataset))])
            with torch.no_grad():
                top1 = (head(encoder(images)).argmax(1) == labels).float().mean().item()
            assert section[f"{name}:top1"] == pytest.approx(top1)


def test_tall_mask_saves_masks_then_load_mask_and_consensus(world: World, monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    # an explicit task list (not the benchmark's first T tasks): the file is named after the tasks too
    mask_file = tall_mask_paths(world.checkpoints, MODEL, 3, datasets=world.datasets)[0]
    assert mask_file.name == "TALL_mask_3task_MNIST-EuroSAT-DTD.npy"
    mask_file.unlink(missing_ok=True)
    payload, path = _run(world, monkeypatch, tmp_path / "build", "method=tall_mask")
    _check_payload(world, payload, "tall_mask")
    assert list(payload["val"]) == [repr(lam) for lam in TALL_LAMBDAS]
    assert set(payload["task_choices"]) == set(world.datasets)
    assert all(lam in TALL_LAMBDAS for lam in payload["task_choices"].values())
    for d, lam in payload["task_choices"].items():  # the chosen λ is the first best on the task's own val split
        scores = [payload["val"][repr(x)][f"{d}Val:top1"] for x in TALL_LAMBDAS]
        assert lam == TALL_LAMBDAS[scores.index(max(scores))]
        assert payload["val_best"][f"{d}Val:top1"] == max(scores)
    assert payload["tall_mask_saved"] is True and Path(payload["tall_mask_file"]) == mask_file
    theta0 = open_state_dict(zeroshot_checkpoint_path(world.checkpoints, MODEL))
    masks = load_tall_masks(mask_file, num_entries=sum(v.numel() for v in theta0.values()))
    assert set(masks) == set(world.datasets)
    assert all(m.any() for m in masks.values())
    record = read_mask_record(mask_file)
    assert record == {"tasks": world.datasets, "built_with": {"use_ties": False}}

    loaded, _ = _run(world, monkeypatch, tmp_path / "load", "method=tall_mask", "method.load_mask=True")
    assert loaded["tall_mask_saved"] is False and Path(loaded["tall_mask_file"]) == mask_file
    assert loaded["test"] == payload["test"], "the saved masks reproduce the chosen ones"

    consensus, cpath = _run(world, monkeypatch, tmp_path / "consensus", "method=consensus",
                            "method.prun_thre_k=2")
    _check_payload(world, consensus, "consensus")
    assert consensus["method_params"]["mask_file"] == str(mask_file)
    assert consensus["alpha_grid"] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert cpath.name.startswith(f"{MODEL}_3tasks_consensus_k2_nonlinear_additions")


def test_missing_head_is_built_and_saved(world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = head_path(world.checkpoints, MODEL, "DTD")
    path.unlink(missing_ok=True)
    _run(world, monkeypatch, tmp_path, "method=zeroshot")
    head = load_classification_head(path)
    assert head.normalize and head.weight.shape[0] == 3 and torch.all(head.bias == 0)
    # rows: unit vectors times exp(logit_scale) of the model
    scale = open_state_dict(zeroshot_checkpoint_path(world.checkpoints, MODEL))["model.logit_scale"].exp()
    assert torch.allclose(head.weight.norm(dim=1), scale.expand(3), rtol=1e-5)


def test_disk_cache_gives_the_same_numbers(world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    memory, _ = _run(world, monkeypatch, tmp_path / "memory", "method=sum")
    cache = tmp_path / "cache"
    disk, _ = _run(world, monkeypatch, tmp_path / "disk", "method=sum", "eval_cache=disk", f"cache_dir={cache}")
    assert disk["test"] == memory["test"] and disk["val"] == memory["val"]
    assert len(list(cache.glob("*.pt"))) == 2 * len(world.datasets)  # val and test split of every task
    again, _ = _run(world, monkeypatch, tmp_path / "again", "method=sum", "eval_cache=disk", f"cache_dir={cache}")
    assert again["test"] == memory["test"]


def test_result_numbers_are_finite_json(world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    payload, path = _run(world, monkeypatch, tmp_path, "method=ties", "method.k=50")
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert payload["method_params"] == {"k": 50.0, "agg": "mean"}
    assert payload["method_full_name"] == "ties_k50_mean"
    assert all(math.isfinite(v) for v in payload["test"].values())

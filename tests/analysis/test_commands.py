"""analyze.py end to end on a tiny open_clip model: every analysis through Hydra, numbers checked against
independent computations and against main.py's own result files."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.analysis.conftest import analyze_args, run_analyze
from tests.support.entry_points import load, run_main
from tests.support.world import MODEL, World
from tsvmerge.checkpoints import finetuned_checkpoint_path, head_path, open_state_dict, zeroshot_checkpoint_path
from tsvmerge.data import get_dataset
from tsvmerge.merging.interference import layer_interference
from tsvmerge.merging.tsv import components_per_task, uses_svd
from tsvmerge.models.encoder import build_image_encoder
from tsvmerge.models.heads import load_classification_head

TAG = "MNIST-EuroSAT-DTD"


def _out(tmp_path: Path, analysis: str) -> Path:
    return tmp_path / "results" / "analysis" / MODEL / analysis


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _checkpoints(world: World) -> tuple[dict, list[dict]]:
    theta0 = open_state_dict(zeroshot_checkpoint_path(world.checkpoints, MODEL))
    return theta0, [open_state_dict(finetuned_checkpoint_path(world.checkpoints, MODEL, d)) for d in world.datasets]


def _assert_figure(png: Path) -> None:
    """A real 200 dpi PNG with its numbers beside it."""
    from PIL import Image

    assert png.is_file() and png.with_suffix(".json").is_file() and png.with_suffix(".csv").is_file()
    with Image.open(png) as image:
        assert image.info["dpi"] == pytest.approx((200, 200), abs=1)
        assert min(image.size) > 600


def test_sti(aworld: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert run_analyze(analyze_args(aworld, tmp_path, "analysis=sti"), monkeypatch) == 0
    out = _out(tmp_path, "sti")
    png = out / f"sti_layers_{TAG}.png"
    _assert_figure(png)
    data = load(png.with_suffix(".json"))
    theta0, finetuned = _checkpoints(aworld)
    assert data["tasks"] == aworld.datasets
    for key, values in data["per_entry"].items():
        d = torch.stack([ft[key] - theta0[key] for ft in finetuned])
        low, full = layer_interference(d), layer_interference(d, full_rank=True)
        assert values["low_rank_before"] == pytest.approx(low["before"], rel=1e-4)
        assert values["full_rank_before"] == pytest.approx(full["before"], rel=1e-4)
        assert values["low_rank_after"] < 1e-5 * values["low_rank_before"]
        assert values["full_rank_before"] > values["low_rank_before"] > 0
    for variant, total in data["total"].items():
        assert total == pytest.approx(sum(v[variant] for v in data["per_entry"].values()))
    rows = _csv(out / f"sti_per_entry_{TAG}.csv")
    assert {r["layer"] for r in rows} == set(data["per_entry"])
    gram = next(out.glob("gram_low_*.png"))
    _assert_figure(gram)
    assert "resblocks.0.attn.in_proj_weight" in gram.name
    grams = np.load(gram.with_suffix(".npz"))
    k = components_per_task(96, 32, 3)
    assert grams["before_U"].shape == (3 * k, 3 * k)
    np.testing.assert_allclose(grams["after_U"], np.eye(3 * k), atol=1e-5)
    np.testing.assert_allclose(grams["after_V"], np.eye(3 * k), atol=1e-5)


def test_spectra_and_procrustes(aworld: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert run_analyze(analyze_args(aworld, tmp_path, "analysis=spectra"), monkeypatch) == 0
    assert run_analyze(analyze_args(aworld, tmp_path, "analysis=procrustes"), monkeypatch) == 0
    spectra_png = _out(tmp_path, "spectra") / f"spectra_{TAG}.png"
    _assert_figure(spectra_png)
    _assert_figure(_out(tmp_path, "spectra") / f"energy_{TAG}.png")
    theta0, finetuned = _checkpoints(aworld)
    spectra = load(_out(tmp_path, "spectra") / f"spectra_{TAG}.json")["per_entry"]
    key = "model.visual.transformer.resblocks.0.mlp.c_fc.weight"
    expected = torch.linalg.svdvals(finetuned[1][key] - theta0[key])
    assert spectra[key]["singular_values"]["EuroSAT"] == pytest.approx(expected.tolist(), rel=1e-4)
    ranks = _csv(_out(tmp_path, "spectra") / f"rank_for_energy_{TAG}.csv")
    assert len(ranks) == 3 * len(spectra)
    png = _out(tmp_path, "procrustes") / f"procrustes_{TAG}.png"
    _assert_figure(png)
    rows = _csv(png.with_suffix(".csv"))
    assert len(rows) == 4 * len(spectra)  # (full, low) × (U, V) per 2-D entry
    assert all(float(r["error"]) > 0 for r in rows)


def _direct_top1(world: World, weights_path: Path, dataset: str) -> float:
    """Top-1 of a checkpoint on a test split with plain float preprocessing (no caches, no in-place weights)."""
    encoder, preprocess = build_image_encoder(world.spec, open_state_dict(weights_path), weights_path)
    head = load_classification_head(head_path(world.checkpoints, MODEL, dataset))
    data = get_dataset(dataset, preprocess, world.data, num_workers=0).test_dataset
    images = torch.stack([data[i][0] for i in range(len(data))])
    labels = torch.tensor([data[i][1] for i in range(len(data))])
    with torch.no_grad():
        return (head(encoder(images)).argmax(1) == labels).float().mean().item()


def test_truncation_reaches_the_finetuned_accuracy_at_fraction_1(aworld: World, monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    args = analyze_args(aworld, tmp_path, "analysis=truncation", "analysis.fractions=[0.1,0.5,1.0]")
    assert run_analyze(args, monkeypatch) == 0
    png = _out(tmp_path, "truncation") / f"truncation_test_{TAG}.png"
    _assert_figure(png)
    data = load(png.with_suffix(".json"))
    assert data["fractions"] == [0.1, 0.5, 1.0] and data["split"] == "test"
    for d in aworld.datasets:
        curve = data["tasks"][d]
        assert curve["top1"][-1] == curve["finetuned_top1"], "fraction 1 keeps every component: τi itself"
        assert curve["finetuned_top1"] == pytest.approx(
            _direct_top1(aworld, finetuned_checkpoint_path(aworld.checkpoints, MODEL, d), d))
        assert curve["zeroshot_top1"] == pytest.approx(
            _direct_top1(aworld, zeroshot_checkpoint_path(aworld.checkpoints, MODEL), d))
        assert curve["normalized_top1"] == pytest.approx([a / 0.8 for a in curve["top1"]])  # world's FT_TEST
        assert curve["published_finetuned_top1"] == 0.8
    assert len(_csv(png.with_suffix(".csv"))) == 3 * 3


def test_ablation_reuses_main_results_and_feeds_the_report(aworld: World, monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    args = analyze_args(aworld, tmp_path, "analysis=ablation")
    assert run_analyze(args, monkeypatch) == 0
    out = _out(tmp_path, "ablation")
    _assert_figure(out / f"ablation_{TAG}.png")
    rows = {r["method"]: r for r in _csv(out / f"ablation_{TAG}_table.csv")}
    assert list(rows) == ["sum", "TSVM_lowrank_only", "TSVM_interference_only", "TSVM"]
    for method, row in rows.items():
        payload = load(Path(row["result_file"]))
        assert payload["method"] == method and payload["datasets"] == aworld.datasets
        assert float(row["avg_top1"]) == pytest.approx(payload["test"]["avg_top1"])
        assert float(row["avg_normalized_top1"]) == pytest.approx(payload["test"]["avg_normalized_top1"])
        assert float(row["alpha"]) == pytest.approx(payload["alpha"])
    md = (out / f"ablation_{TAG}.md").read_text()
    assert "| TSV-M (both) | ✓ | ✓ |" in md and "| Task Arithmetic | ✗ | ✗ |" in md

    # existing result files are reused: a second run evaluates nothing
    import tsvmerge.recipes.merge_and_evaluate as merge_and_evaluate

    def fail(*args, **kwargs):
        raise AssertionError("result file not reused")

    monkeypatch.setattr(merge_and_evaluate, "run", fail)
    assert run_analyze(args, monkeypatch) == 0

    from tsvmerge.analysis.report import write_report

    written = write_report(tmp_path / "results", tmp_path / "report")
    per = [r for r in _csv(written["per_dataset.csv"]) if r["dataset"] == "average"]
    # The fine-tuned reference row comes from the accuracy file the runs normalized by.
    assert "finetuned" in {r["method"] for r in per}
    assert {r["method"]: float(r["top1"]) for r in per if r["method"] != "finetuned"} == pytest.approx(
        {m: float(r["avg_top1"]) for m, r in rows.items()})


def test_alpha_heatmap_matches_main_at_the_same_alpha(aworld: World, monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    args = analyze_args(aworld, tmp_path, "analysis=alpha_heatmap", "analysis.methods=[sum]",
                        "analysis.subsets=[[MNIST,EuroSAT],[MNIST,EuroSAT,DTD]]", "analysis.alphas=[0.5,1.0]")
    assert run_analyze(args, monkeypatch) == 0
    png = next(_out(tmp_path, "alpha_heatmap").glob("alpha_heatmap_test_*.png"))
    _assert_figure(png)
    sweep = load(png.with_suffix(".json"))["methods"]["sum"]
    assert sweep["alphas"] == [0.5, 1.0]
    assert [s["datasets"] for s in sweep["subsets"]] == [["MNIST", "EuroSAT"], aworld.datasets]
    for s in sweep["subsets"]:
        scores = s["avg_normalized_top1"]
        assert s["best_alpha"] == sweep["alphas"][scores.index(max(scores))]
    results = tmp_path / "main"
    main_args = aworld.main_args("method=sum", "specify_lambda=1.0", f"results_dir={results}",
                                 f"ft_accuracies={aworld.ft_accuracies}", run_dir=tmp_path / "main_run")
    assert run_main(main_args, monkeypatch) == 0
    payload = load(next((results / "merging").glob("*.json")))
    full = sweep["subsets"][1]
    assert full["avg_normalized_top1"][1] == pytest.approx(payload["test"]["avg_normalized_top1"])
    for d in aworld.datasets:
        assert full["per_dataset"][d][1] == pytest.approx(payload["test"][f"{d}:top1"])


def test_compression_counts_the_stored_tensors(aworld: World, monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    assert run_analyze(analyze_args(aworld, tmp_path, "analysis=compression"), monkeypatch) == 0
    out = _out(tmp_path, "compression")
    _assert_figure(out / f"compression_{TAG}.png")
    rows = {r["method"]: r for r in _csv(out / f"compression_{TAG}_table.csv")}
    theta0, finetuned = _checkpoints(aworld)
    changed = [k for k in theta0 if theta0[k].is_floating_point() and not torch.equal(finetuned[0][k], theta0[k])]
    numel = sum(theta0[k].numel() for k in changed)
    tsvc = 0
    for k in changed:
        shape = theta0[k].shape
        if uses_svd(k, shape, include_text_projection=True):
            tsvc += components_per_task(*shape, 3) * (shape[0] + shape[1] + 1) * 4
        else:
            tsvc += theta0[k].numel() * 4
    assert int(rows["finetuned"]["total_bytes"]) == 3 * 4 * numel
    assert int(rows["tall_mask"]["shared_bytes"]) == 4 * numel
    assert int(rows["tall_mask"]["total_bytes"]) == 4 * numel + 3 * math.ceil(numel / 8)
    assert int(rows["TSVC"]["total_bytes"]) == 3 * tsvc
    assert [int(rows["TSVC"][f"bytes_{d}"]) for d in aworld.datasets] == [tsvc] * 3
    for method in ("tall_mask", "TSVC"):
        payload = load(Path(rows[method]["result_file"]))
        assert payload["method"] == method
        assert float(rows[method]["avg_top1"]) == pytest.approx(payload["test"]["avg_top1"])
    assert float(rows["finetuned"]["avg_top1"]) == pytest.approx(0.8)


def test_sti_vs_accuracy_uses_result_files_and_leaves_missing_ones_out(aworld: World,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    main_args = aworld.main_args("method=sum", f"results_dir={tmp_path / 'results'}",
                                 f"ft_accuracies={aworld.ft_accuracies}", run_dir=tmp_path / "main_run")
    assert run_main(main_args, monkeypatch) == 0
    payload = load(next((tmp_path / "results" / "merging").glob("*.json")))
    args = analyze_args(aworld, tmp_path, "analysis=sti_accuracy", "analysis.task_sets=[[MNIST,EuroSAT],"
                        "[MNIST,EuroSAT,DTD]]")
    assert run_analyze(args, monkeypatch) == 0
    png = next(_out(tmp_path, "sti_accuracy").glob("sti_vs_accuracy_*.png"))
    _assert_figure(png)
    points = {(p["method"], p["num_tasks"]): p for p in load(png.with_suffix(".json"))["points"]}
    assert set(points) == {("sum", 2), ("sum", 3), ("TSVM", 2), ("TSVM", 3)}
    assert points[("sum", 3)]["avg_normalized_top1"] == pytest.approx(payload["test"]["avg_normalized_top1"])
    assert points[("sum", 2)]["avg_normalized_top1"] is None and points[("TSVM", 3)]["avg_top1"] is None
    theta0, finetuned = _checkpoints(aworld)
    total = 0.0
    for key in theta0:
        if uses_svd(key, theta0[key].shape) and not torch.equal(finetuned[0][key], theta0[key]):
            d = torch.stack([ft[key] - theta0[key] for ft in finetuned])
            total += layer_interference(d, full_rank=True)["before"]
    assert points[("sum", 3)]["sti"] == pytest.approx(total, rel=1e-4)
    assert points[("TSVM", 3)]["sti"] < 1e-6 * total


@pytest.mark.parametrize(("overrides", "message"), [
    (["analysis=nope"], "unknown analysis 'nope'; available: ablation, alpha_heatmap, compression"),
    (["analysis=sti", "analysis.foo=1"], "unknown key 'analysis.foo' for analysis=sti; valid analysis keys: name, "
                                         "full_rank"),
    (["analysis=truncation", "analysis.split=train"], "analysis.split='train' is not valid; choose one of: test, val"),
    (["analysis=sti", "method.foo=5"], "unknown key 'method.foo' for method=sum; valid method keys"),
    (["analysis=truncation", "analysis.fractions=[0,1]"], "analysis.fractions must be non-empty, each in (0, 1]"),
    (["analysis=truncation", "analysis.fractions=0.5"],
     "analysis.fractions must be non-empty, each in (0, 1]; got 0.5"),
    (["analysis=alpha_heatmap", "analysis.subsets=[[MNIST,Foo]]"], "analysis.subsets: Unknown dataset 'Foo'"),
])
def test_configuration_errors(aworld: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                              capsys: pytest.CaptureFixture, overrides: list[str], message: str) -> None:
    assert run_analyze(analyze_args(aworld, tmp_path, *overrides), monkeypatch) == 2
    assert message in capsys.readouterr().err


def test_missing_checkpoints_are_listed(aworld: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    args = analyze_args(aworld, tmp_path, "analysis=sti", f"model_location={tmp_path / 'none'}")
    assert run_analyze(args, monkeypatch) == 2
    err = capsys.readouterr().err
    assert "nonlinear_zeroshot.pt" in err and "DTDVal/nonlinear_finetuned.pt" in err
    assert not list(tmp_path.glob("results/analysis/*/sti/*.png"))


def test_outputs_are_finite_json(aworld: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert run_analyze(analyze_args(aworld, tmp_path, "analysis=procrustes", "analysis.log_scale=false"),
                       monkeypatch) == 0
    text = (_out(tmp_path, "procrustes") / f"procrustes_{TAG}.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    json.loads(text)


def _workspace(world: World, tmp_path: Path):
    """A Workspace composed from config/config.yaml like analyze.py's (library use, no Hydra application)."""
    from tests.analysis.conftest import REPO
    from tsvmerge.recipes.analyze import Workspace
    from tsvmerge.config import compose_config
    from tsvmerge.recipes.configs import config_source

    source = config_source(REPO / "config", [world.conf])
    cfg = compose_config(source, "config", [
        f"model={MODEL}", f"DATASETS=[{','.join(world.datasets)}]", f"data_location={world.data}", "device=cpu",
        f"model_location={world.checkpoints}", f"results_dir={tmp_path / 'results'}",
        f"ft_accuracies={world.ft_accuracies}", "num_workers=0", "batch_size=4", "progress=false"])
    return Workspace(cfg, source)


def test_each_split_is_preprocessed_once(aworld: World, tmp_path: Path) -> None:
    """Truncation and α sweeps evaluate a split many times: its images are preprocessed once (then released)."""
    from tsvmerge.analysis import EvalSession, truncation_curves
    from tsvmerge.analysis.alpha_heatmap import alpha_sweep

    ws = _workspace(aworld, tmp_path)
    session = EvalSession.open(ws.settings, ws.datasets, "test")
    truncation_curves(session, [0.25, 0.5, 1.0])
    for d in ws.datasets:
        split = session.data.test[d]
        assert split.preprocess_passes == 1 and not split.cached
    subsets = [("two", ["MNIST", "EuroSAT"]), ("three", ws.datasets)]
    alpha_sweep(session, subsets, {"sum": {}, "TSVM": {}}, alphas=[0.5, 1.0])
    assert [session.data.test[d].preprocess_passes for d in ws.datasets] == [2, 2, 2]

"""main.py with the data-aware methods on the tiny world: calibration samples drawn from the tasks' own splits,
ESM's golden-section α search on its decomposed maps only, RegMean without α; the result file records both."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.entry_points import load, run_main
from tests.support.world import World, make_world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("world"))


def _run(world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *overrides: str) -> dict:
    results = tmp_path / "results"
    args = world.main_args(*overrides, f"results_dir={results}", f"ft_accuracies={world.ft_accuracies}",
                           run_dir=tmp_path / "run")
    assert run_main(args, monkeypatch) == 0
    files = sorted((results / "merging").glob("*.json"))
    assert len(files) == 1, files
    return load(files[0])


def test_esm_runs_end_to_end(world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    payload = _run(world, monkeypatch, tmp_path, "method=esm")
    assert payload["method"] == "esm"
    assert len(payload["alpha_grid"]) == 14, "the golden-section search evaluates 14 α"
    assert payload["alpha_grid"][:2] == pytest.approx([0.763932, 1.236068], abs=1e-6)
    assert payload["alpha"] in payload["alpha_grid"]
    calibration = payload["calibration"]
    counts = calibration["samples_per_task"]
    assert set(counts) == set(world.datasets) and all(0 < n <= 32 for n in counts.values())
    assert calibration["seed"] == 0 and calibration["split"] == "validation"
    regime = f"{max(counts.values())} unlabeled/task + validation (α)"
    assert payload["data_regime"] == regime
    assert f"data used: {regime}" in capsys.readouterr().out


def test_regmean_runs_end_to_end(world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    payload = _run(world, monkeypatch, tmp_path, "method=regmean", "calibration.seed=3")
    assert payload["alpha_grid"] == [1.0] and payload["alpha"] == 1.0
    calibration = payload["calibration"]
    assert calibration["split"] == "train" and calibration["seed"] == 3
    counts = calibration["samples_per_task"]
    assert set(counts) == set(world.datasets) and all(0 < n <= 256 for n in counts.values())
    assert payload["data_regime"] == f"{max(counts.values())} unlabeled/task"


def test_calibration_for_a_data_free_method_is_refused(world: World, monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = world.main_args("method=TSVM", "calibration.samples=4", f"results_dir={tmp_path / 'r'}",
                           run_dir=tmp_path / "run")
    assert run_main(args, monkeypatch) == 2
    assert "merges without data" in capsys.readouterr().err
    assert not (tmp_path / "r" / "merging").exists()


def test_more_samples_than_the_split_has_is_refused(world: World, monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = world.main_args("method=esm", "calibration.samples=100000", f"results_dir={tmp_path / 'r'}",
                           f"ft_accuracies={world.ft_accuracies}", run_dir=tmp_path / "run")
    assert run_main(args, monkeypatch) == 2
    assert "holds only" in capsys.readouterr().err


def test_analyses_merge_the_data_aware_methods_too(world: World, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    """analyze.py's merges run the calibration pass as main.py does: the α heat map of ESM and RegMean at α = 1
    equals main.py's test numbers at the same α, and the merged spectra include them."""
    from tests.analysis.conftest import analyze_args, run_analyze

    args = analyze_args(world, tmp_path, "analysis=alpha_heatmap", "analysis.methods=[esm,regmean]",
                        f"analysis.subsets=[[{','.join(world.datasets)}]]", "analysis.alphas=[1.0]")
    assert run_analyze(args, monkeypatch) == 0
    sweep = load(next((tmp_path / "results").rglob("alpha_heatmap_test_*.json")))["methods"]
    for method in ("esm", "regmean"):
        payload = _run(world, monkeypatch, tmp_path / method, f"method={method}", "specify_lambda=1.0")
        assert sweep[method]["subsets"][0]["avg_top1"][0] == pytest.approx(payload["test"]["avg_top1"])
    args = analyze_args(world, tmp_path / "spectra", "analysis=merged_spectra", "analysis.methods=[esm,regmean]")
    assert run_analyze(args, monkeypatch) == 0

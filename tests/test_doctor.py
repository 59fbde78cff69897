"""``tsvmerge doctor``: main.py's preflight as a command, with the commands that fetch what is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.data_fixtures import make_dataset_fixture
from tests.support.hub_cache import make_hub_cache
from tsvmerge.cli import main

REPO = Path(__file__).resolve().parents[1]
ACCURACIES = REPO / "results" / "single_task" / "ViT-B-32" / "nonlinear_ft_accuracies.json"


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory (main.py's relative default locations resolve there), the fixture repository in
    an offline hub cache."""
    make_hub_cache(tmp_path / "hub")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def doctor(*overrides: str) -> int:
    return main(["doctor", *overrides])


def test_nothing_present_lists_everything_with_the_fetch_commands(workdir: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    assert doctor("model=ViT-B-32", "num_tasks=8", f"ft_accuracies={ACCURACIES}") == 1
    out = capsys.readouterr().out
    assert "checkpoints: 0 of 9 present" in out and "datasets: 0 of 8 present" in out
    assert "missing  models/checkpoints/ViT-B-32/MNISTVal/nonlinear_zeroshot.pt" in out
    assert "missing  models/checkpoints/ViT-B-32/SUN397Val/nonlinear_finetuned.pt" in out
    assert "missing  Cars (no data/stanford_cars/" in out
    assert "fetch:   tsvmerge download checkpoints --model ViT-B-32 --tasks 8\n" in out
    assert "fetch:   tsvmerge download data --benchmark 8\n" in out
    assert "single-task accuracies: 1 of 1 present" in out
    assert "not ready: 17 required inputs are missing" in out


def test_downloaded_checkpoints_and_datasets_make_a_ready_run(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["download", "checkpoints", "--quiet", "--model", "ViT-B-32", "--datasets", "MNIST", "EuroSAT"]) == 0
    run = ["model=ViT-B-32", "DATASETS=[MNIST,EuroSAT]", f"ft_accuracies={ACCURACIES}", "method=TSVM"]
    capsys.readouterr()
    assert doctor(*run) == 1  # the datasets are still missing
    out = capsys.readouterr().out
    assert "checkpoints: 3 of 3 present" in out and "zero-shot heads: 2 of 2 present" in out
    assert "fetch:   tsvmerge download data --datasets MNIST EuroSAT\n" in out and "not ready: 2 required" in out

    for name in ("MNIST", "EuroSAT"):
        make_dataset_fixture(name, workdir / "data")
    assert doctor(*run) == 0
    out = capsys.readouterr().out
    assert "ready: 3 checkpoints, 2 zero-shot heads, 2 datasets, 1 single-task accuracies present" in out
    assert "Run: python main.py model=ViT-B-32 DATASETS=[MNIST,EuroSAT]" in out and "missing" not in out

    from tsvmerge.config import compose_config
    from tsvmerge.evaluation.run_settings import settings_from_config
    from tsvmerge.recipes.configs import config_source
    from tsvmerge.recipes.doctor import main_config_dir
    from tsvmerge.evaluation.run_inputs import check_run_inputs

    settings = settings_from_config(compose_config(config_source(main_config_dir()), "config", run))
    inputs = check_run_inputs(settings)
    inputs.check.raise_if_missing()  # main.py's own preflight passes
    assert inputs.zeroshot == Path("models/checkpoints/ViT-B-32/MNISTVal/nonlinear_zeroshot.pt")


def test_saved_masks_a_method_reads_name_the_download(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    run = ["model=ViT-B-32", "num_tasks=8", "method=consensus", f"ft_accuracies={ACCURACIES}"]
    assert doctor(*run) == 1
    out = capsys.readouterr().out
    assert "saved TALL masks models/tall_masks/ViT-B-32/TALL_mask_8task.npy not found" in out
    assert "tsvmerge download checkpoints --model ViT-B-32 --tasks 8 --masks" in out
    assert main(["download", "checkpoints", "--quiet", "--model", "ViT-B-32", "--tasks", "8", "--masks"]) == 0
    capsys.readouterr()
    assert doctor(*run) == 1
    out = capsys.readouterr().out
    assert "checkpoints: 9 of 9 present" in out and "TALL" not in out and "other problems" not in out
    assert "not ready: 8 required inputs" in out  # the datasets only


def test_demo_points_to_make_demo(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    assert doctor("model=demo", "num_tasks=4") == 1
    out = capsys.readouterr().out
    assert "missing  models/checkpoints/demo/DigitsVal/nonlinear_zeroshot.pt" in out
    assert "fetch:   make demo (or: python demo.py)" in out and "tsvmerge download" not in out


def test_a_bad_configuration_exits_2(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    assert doctor("model=ViT-B-99") == 2
    err = capsys.readouterr().err
    assert err.startswith("tsvmerge: error:") and "ViT-B-32" in err and "Traceback" not in err

"""eval_single_task.py end to end: zero-shot and fine-tuned encoders, accuracy files in the format main.py reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.evaluation.conftest import run_eval_single_task
from tests.support.world import MODEL, World
from tsvmerge.evaluation.metrics import load_ft_accuracies


def _args(world: World, results: Path, mode: str, *extra: str) -> list[str]:
    return ["--model", MODEL, "--config-dir", str(world.conf), "--finetuning-mode", mode,
            "--model-location", str(world.checkpoints), "--data-location", str(world.data),
            "--results-dir", str(results), "--device", "cpu", "--num-workers", "0", "--batch-size", "8",
            "--no-progress", *extra]


@pytest.mark.parametrize("mode,file", [("standard", "nonlinear_ft_accuracies.json"),
                                       ("none", "zeroshot_accuracies.json")])
def test_eval_single_task_writes_accuracies(world: World, tmp_path: Path, mode: str, file: str,
                                            capsys: pytest.CaptureFixture) -> None:
    assert run_eval_single_task(_args(world, tmp_path, mode, "--datasets", *world.datasets)) == 0
    path = tmp_path / "single_task" / MODEL / file
    data = json.loads(path.read_text())
    assert set(data) == {*world.datasets, *(f"{d}Val" for d in world.datasets)}
    assert all(0.0 <= v <= 1.0 for v in data.values())
    out = capsys.readouterr().out
    assert all(d in out for d in world.datasets)
    if mode == "standard" and all(v > 0 for v in data.values()):
        load_ft_accuracies(path, list(data))  # the file main.py reads


def test_later_runs_update_the_file(world: World, tmp_path: Path) -> None:
    path = tmp_path / "single_task" / MODEL / "nonlinear_ft_accuracies.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"Cars": 0.5, "CarsVal": 0.25}))
    assert run_eval_single_task(_args(world, tmp_path, "standard", "--train-dataset", "MNIST")) == 0
    data = json.loads(path.read_text())
    assert data["Cars"] == 0.5 and data["CarsVal"] == 0.25 and {"MNIST", "MNISTVal"} <= set(data)


def test_fine_tuned_differs_from_zero_shot_model(world: World, tmp_path: Path) -> None:
    """Standard mode loads each task's own checkpoint (their weights differ from θ0's)."""
    import tsvmerge.recipes.eval_single_task as single_task

    loaded: list[str] = []
    real = single_task.open_state_dict

    def spy(path):
        loaded.append(Path(path).parent.name)
        return real(path)

    single_task.open_state_dict = spy
    try:
        assert run_eval_single_task(_args(world, tmp_path, "standard", "--datasets", *world.datasets)) == 0
    finally:
        single_task.open_state_dict = real
    assert loaded == [f"{d}Val" for d in world.datasets]


def test_errors(world: World, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run_eval_single_task(_args(world, tmp_path, "standard", "--datasets", "Nope")) == 2
    assert "Unknown dataset 'Nope'" in capsys.readouterr().err
    assert run_eval_single_task(["--model", "nope", "--datasets", "MNIST"]) == 2
    assert "available: demo, ViT-B-16, ViT-B-32, ViT-L-14" in capsys.readouterr().err
    empty = tmp_path / "empty"
    assert run_eval_single_task(_args(world, tmp_path, "standard", "--datasets", "MNIST", "--model-location",
                                      str(empty))) == 2
    assert str(empty / MODEL / "MNISTVal" / "nonlinear_finetuned.pt") in capsys.readouterr().err

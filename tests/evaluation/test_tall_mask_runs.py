"""TALL-mask files cannot be confused: a file records its tasks and parameters, a run reading masks for other tasks
stops naming both lists, and a run never overwrites a file built for other tasks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.support.entry_points import run_main
from tests.support.world import MODEL, World
from tsvmerge.checkpoints import tall_mask_paths
from tsvmerge.checkpoints.tall_mask_files import check_mask_file, load_tall_masks, read_mask_record, save_tall_masks


def _args(world: World, tmp_path: Path, datasets: list[str], *overrides: str) -> list[str]:
    args = world.main_args(*overrides, f"results_dir={tmp_path / 'results'}", f"ft_accuracies={world.ft_accuracies}",
                           run_dir=tmp_path / "run")
    args[args.index(f"DATASETS=[{','.join(world.datasets)}]")] = f"DATASETS=[{','.join(datasets)}]"
    return args


def test_masks_of_other_tasks_are_never_used(world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    built = tall_mask_paths(world.checkpoints, MODEL, 2, datasets=["MNIST", "EuroSAT"])[0]
    built.unlink(missing_ok=True)
    assert run_main(_args(world, tmp_path / "a", ["MNIST", "EuroSAT"], "method=tall_mask"), monkeypatch) == 0
    assert read_mask_record(built)["tasks"] == ["MNIST", "EuroSAT"]
    capsys.readouterr()

    # The same number of tasks, other tasks: their own file is looked for (and is missing) ...
    assert run_main(_args(world, tmp_path / "b", ["DTD", "EuroSAT"], "method=consensus"), monkeypatch) == 2
    err = capsys.readouterr().err
    assert "TALL_mask_2task_DTD-EuroSAT.npy" in err and "method=tall_mask" in err and "Traceback" not in err
    # ... and naming the other run's file explicitly is an error listing both task lists.
    assert run_main(_args(world, tmp_path / "c", ["DTD", "EuroSAT"], "method=consensus",
                          f"method.mask_file={built}"), monkeypatch) == 2
    err = capsys.readouterr().err
    assert "['MNIST', 'EuroSAT']" in err and "['DTD', 'EuroSAT']" in err
    assert not (tmp_path / "c" / "results").exists()


def test_a_run_never_overwrites_masks_of_other_tasks(world: World, monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    target = tall_mask_paths(world.checkpoints, MODEL, 2, datasets=["DTD", "MNIST"])[0]
    target.parent.mkdir(parents=True, exist_ok=True)
    save_tall_masks(target, {"Cars": np.ones(8, bool), "SVHN": np.zeros(8, bool)})  # another run's file
    before = target.read_bytes()
    assert run_main(_args(world, tmp_path, ["DTD", "MNIST"], "method=tall_mask"), monkeypatch) == 2
    err = capsys.readouterr().err
    assert "['Cars', 'SVHN']" in err and "overwrite" in err
    assert target.read_bytes() == before


def test_published_files_without_a_record_keep_loading(tmp_path: Path) -> None:
    path = tmp_path / "tall_masks" / MODEL / "TALL_mask_2task.npy"
    path.parent.mkdir(parents=True)
    masks = {"MNIST": np.arange(20) % 2 == 0, "DTD": np.arange(20) % 3 == 0}
    np.save(path, {k: np.packbits(v) for k, v in masks.items()})  # as the published code writes it
    assert read_mask_record(path) is None
    check_mask_file(path, ["DTD", "MNIST"])
    assert set(load_tall_masks(path, num_entries=20)) == {"MNIST", "DTD"}
    with pytest.raises(ValueError, match=r"holds TALL masks for \['MNIST', 'DTD'\], not for the merged tasks"):
        check_mask_file(path, ["MNIST", "Cars"])


def test_parameters_recorded_and_compared(tmp_path: Path) -> None:
    path = tmp_path / "m.npy"
    save_tall_masks(path, {"MNIST": np.ones(4, bool)}, built_with={"use_ties": True, "ties_agg": "sum", "ties_k": 20})
    check_mask_file(path, ["MNIST"], {"use_ties": True, "ties_agg": "sum", "ties_k": 20})
    with pytest.raises(ValueError, match="ties_k: file 20, run 30"):
        check_mask_file(path, ["MNIST"], {"use_ties": True, "ties_agg": "sum", "ties_k": 30})

"""Without checkpoints, main.py stops within seconds, before building any model, and says what to do."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tsvmerge.models.encoder as encoder_module
import tsvmerge.models.zeroshot_heads as heads_module
from tests.support.entry_points import MAIN, REPO, run_main
from tests.support.world import MODEL, World
from tsvmerge.checkpoints import finetuned_checkpoint_path, zeroshot_checkpoint_path
from tsvmerge.data import BENCHMARK_DATASETS


def test_main_without_checkpoints_stops_in_seconds(tmp_path: Path) -> None:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(MAIN), "model=ViT-B-32", "method=TSVM", f"model_location={tmp_path / 'checkpoints'}",
         f"data_location={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=REPO, capture_output=True, text=True, timeout=120, env=env,
    )
    elapsed = time.perf_counter() - started
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr
    assert str(zeroshot_checkpoint_path(tmp_path / "checkpoints", "ViT-B-32")) in err
    for dataset in BENCHMARK_DATASETS[:8]:
        assert str(finetuned_checkpoint_path(tmp_path / "checkpoints", "ViT-B-32", dataset)) in err
        assert f"Dataset {dataset} not found" in err
    assert "nik-dim/tall_masks" in err and "tsvmerge download checkpoints --model ViT-B-32" in err  # where to get them
    assert "make demo" in err  # how to try the code offline
    assert "Traceback" not in err
    assert elapsed < 60, f"took {elapsed:.1f} s"  # typically ~5 s: nothing is built before the check


def test_no_model_is_built_before_the_check(world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("a model was created before the input check")

    monkeypatch.setattr(encoder_module, "create_clip", forbidden)
    monkeypatch.setattr(heads_module, "create_clip", forbidden)
    empty = tmp_path / "checkpoints"
    args = world.main_args("method=sum", f"model_location={empty}", f"results_dir={tmp_path}",
                           f"ft_accuracies={world.ft_accuracies}", run_dir=tmp_path / "run")
    assert run_main(args, monkeypatch) == 2


def test_consensus_without_saved_masks_says_to_run_tall_mask(world: World, monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = world.main_args("method=consensus", "method.use_ties=true", f"results_dir={tmp_path}",
                           f"ft_accuracies={world.ft_accuracies}", run_dir=tmp_path / "run")
    assert run_main(args, monkeypatch) == 2
    err = capsys.readouterr().err
    assert "TALL_mask_3task_MNIST-EuroSAT-DTD_use_ties_sum.npy" in err and "method=tall_mask" in err


def test_missing_accuracies_and_dataset_are_reported_together(world: World, monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = world.main_args("method=sum", f"data_location={tmp_path / 'nodata'}", f"results_dir={tmp_path}",
                           run_dir=tmp_path / "run")
    assert run_main(args, monkeypatch) == 2
    err = capsys.readouterr().err
    assert f"single_task/{MODEL}/nonlinear_ft_accuracies.json" in err and "eval_single_task.py" in err
    assert "Dataset MNIST not found" in err and "Dataset DTD not found" in err


def test_cart_without_published_settings_for_the_model_names_them(world: World, monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    args = world.main_args("method=cart", f"results_dir={tmp_path}", f"ft_accuracies={world.ft_accuracies}",
                           run_dir=tmp_path / "run")
    assert run_main(args, monkeypatch) == 2
    err = capsys.readouterr().err
    assert "prior and rank_ratio must be given" in err and "method.prior=2.0 method.rank_ratio=0.12" in err
    assert not list(tmp_path.rglob("*.json")), "nothing is written"

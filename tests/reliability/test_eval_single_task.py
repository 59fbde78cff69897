"""eval_single_task.py (its ``main(argv)``, in this process) on bad inputs: exit 2, one message naming the input,
no traceback, no accuracy file (not even a partial one), inputs unchanged."""

from __future__ import annotations

import logging
import runpy
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from tests.reliability.contract import assert_rejected, malicious_checkpoint, no_leftovers, snapshot
from tests.support.data_fixtures import make_dataset_fixture
from tests.support.world import MODEL, World
from tsvmerge.checkpoints import finetuned_checkpoint_path, head_path

REPO = Path(__file__).resolve().parents[2]
PROG = "eval_single_task.py"


@pytest.fixture(autouse=True)
def _fresh_root_logger(monkeypatch: pytest.MonkeyPatch) -> None:
    """No handler left by an earlier in-process run (its stream may be a closed capture)."""
    monkeypatch.setattr(logging.root, "handlers", [])


def run(argv: list[str]) -> int:
    return runpy.run_path(str(REPO / "eval_single_task.py"), run_name="eval_single_task")["main"](argv)


def argv(world: World, results: Path, *extra: str, checkpoints: Path | None = None,
         data: Path | None = None) -> list[str]:
    return ["--model", MODEL, "--config-dir", str(world.conf), "--finetuning-mode", "standard",
            "--model-location", str(checkpoints or world.checkpoints), "--data-location", str(data or world.data),
            "--results-dir", str(results), "--device", "cpu", "--num-workers", "0", "--batch-size", "8",
            "--no-progress", *extra]


def _copy_checkpoints(world: World, tmp_path: Path) -> Path:
    copy = tmp_path / "checkpoints"
    shutil.copytree(world.checkpoints, copy)
    return copy


def _check(code: int, capsys: pytest.CaptureFixture, tmp_path: Path, before: dict, *names: str) -> None:
    captured = capsys.readouterr()
    assert_rejected(code, captured.out, captured.err, PROG, *names)
    assert not (tmp_path / "results").exists(), "no accuracy file, not even a partial one"
    assert snapshot(tmp_path) == before
    assert no_leftovers(tmp_path) == []


def test_dataset_too_small_to_split(world: World, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "data"
    make_dataset_fixture("MNIST", data)
    raw = data / "MNIST" / "raw"
    images = np.zeros((9, 28, 28), dtype=np.uint8)
    (raw / "train-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, 9, 28, 28) + images.tobytes())
    (raw / "train-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, 9) + bytes(range(9)))
    before = snapshot(tmp_path)
    code = run(argv(world, tmp_path / "results", "--datasets", "MNIST", data=data))
    _check(code, capsys, tmp_path, before, "MNIST", "only 9 training image", "at least 10")


def test_truncated_checkpoint_stops_before_any_accuracy_is_recorded(world: World, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    """The second task's checkpoint is truncated: the first task's accuracy is not recorded either."""
    checkpoints = _copy_checkpoints(world, tmp_path)
    bad = finetuned_checkpoint_path(checkpoints, MODEL, "EuroSAT")
    bad.write_bytes(bad.read_bytes()[:1000])
    before = snapshot(tmp_path)
    code = run(argv(world, tmp_path / "results", "--datasets", "MNIST", "EuroSAT", checkpoints=checkpoints))
    _check(code, capsys, tmp_path, before, str(bad), "truncated")


def test_malicious_head_file_is_refused_and_never_runs(world: World, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    checkpoints = _copy_checkpoints(world, tmp_path)
    marker = tmp_path / "pwned"
    head = malicious_checkpoint(head_path(checkpoints, MODEL, "MNIST"), marker)
    before = snapshot(tmp_path)
    code = run(argv(world, tmp_path / "results", "--datasets", "MNIST", checkpoints=checkpoints))
    _check(code, capsys, tmp_path, before, str(head), "refusing")
    assert not marker.exists()


def test_unwritable_results_folder_is_found_before_any_work(world: World, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    before = snapshot(tmp_path)
    code = run(argv(world, blocker / "results", "--datasets", "MNIST"))
    captured = capsys.readouterr()
    assert_rejected(code, captured.out, captured.err, PROG, str(blocker))
    assert snapshot(tmp_path) == before

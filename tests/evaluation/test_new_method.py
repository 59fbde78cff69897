"""Adding a method is one registered dataclass and one YAML file: main.py runs it end to end, unchanged.

Two methods are registered here, inside the test: a shared-vector method with its own α grid and a task-specific
one (each task evaluated with its own vector). Nothing else in the project knows about them.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from tests.support.entry_points import load, run_main
from tests.support.world import MODEL, World
from tsvmerge.merging import EntryMerge, MergeMethod, TaskEntry, register, unregister


@dataclass
class ScaledMean(MergeMethod):
    """τMT = scale · mean(τi), α searched on (0, 2]."""

    name: ClassVar[str] = "test_scaled_mean"
    alpha_grid_max: ClassVar[float | None] = 2.0
    scale: float = 1.0

    def run_name(self) -> str:
        return f"{self.name}_s{self.scale:g}"

    def merge_entry(self, entry: TaskEntry) -> EntryMerge:
        return EntryMerge(task_vector=self.scale * entry.deltas().mean(dim=0))


@dataclass
class OwnVector(MergeMethod):
    """Each task evaluated with its own task vector, shrunk by ``shrink`` (α = 1)."""

    name: ClassVar[str] = "test_own_vector"
    task_specific: ClassVar[bool] = True
    shrink: float = 1.0

    def merge_entry(self, entry: TaskEntry) -> EntryMerge:
        deltas = entry.deltas()
        return EntryMerge(per_task=[self.shrink * deltas[t] for t in range(entry.num_tasks)])


@pytest.fixture
def conf(world: World, tmp_path: Path) -> Iterator[Path]:
    """A config folder with the world's model and one YAML file per new method; the methods registered."""
    folder = tmp_path / "conf"
    shutil.copytree(world.conf, folder)
    (folder / "method").mkdir(exist_ok=True)
    for cls in (ScaledMean, OwnVector):
        register(cls)
        (folder / "method" / f"{cls.name}.yaml").write_text(f"defaults:\n  - /schema/method/{cls.name}@_here_\n"
                                                            "  - _self_\n")
    yield folder
    for cls in (ScaledMean, OwnVector):
        unregister(cls.name)


def _run(world: World, conf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *overrides: str) -> dict:
    results = tmp_path / "results"
    args = world.main_args(*overrides, f"results_dir={results}", f"ft_accuracies={world.ft_accuracies}",
                           run_dir=tmp_path / "run")
    args[args.index("--config-dir") + 1] = str(conf)
    assert run_main(args, monkeypatch) == 0
    (path,) = sorted((results / "merging").glob("*.json"))
    return {**load(path), "_file": path.name}


def test_shared_vector_method_with_its_own_alpha_grid(world: World, conf: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    payload = _run(world, conf, tmp_path, monkeypatch, "method=test_scaled_mean", "method.scale=0.5")
    assert payload["method"] == "test_scaled_mean" and payload["method_params"] == {"scale": 0.5}
    assert payload["alpha_grid"] == pytest.approx([2 / 3, 4 / 3, 2.0])  # n_eval_points=4 on (0, 2]
    assert payload["alpha"] in payload["alpha_grid"] and payload["task_choices"] is None
    assert payload["_file"].startswith(f"{MODEL}_3tasks_test_scaled_mean_s0.5_")


def test_task_specific_method(world: World, conf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = _run(world, conf, tmp_path, monkeypatch, "method=test_own_vector")
    assert payload["method"] == "test_own_vector" and payload["alpha_grid"] == [1.0]
    assert set(payload["task_choices"]) == set(world.datasets)


def test_unknown_parameter_of_a_new_method(world: World, conf: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    args = world.main_args("method=test_own_vector", "method.scale=2", run_dir=tmp_path / "run")
    args[args.index("--config-dir") + 1] = str(conf)
    assert run_main(args, monkeypatch) == 2
    assert ("unknown key 'method.scale' for method=test_own_vector; valid method keys: name, full_name, svd_keys, "
            "average_keys, shrink") in capsys.readouterr().err

"""The tiny world (checkpoints, heads, datasets, accuracies) shared by the end-to-end tests, and a helper to run
eval_single_task.py in-process through argparse (main.py and other scripts: :mod:`tests.support.entry_points`)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from tests.support.entry_points import REPO
from tests.support.world import World, make_world

EVAL_SINGLE_TASK = REPO / "eval_single_task.py"


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("world"))


def run_eval_single_task(args: list[str]) -> int:
    module = runpy.run_path(str(EVAL_SINGLE_TASK), run_name="eval_single_task")
    return module["main"](args)


def result_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.json"))

"""The tiny world (checkpoints, heads, datasets, accuracies) shared by the end-to-end tests, and helpers to run the
real entry points in-process (main.py through Hydra's own ``@hydra.main``, eval_single_task.py through argparse)."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

from tests.evaluation.world import World, make_world

REPO = Path(__file__).resolve().parents[2]
MAIN = REPO / "main.py"
EVAL_SINGLE_TASK = REPO / "eval_single_task.py"


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("world"))


def run_script(script: Path, args: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """``python <script> <args>`` in this process (so tests can count calls); returns the exit status."""
    monkeypatch.setattr(sys, "argv", [str(script), *args])
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0


def run_main(args: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """``python main.py <args>`` in this process; returns the exit status."""
    return run_script(MAIN, args, monkeypatch)


def run_eval_single_task(args: list[str]) -> int:
    module = runpy.run_path(str(EVAL_SINGLE_TASK), run_name="eval_single_task")
    return module["main"](args)


def result_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.json"))


def load(path: Path) -> dict:
    return json.loads(path.read_text())

"""A tiny on-disk world (checkpoints, heads, datasets in the published layouts) for the analysis commands, and a
helper that runs ``analyze.py`` in-process through Hydra's real entry point."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.entry_points import run_script
from tests.support.world import World, make_world

REPO = Path(__file__).resolve().parents[2]
ANALYZE = REPO / "analyze.py"


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """The tests' matrices are tiny: one BLAS / LAPACK thread avoids thread start-up and spin-wait costs (which
    dominate on a loaded 2-core machine); restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def aworld(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("analysis_world"))


def analyze_args(world: World, out: Path, *overrides: str) -> list[str]:
    """Command line of analyze.py for this world; results (and analysis outputs) go under ``out/results``."""
    return world.main_args(f"results_dir={out / 'results'}", f"ft_accuracies={world.ft_accuracies}", *overrides,
                           run_dir=out / "run")


def run_analyze(args: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """``python analyze.py <args>`` in this process; returns the exit status."""
    return run_script(ANALYZE, args, monkeypatch)

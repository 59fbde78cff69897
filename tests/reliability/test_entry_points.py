"""main.py, analyze.py and finetune.py on bad command lines, run in this process as ``python <script> <args>``.

Each must exit with status 2 and one ``<script>: error:`` message naming the bad input, without a traceback and
before writing anything (the whole test folder is hashed before and after).
"""

from __future__ import annotations

import logging
import runpy
import sys
from pathlib import Path

import pytest

from tests.reliability.contract import assert_rejected, snapshot
from tests.support.world import World

REPO = Path(__file__).resolve().parents[2]


def run_script(script: str, args: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """``python <script> <args>`` in this process; returns the exit status.

    The root logger starts without handlers, as in a fresh process: a script's ``logging.basicConfig`` must not
    keep writing to the captured stderr of an earlier test.
    """
    monkeypatch.setattr(sys, "argv", [str(REPO / script), *args])
    monkeypatch.setattr(logging.root, "handlers", [])
    try:
        runpy.run_path(str(REPO / script), run_name="__main__")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def assert_script_rejects(script: str, args: list[str], root: Path, monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture, *names: str) -> None:
    """``python <script> <args>`` is rejected per the contract, naming ``names``, and ``root`` is left unchanged."""
    before = snapshot(root)
    code = run_script(script, args, monkeypatch)
    captured = capsys.readouterr()
    assert_rejected(code, captured.out, captured.err, script, *names)
    assert snapshot(root) == before


def _main_args(world: World, tmp_path: Path, *overrides: str, datasets: bool = True) -> list[str]:
    """main.py's command line for the tiny world; without ``datasets`` the world's task list is left out."""
    args = world.main_args(f"results_dir={tmp_path / 'results'}", f"ft_accuracies={world.ft_accuracies}",
                           run_dir=tmp_path / "run")
    if not datasets:
        args = [a for a in args if not a.startswith("DATASETS=")]
    return [*args, *overrides]


MAIN_CASES = {
    "unknown_method": (["method=nope"], True, ["nope"]),
    "unknown_key": (["method=sum", "method.nope=1"], True, ["nope"]),
    "bad_value": (["method=sum", "method.k=abc"], True, ["abc"]),
    "k_out_of_range": (["method=ties", "method.k=0"], True, ["k"]),
    "prun_thre_k_zero": (["method=consensus", "method.prun_thre_k=0"], True, ["prun_thre_k"]),
    "alpha_nan": (["method=sum", "specify_lambda=nan"], True, ["specify_lambda"]),
    "alpha_inf": (["method=sum", "specify_lambda=inf"], True, ["specify_lambda"]),
    "num_tasks_zero": (["method=sum", "num_tasks=0"], False, ["num_tasks"]),
    "num_tasks_too_many": (["method=sum", "num_tasks=99"], False, ["num_tasks"]),
    "unknown_dataset": (["method=sum", "DATASETS=[MNIST,Nope]"], False, ["Nope"]),
    "svd_keys_not_applicable": (["method=sum", "method.svd_keys=attn"], True, ["svd_keys", "sum"]),
    "average_keys_not_applicable": (["method=ties", "method.average_keys=attn"], True, ["average_keys", "ties"]),
}


@pytest.mark.parametrize("case", sorted(MAIN_CASES))
def test_main_py(case: str, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                 capsys: pytest.CaptureFixture) -> None:
    overrides, datasets, names = MAIN_CASES[case]
    args = _main_args(world, tmp_path, *overrides, datasets=datasets)
    assert_script_rejects("main.py", args, tmp_path, monkeypatch, capsys, *names)


@pytest.mark.parametrize("key", ["svd_keys", "average_keys"])
def test_main_py_entry_rules_that_match_nothing(key: str, world: World, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Found once θ0 is open (Hydra has made the run folder by then), before any merge or result file."""
    args = _main_args(world, tmp_path, "method=TSVM", f"method.{key}=no_such_entry")
    code = run_script("main.py", args, monkeypatch)
    captured = capsys.readouterr()
    assert_rejected(code, captured.out, captured.err, "main.py", f"method.{key}", "no_such_entry")
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").rglob("*.json"))


def test_main_py_unwritable_results_dir(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture) -> None:
    blocker = tmp_path / "blocker.txt"
    blocker.write_text("x")
    args = [*_main_args(world, tmp_path, "method=sum"), f"results_dir={blocker / 'results'}"]
    assert_script_rejects("main.py", args, tmp_path, monkeypatch, capsys, str(blocker))


ANALYZE_CASES = {
    "unknown_analysis": (["analysis=nope"], ["nope"]),
    "unknown_analysis_key": (["analysis=sti", "analysis.nope=1"], ["nope"]),
    "num_tasks_zero": (["analysis=sti", "num_tasks=0"], ["num_tasks"]),
    "unknown_method": (["analysis=sti", "method=nope"], ["nope"]),
}


@pytest.mark.parametrize("case", sorted(ANALYZE_CASES))
def test_analyze_py(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                    capsys: pytest.CaptureFixture) -> None:
    overrides, names = ANALYZE_CASES[case]
    args = [*overrides, f"results_dir={tmp_path / 'results'}", f"model_location={tmp_path / 'checkpoints'}",
            f"data_location={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}"]
    assert_script_rejects("analyze.py", args, tmp_path, monkeypatch, capsys, *names)


def test_analyze_py_unwritable_results_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture) -> None:
    blocker = tmp_path / "blocker.txt"
    blocker.write_text("x")
    args = ["analysis=sti", f"results_dir={blocker / 'results'}", f"hydra.run.dir={tmp_path / 'run'}"]
    assert_script_rejects("analyze.py", args, tmp_path, monkeypatch, capsys, str(blocker))


FINETUNE_CASES = {
    "unknown_dataset": (["--train-dataset", "Nope"], ["Nope"]),
    "unknown_model": (["--model", "nope"], ["nope"]),
    "lr_nan": (["--lr", "nan"], ["lr"]),
    "zero_epochs": (["--epochs", "0"], ["epochs"]),
    "unknown_key": (["nope=1"], ["nope"]),
}


@pytest.mark.parametrize("case", sorted(FINETUNE_CASES))
def test_finetune_py(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                     capsys: pytest.CaptureFixture) -> None:
    extra, names = FINETUNE_CASES[case]
    args = ["--model-location", str(tmp_path / "checkpoints"), "--data-location", str(tmp_path / "data"),
            "--results-dir", str(tmp_path / "results"), "--device", "cpu", *extra]
    assert_script_rejects("finetune.py", args, tmp_path, monkeypatch, capsys, *names)


def test_finetune_py_unwritable_model_location(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    """Everything else is valid (the tiny world's model and data): only the output folder is unusable."""
    blocker = tmp_path / "blocker.txt"
    blocker.write_text("x")
    args = ["--config-dir", str(world.conf), "--model", "tiny", "--model-location", str(blocker / "checkpoints"),
            "--data-location", str(world.data), "--results-dir", str(tmp_path / "results"), "--device", "cpu",
            "--train-dataset", "MNIST", "--max-steps", "1", "--num-workers", "0", "--no-eval", "--no-progress"]
    assert_script_rejects("finetune.py", args, tmp_path, monkeypatch, capsys, str(blocker))


def test_report_py_missing_results_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "nowhere"
    args = ["--results-dir", str(missing), "--no-radar"]
    assert_script_rejects("report.py", args, tmp_path, monkeypatch, capsys, str(missing))

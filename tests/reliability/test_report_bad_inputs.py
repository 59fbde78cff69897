"""report (``tsvmerge.recipes.report.main``) on bad inputs: unusable result files are skipped with a warning naming
each; bad folders stop it with exit 2 and one message, before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.reliability.contract import assert_rejected, no_leftovers, snapshot
from tsvmerge.recipes.report import main

PROG = "report.py"


def _result(datasets: list[str], top1: float) -> dict:
    test = {f"{d}:top1": top1 for d in datasets} | {f"{d}:normalized_top1": top1 for d in datasets}
    return {"schema": "tsvmerge.merge_eval/1", "model": "ViT-B-32", "method": "TSVM", "method_full_name": "TSVM",
            "datasets": datasets, "test": {**test, "avg_top1": top1, "avg_normalized_top1": top1},
            "task_choices": None, "created_utc": "2026-01-01T00:00:00"}


@pytest.fixture()
def results(tmp_path: Path) -> Path:
    folder = tmp_path / "results" / "merging"
    folder.mkdir(parents=True)
    good = _result(["MNIST", "DTD"], 0.75)
    (folder / "ViT-B-32_2tasks_TSVM_nonlinear_additions_MNIST-DTD_valbest.json").write_text(json.dumps(good))
    return tmp_path / "results"


BROKEN = {
    "not_json": "{ this is not json",
    "nan_value": json.dumps(_result(["MNIST", "DTD"], 0.5)).replace('"avg_top1": 0.5', '"avg_top1": NaN'),
    "infinite_value": json.dumps(_result(["MNIST", "DTD"], 0.5)).replace('"avg_top1": 0.5', '"avg_top1": 1e999'),
    "missing_sections": json.dumps({"schema": "tsvmerge.merge_eval/1", "model": "ViT-B-32"}),
    "binary": b"\xff\xfe\x00garbage",
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_unusable_result_file_is_skipped_with_a_warning(kind: str, results: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    bad = results / "merging" / f"ViT-B-32_2tasks_sum_nonlinear_additions_{kind}.json"
    content = BROKEN[kind]
    bad.write_bytes(content if isinstance(content, bytes) else content.encode())
    inputs = snapshot(results)
    assert main(["--results-dir", str(results), "--out", str(tmp_path / "report"), "--no-radar"]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith(f"{PROG}: warning:")]
    assert len(warnings) == 1 and str(bad) in warnings[0], captured.err
    assert "Traceback" not in captured.out + captured.err
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["files"] == [str(p) for p in sorted((results / "merging").glob("*TSVM*.json"))]
    assert snapshot(results) == inputs
    assert no_leftovers(tmp_path) == []


def test_unreadable_accuracy_file_is_reported(results: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    accuracies = results / "single_task" / "ViT-B-32" / "nonlinear_ft_accuracies.json"
    accuracies.parent.mkdir(parents=True)
    accuracies.write_text('{"MNIST": NaN}')
    assert main(["--results-dir", str(results), "--out", str(tmp_path / "report"), "--no-radar"]) == 0
    err = capsys.readouterr().err
    assert f"{PROG}: warning: skipped {accuracies}" in err


@pytest.mark.parametrize("case", ["missing_results_dir", "out_is_a_file", "out_under_a_file"])
def test_bad_folders(case: str, results: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    blocker = tmp_path / "blocker.txt"
    blocker.write_text("x")
    results_dir, out, name = {
        "missing_results_dir": (tmp_path / "nowhere", tmp_path / "report", str(tmp_path / "nowhere")),
        "out_is_a_file": (results, blocker, str(blocker)),
        "out_under_a_file": (results, blocker / "report", str(blocker)),
    }[case]
    before = snapshot(tmp_path)
    code = main(["--results-dir", str(results_dir), "--out", str(out), "--no-radar"])
    captured = capsys.readouterr()
    assert_rejected(code, captured.out, captured.err, PROG, name)
    assert snapshot(tmp_path) == before

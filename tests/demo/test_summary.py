"""The demo's summary table and CSV (without running the demo): one row per method, with the data each used."""

from __future__ import annotations

import csv
from pathlib import Path

from tsvmerge.demo.summary import summarize, summary_markdown, write_summary
from tsvmerge.evaluation.results import RESULT_SCHEMA, result_path
from tsvmerge.merging.registry import method_label
from tsvmerge.utils.files import write_json

TASKS = ["Digits", "Shapes"]


def _write(results: Path, method: str, **keys) -> None:
    test = {f"{d}:{m}": 0.5 for d in TASKS for m in ("top1", "normalized_top1")}
    payload = {"schema": RESULT_SCHEMA, "model": "demo", "method": method, "method_full_name": method,
               "datasets": TASKS, "alpha": 1.0, "test": test | {"avg_top1": 0.5, "avg_normalized_top1": 0.6},
               "created_utc": "2026-01-01T00:00:00+00:00", **keys}
    write_json(result_path(results, "merging", "demo", len(TASKS), method, "valbest"), payload)


def test_the_summary_names_the_data_each_method_used(tmp_path: Path) -> None:
    results = tmp_path / "results"
    _write(results, "zeroshot", alpha_grid=[0.0])  # an older file: the regime is derived
    _write(results, "TSVM", alpha_grid=[0.5, 1.0])
    _write(results, "TSVC", task_choices={d: 1.0 for d in TASKS}, alpha_grid=[1.0], val={"1.0": {}})
    _write(results, "sum", alpha_grid=[0.5, 1.0], data_regime="64 unlabeled/task + validation (α)")
    write_json(results / "single_task" / "demo" / "nonlinear_ft_accuracies.json", {d: 0.9 for d in TASKS})

    rows = summarize(results, "demo", TASKS)
    assert {r.method: r.data_regime for r in rows} == {
        "zeroshot": "none", "sum": "64 unlabeled/task + validation (α)", "TSVM": "validation (α)", "TSVC": "none",
        "finetuned": ""}
    lines = summary_markdown(rows, TASKS).splitlines()
    assert lines[0] == "| Method | Abs. acc. | Norm. acc. | α | Data | Digits | Shapes |"
    assert lines[1] == "|:---|---:|---:|---:|:---|---:|---:|"
    assert f"| {method_label('TSVM')} | 50.0 | 60.0 | 1 | validation (α) | 50.0 | 50.0 |" in lines

    files = write_summary(rows, TASKS, tmp_path / "out")
    with open(files["csv"], newline="") as fh:
        reader = csv.DictReader(fh)
        table = list(reader)
    assert reader.fieldnames == ["method", "label", "avg_top1", "avg_normalized_top1", "alpha", "data_regime",
                                 "Digits:top1", "Shapes:top1", "source"]
    assert {r["method"]: r["data_regime"] for r in table} == {r.method: r.data_regime for r in rows}

"""report.py: result files -> Table 2, per-dataset tables, radar charts; missing cells stay empty."""

from __future__ import annotations

import csv
import json
import runpy
from pathlib import Path

import pytest

from tsvmerge.data import BENCHMARK_DATASETS
from tsvmerge.evaluation.results import RESULT_SCHEMA, result_path
from tsvmerge.utils.files import write_json

REPO = Path(__file__).resolve().parents[2]


def _section(datasets: list[str], base: float) -> dict[str, float]:
    """Per-dataset top-1 base + 0.01·i, normalized = top-1 / 0.9."""
    section = {}
    for i, d in enumerate(datasets):
        section[f"{d}:top1"] = base + 0.01 * i
        section[f"{d}:normalized_top1"] = (base + 0.01 * i) / 0.9
    section["avg_top1"] = sum(section[f"{d}:top1"] for d in datasets) / len(datasets)
    section["avg_normalized_top1"] = section["avg_top1"] / 0.9
    return section


def _write(results: Path, model: str, method: str, datasets: list[str], base: float, *, full_name: str | None = None,
           suffix: str = "valbest", folder: str = "merging", created: str = "2025-01-01T00:00:00+00:00",
           task_specific: bool = False, **keys) -> dict:
    """An older-style result file (no ``data_regime``) unless ``keys`` add it."""
    full_name = full_name or method
    payload = {"schema": RESULT_SCHEMA, "model": model, "method": method, "method_full_name": full_name,
               "num_tasks": len(datasets), "datasets": datasets, "alpha": 1.0,
               "task_choices": {d: 1.0 for d in datasets} if task_specific else None,
               "test": _section(datasets, base), "created_utc": created, **keys}
    write_json(result_path(results, folder, model, len(datasets), full_name, suffix), payload)
    return payload


@pytest.fixture()
def results(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    b8, b14 = list(BENCHMARK_DATASETS[:8]), list(BENCHMARK_DATASETS[:14])
    _write(root, "ViT-B-32", "sum", b8, 0.60, full_name="sum_k100")
    _write(root, "ViT-B-32", "TSVM", b8, 0.80)
    _write(root, "ViT-B-32", "TSVM", b8, 0.70, suffix="lambda1")
    _write(root, "ViT-B-32", "TSVM", b14, 0.75)
    _write(root, "ViT-L-14", "TSVC", b8, 0.90, task_specific=True)
    # an older copy of the same cell in another folder: the newest file wins
    _write(root, "ViT-B-32", "TSVM", b8, 0.10, folder="old", created="2024-01-01T00:00:00+00:00")
    # an explicit task list: not a Table 2 column, but a per-dataset table of its own
    _write(root, "ViT-B-32", "sum", ["MNIST", "SVHN", "DTD"], 0.50, full_name="sum_k100",
           suffix="MNIST-SVHN-DTD_valbest")
    (root / "merging" / "notes.json").write_text(json.dumps({"not": "a result"}))
    (root / "merging" / "broken.json").write_text("{")
    ft = root / "single_task" / "ViT-B-32" / "nonlinear_ft_accuracies.json"
    ft.parent.mkdir(parents=True)
    ft.write_text(json.dumps({d: 0.9 for d in BENCHMARK_DATASETS}))
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_report_reproduces_table_2(results: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "report"
    main = runpy.run_path(str(REPO / "report.py"), run_name="report")["main"]
    assert main(["--results-dir", str(results), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    avg8 = sum(0.80 + 0.01 * i for i in range(8)) / 8
    avg8_sum = sum(0.60 + 0.01 * i for i in range(8)) / 8
    avg14 = sum(0.75 + 0.01 * i for i in range(14)) / 14
    avg8_lam = sum(0.70 + 0.01 * i for i in range(8)) / 8
    avg8_tsvc = sum(0.90 + 0.01 * i for i in range(8)) / 8

    def cell(top1: float) -> str:
        return f"{100 * top1:.1f} ({100 * top1 / 0.9:.1f})"

    table = md.split("## Average accuracy (Table 2)")[1].split("## Per-dataset")[0]
    lines = [line for line in table.splitlines() if line.startswith("|")]
    assert lines[0] == "| method | ViT-B-32 8 tasks | ViT-B-32 14 tasks | ViT-L-14 8 tasks | data |"
    assert lines[1] == "| --- | ---: | ---: | ---: | --- |"
    assert lines[2] == "| Fine-tuned (individual) | 90.0 (100.0) | 90.0 (100.0) |  |  |"
    assert lines[3] == f"| Task Arithmetic | {cell(avg8_sum)} |  |  | none |"
    assert lines[4] == f"| TSV-M | {cell(avg8)} | {cell(avg14)} |  | none |"
    assert lines[5] == f"| TSV-M (α=1) | {cell(avg8_lam)} |  |  | none |"
    assert lines[6] == f"| TSV-C † |  |  | {cell(avg8_tsvc)} | none |"
    assert len(lines) == 7, "no invented row or cell"

    rows = _rows(out / "table2.csv")
    by_key = {(r["method"], r["suffix"], r["model"], r["tasks"]): r for r in rows}
    assert float(by_key[("TSVM", "valbest", "ViT-B-32", "8 tasks")]["avg_top1"]) == pytest.approx(avg8)
    assert float(by_key[("TSVM", "valbest", "ViT-B-32", "8 tasks")]["avg_normalized_top1"]) == pytest.approx(avg8 / 0.9)
    assert by_key[("TSVM", "valbest", "ViT-B-32", "8 tasks")]["result_file"].endswith(
        "merging/ViT-B-32_8tasks_TSVM_nonlinear_additions_valbest.json"), "the newest duplicate is used"
    assert by_key[("sum", "valbest", "ViT-B-32", "14 tasks")]["avg_top1"] == "", "missing cells stay empty"
    assert by_key[("TSVC", "valbest", "ViT-B-32", "8 tasks")]["avg_top1"] == ""
    assert by_key[("TSVM", "valbest", "ViT-B-32", "8 tasks")]["data_regime"] == "none"
    assert by_key[("TSVC", "valbest", "ViT-B-32", "8 tasks")]["data_regime"] == ""
    assert "old/ViT-B-32_8tasks_TSVM" in md.split("## Duplicate result files")[1]

    per = _rows(out / "per_dataset.csv")
    custom = [r for r in per if r["tasks"] == "MNIST+SVHN+DTD"]
    assert [r["dataset"] for r in custom if r["method"] == "sum"] == ["MNIST", "SVHN", "DTD", "average"]
    assert [float(r["top1"]) for r in custom if r["method"] == "sum"] == pytest.approx([0.50, 0.51, 0.52, 0.51])
    assert "### ViT-B-32, MNIST+SVHN+DTD" in md
    assert "| method | MNIST | SVHN | DTD | average | data |" in md
    assert "| Task Arithmetic | 50.0 | 51.0 | 52.0 | 51.0 | none |" in md
    assert {r["method"]: r["data_regime"] for r in custom} == {"sum": "none", "finetuned": ""}
    cars = [r for r in per if r["tasks"] == "8 tasks" and r["model"] == "ViT-B-32" and r["dataset"] == "Cars"]
    assert {r["label"]: float(r["top1"]) for r in cars} == pytest.approx(
        {"Fine-tuned (individual)": 0.9, "Task Arithmetic": 0.6, "TSV-M": 0.8, "TSV-M (α=1)": 0.7})

    radar = out / "radar_ViT-B-32_8tasks.png"
    assert radar.is_file() and radar.stat().st_size > 10_000
    data = json.loads(radar.with_suffix(".json").read_text())
    assert data["datasets"] == list(BENCHMARK_DATASETS[:8])
    assert data["series"]["TSV-M"]["values"] == pytest.approx([0.80 + 0.01 * i for i in range(8)])
    assert (out / "radar_ViT-L-14_8tasks.png").is_file() and (out / "radar_ViT-B-32_MNIST_SVHN_DTD.png").is_file()
    assert "report.md" in capsys.readouterr().out


def test_report_without_results(tmp_path: Path) -> None:
    from tsvmerge.recipes.report import main

    (tmp_path / "results").mkdir()
    assert main(["--results-dir", str(tmp_path / "results")]) == 0
    md = (tmp_path / "results" / "report" / "report.md").read_text()
    assert "No result file" in md
    assert main(["--results-dir", str(tmp_path / "nowhere")]) == 2


def test_every_table_names_the_data_each_method_used(tmp_path: Path) -> None:
    """Stored regimes are shown as written, older files' derived; a row whose files disagree shows both."""
    from tsvmerge.analysis.report import write_report
    from tsvmerge.merging.registry import method_label

    root = tmp_path / "results"
    b8, b14 = list(BENCHMARK_DATASETS[:8]), list(BENCHMARK_DATASETS[:14])
    _write(root, "ViT-B-32", "TSVM", b8, 0.80, alpha_grid=[0.5, 1.0])  # older file: derived
    _write(root, "ViT-B-32", "TSVM", b14, 0.75, alpha_grid=[1.0], data_regime="none")
    _write(root, "ViT-B-32", "esm", b8, 0.85, alpha_grid=[0.7, 1.2], data_regime="256 unlabeled/task + validation (α)")
    _write(root, "ViT-B-32", "regmean", b8, 0.82, data_regime="256 unlabeled/task")
    out = tmp_path / "report"
    write_report(root, out, radar=False)
    md = (out / "report.md").read_text()
    table = md.split("## Average accuracy (Table 2)")[1].split("## Per-dataset")[0]
    lines = [line for line in table.splitlines() if line.startswith("|")][2:]
    regimes = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[-1].rstrip(" |") for line in lines}
    assert regimes == {"TSV-M": "validation (α) / none", method_label("esm"): "256 unlabeled/task + validation (α)",
                       method_label("regmean"): "256 unlabeled/task"}
    per_dataset = md.split("### ViT-B-32, 8 tasks")[1].split("###")[0]
    lines = [line for line in per_dataset.splitlines() if line.startswith("|")][2:]
    assert {line.split(" | ")[0].lstrip("| "): line.split(" | ")[-1].rstrip(" |") for line in lines} == {
        "TSV-M": "validation (α)", method_label("esm"): "256 unlabeled/task + validation (α)",
        method_label("regmean"): "256 unlabeled/task"}
    table2 = {(r["method"], r["tasks"]): r["data_regime"] for r in _rows(out / "table2.csv")}
    assert table2[("TSVM", "8 tasks")] == "validation (α)" and table2[("TSVM", "14 tasks")] == "none"
    assert table2[("esm", "14 tasks")] == "", "no file, no regime"
    per = {(r["method"], r["tasks"]): r["data_regime"] for r in _rows(out / "per_dataset.csv")}
    assert per[("regmean", "8 tasks")] == "256 unlabeled/task"
    assert json.loads((out / "report.json").read_text())["table2"][0]["data_regime"] is not None

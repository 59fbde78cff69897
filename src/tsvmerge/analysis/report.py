"""The report of ``report.py``: every result file under ``results/`` gathered into the paper's tables (Table 2,
per-dataset tables) and radar charts (Fig. 4), written as ``report.md``, ``table2.csv``, ``per_dataset.csv``,
``report.json`` and the charts (:func:`write_report`). The files are read by :mod:`tsvmerge.analysis.result_files`;
the command itself is :mod:`tsvmerge.recipes.report`.

- Table 2: rows are methods, columns model × number of tasks (the benchmark task lists: the first T of SPEC §4),
  cells the average absolute test top-1 with the normalized one in parentheses (percent). A reference row
  "Fine-tuned (individual)" comes from ``results/single_task/<model>/nonlinear_ft_accuracies.json``.
- Per-dataset tables: one per model and task list (explicit ``DATASETS`` lists included), test top-1 per dataset.
- Radar chart per model and task list: one polygon per method over the datasets.

Every table names, per method, the data its numbers used (column "data": none, validation α, unlabeled samples per
task, ...; :mod:`tsvmerge.evaluation.data_regime`), so a data-aware method is never read as data-free.

A Hydra multirun folder (``python main.py -m ...``, e.g. on Slurm: docs/cluster.md) is a results folder too: every
job copies its result file into its own sub-folder. Its report adds a "Multirun jobs" section
(:mod:`tsvmerge.analysis.multirun`): how many of the sweep's jobs wrote a result, and the overrides and log files of
those that did not; the fine-tuned reference row comes from the accuracy file the runs name.

Cells without a result file stay empty: nothing is interpolated or copied from elsewhere. When several files
describe the same cell (e.g. the same run in two sub-folders), the most recent one (``created_utc``) is used and
the others are listed in the report.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..merging.registry import display_rank, method_label
from .multirun import read_sweep, sweep_markdown
from .result_files import ResultRecord, Warn, collect_results, finetuned_accuracies, finetuned_accuracies_of_runs

__all__ = [
    "AVERAGE_COLUMN",
    "Report",
    "build_report",
    "per_dataset_markdown",
    "per_dataset_rows",
    "table2_markdown",
    "table2_rows",
    "write_report",
]

MODEL_ORDER = ("ViT-B-32", "ViT-B-16", "ViT-L-14")
FINETUNED = "finetuned"
#: The per-dataset tables' last column, the mean over the datasets (and the ``dataset`` of its CSV rows); the same
#: word as the weight-averaging method's name, which it does not mean.
AVERAGE_COLUMN = "average"


# ----------------------------------------------------------------------------------------------------- tables

Column = tuple[str, str]  # (model, tasks label)
RowKey = tuple[str, str, str]  # (method, full name, suffix)


@dataclass
class Cell:
    top1: float | None
    normalized: float | None
    per_dataset: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    path: Path | None = None
    data_regime: str = ""  # the data the numbers used ("" for the fine-tuned reference row)


@dataclass
class Report:
    """Everything the Markdown / CSV / radar outputs are drawn from."""

    columns: list[Column]  # Table 2 columns (benchmark task lists)
    groups: list[tuple[Column, list[str]]]  # per-dataset tables: (model, tasks label) and their datasets
    rows: list[RowKey]
    labels: dict[RowKey, str]
    task_specific: dict[RowKey, bool]
    cells: dict[tuple[RowKey, Column], Cell]
    duplicates: list[tuple[Path, Path]]  # (ignored, used)


def _model_key(model: str) -> tuple[int, str]:
    return (MODEL_ORDER.index(model) if model in MODEL_ORDER else len(MODEL_ORDER), model)


def _row_sort_key(row: RowKey) -> tuple[float, str, str, bool, str]:
    method = row[0]
    rank = -1 if method == FINETUNED else display_rank(method)  # the methods' display_order, then the others
    return (rank, method, row[1], row[2] != "valbest", row[2])  # α chosen on validation first


def _labels(rows: Sequence[RowKey]) -> dict[RowKey, str]:
    """Display name per row; rows of the same method get their full name / α suffix to tell them apart."""
    by_method: dict[str, list[RowKey]] = defaultdict(list)
    for row in rows:
        by_method[row[0]].append(row)
    labels = {}
    for method, group in by_method.items():
        base = "Fine-tuned (individual)" if method == FINETUNED else method_label(method)
        names = {r[1] for r in group}
        for row in group:
            extra = []
            if len(names) > 1:
                extra.append(row[1])
            if row[2].startswith("lambda"):
                extra.append("α=" + row[2][len("lambda"):])
            elif row[2] not in ("", "valbest"):
                extra.append(row[2])
            labels[row] = f"{base} ({', '.join(extra)})" if extra else base
    return labels


def _suffix_without_datasets(record: ResultRecord) -> str:
    """``valbest`` / ``lambda1`` (the dataset-list prefix of custom task lists removed)."""
    if record.benchmark:
        return record.suffix
    prefix = "-".join(record.datasets) + "_"
    return record.suffix[len(prefix):] if record.suffix.startswith(prefix) else record.suffix.rsplit("_", 1)[-1]


def build_report(records: Sequence[ResultRecord], finetuned: Mapping[str, Mapping[str, float]] | None = None) -> Report:
    """Arrange result files into table cells (the newest file wins a cell; the others are reported)."""
    cells: dict[tuple[RowKey, Column], Cell] = {}
    created: dict[tuple[RowKey, Column], str] = {}
    duplicates: list[tuple[Path, Path]] = []
    group_datasets: dict[Column, list[str]] = {}
    task_specific: dict[RowKey, bool] = {}
    benchmark_columns: set[Column] = set()
    for record in records:
        column = (record.model, record.tasks_label)
        row = (record.method, record.full_name, _suffix_without_datasets(record))
        group_datasets.setdefault(column, list(record.datasets))
        if record.benchmark:
            benchmark_columns.add(column)
        task_specific[row] = record.task_specific
        per_dataset = {d: (_num(record.test.get(f"{d}:top1")), _num(record.test.get(f"{d}:normalized_top1")))
                       for d in record.datasets}
        cell = Cell(_num(record.test.get("avg_top1")), _num(record.test.get("avg_normalized_top1")), per_dataset,
                    record.path, record.data_regime)
        key = (row, column)
        if key in cells:
            old_path = cells[key].path
            assert old_path is not None
            if record.created > created[key]:
                duplicates.append((old_path, record.path))
            else:
                duplicates.append((record.path, old_path))
                continue
        cells[key] = cell
        created[key] = record.created
    # Reference row: the single-task fine-tuned accuracies, where every task of the column has one.
    for column, datasets in group_datasets.items():
        accs = (finetuned or {}).get(column[0], {})
        if datasets and all(d in accs for d in datasets):
            row = (FINETUNED, FINETUNED, "")
            task_specific[row] = True
            values = [accs[d] for d in datasets]
            cells[(row, column)] = Cell(sum(values) / len(values), 1.0, {d: (accs[d], 1.0) for d in datasets})
    rows = sorted({key[0] for key in cells}, key=_row_sort_key)
    columns = sorted(benchmark_columns, key=lambda c: (_model_key(c[0]), int(c[1].split()[0])))
    groups = sorted(group_datasets.items(),
                    key=lambda kv: (_model_key(kv[0][0]), kv[0] not in benchmark_columns, len(kv[1]), kv[0][1]))
    return Report(columns, groups, rows, _labels(rows), task_specific, cells, duplicates)


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) \
        else None


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def _cell_text(cell: Cell | None) -> str:
    if cell is None or cell.top1 is None:
        return ""
    return f"{_pct(cell.top1)} ({_pct(cell.normalized)})" if cell.normalized is not None else _pct(cell.top1)


def _row_regime(report: Report, row: RowKey, columns: Sequence[Column]) -> str:
    """The data regime of a row's cells in ``columns``; cells that disagree (e.g. runs of different versions) give
    every distinct value, in column order, joined by " / "."""
    regimes = [c.data_regime for c in (report.cells.get((row, column)) for column in columns) if c is not None]
    return " / ".join(dict.fromkeys(r for r in regimes if r))


def _md_table(header: Sequence[str], lines: Sequence[Sequence[str]], align: Sequence[str]) -> str:
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def table2_markdown(report: Report) -> str:
    """Rows: methods; columns: model × number of tasks; cells: absolute (normalized) average test top-1."""
    if not report.columns:
        return "_No result file of a benchmark task list (the first 8 / 14 / 20 tasks) was found._\n"
    header = ["method"] + [f"{m} {t}" for m, t in report.columns] + ["data"]
    lines = []
    for row in report.rows:
        cells = [_cell_text(report.cells.get((row, c))) for c in report.columns]
        if not any(cells):
            continue
        label = report.labels[row] + (" †" if report.task_specific.get(row) and row[0] != FINETUNED else "")
        lines.append([label, *cells, _row_regime(report, row, report.columns)])
    return _md_table(header, lines, ["---"] + ["---:"] * len(report.columns) + ["---"]) + "\n"


def table2_rows(report: Report) -> list[dict[str, Any]]:
    rows = []
    for row in report.rows:
        for column in report.columns:
            cell = report.cells.get((row, column))
            rows.append({
                "method": row[0], "method_full_name": row[1], "suffix": row[2], "label": report.labels[row],
                "model": column[0], "tasks": column[1],
                "avg_top1": None if cell is None else cell.top1,
                "avg_normalized_top1": None if cell is None else cell.normalized,
                "data_regime": None if cell is None else cell.data_regime,
                "result_file": None if cell is None or cell.path is None else str(cell.path),
            })
    return rows


def per_dataset_markdown(report: Report) -> str:
    parts = []
    for column, datasets in report.groups:
        header = ["method", *datasets, AVERAGE_COLUMN, "data"]
        lines = []
        for row in report.rows:
            cell = report.cells.get((row, column))
            if cell is None:
                continue
            values = [_pct(cell.per_dataset.get(d, (None, None))[0]) for d in datasets]
            label = report.labels[row] + (" †" if report.task_specific.get(row) and row[0] != FINETUNED else "")
            lines.append([label, *values, _pct(cell.top1), cell.data_regime])
        if lines:
            parts.append(f"### {column[0]}, {column[1]}\n\n"
                         + _md_table(header, lines, ["---"] + ["---:"] * (len(datasets) + 1) + ["---"]) + "\n")
    return "\n".join(parts)


def per_dataset_rows(report: Report) -> list[dict[str, Any]]:
    rows = []
    for column, datasets in report.groups:
        for row in report.rows:
            cell = report.cells.get((row, column))
            if cell is None:
                continue
            for d in [*datasets, AVERAGE_COLUMN]:
                top1, norm = ((cell.top1, cell.normalized) if d == AVERAGE_COLUMN
                              else cell.per_dataset.get(d, (None, None)))
                rows.append({"model": column[0], "tasks": column[1], "method": row[0], "method_full_name": row[1],
                             "suffix": row[2], "label": report.labels[row], "dataset": d, "top1": top1,
                             "normalized_top1": norm, "data_regime": cell.data_regime,
                             "result_file": None if cell.path is None else str(cell.path)})
    return rows


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("_")


def write_report(results_dir: str | Path, out: str | Path | None = None, *, radar: bool = True,
                 radar_metric: str = "top1", warn: Warn | None = None) -> dict[str, Path]:
    """Write ``report.md``, ``table2.csv``, ``per_dataset.csv`` and the radar charts under ``out``.

    ``warn`` receives one line per result file that had to be skipped.
    """
    from ..plotting.evaluation import plot_radar
    from ..plotting.style import write_csv
    from ..utils.files import atomic_write, write_json

    results_dir = Path(results_dir)
    out = Path(out) if out is not None else results_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    records = [r for r in collect_results(results_dir, warn) if out.resolve() not in r.path.resolve().parents]
    report = build_report(records, finetuned_accuracies_of_runs(records, finetuned_accuracies(results_dir, warn),
                                                                warn))
    sweep = read_sweep(results_dir, [r.path for r in records])
    written: dict[str, Path] = {}
    written["table2.csv"] = write_csv(out / "table2.csv", table2_rows(report),
                                      ["method", "method_full_name", "suffix", "label", "model", "tasks", "avg_top1",
                                       "avg_normalized_top1", "data_regime", "result_file"])
    written["per_dataset.csv"] = write_csv(out / "per_dataset.csv", per_dataset_rows(report),
                                           ["model", "tasks", "method", "method_full_name", "suffix", "label",
                                            "dataset", "top1", "normalized_top1", "data_regime", "result_file"])
    radars = []
    if radar:
        for column, datasets in report.groups:
            series = {}
            for row in report.rows:
                cell = report.cells.get((row, column))
                if cell is None:
                    continue
                index = 0 if radar_metric == "top1" else 1
                series[report.labels[row]] = (row[0], [cell.per_dataset.get(d, (None, None))[index] for d in datasets])
            if len(datasets) >= 3 and series:
                path = out / f"radar_{_slug(column[0])}_{_slug(column[1].replace(' ', ''))}.png"
                plot_radar(series, datasets, path, title=f"{column[0]}, {column[1]}", metric=radar_metric)
                radars.append((column, path))
                written[path.name] = path
    analyses = sorted(p for p in (results_dir / "analysis").rglob("*.png")) if (results_dir / "analysis").is_dir() \
        else []

    md = ["# Results", "",
          f"Gathered from {len(records)} result file(s) under `{results_dir}`. Test top-1 in percent, normalized "
          "top-1 (÷ single-task fine-tuned top-1) in parentheses; empty cells have no result file.", "",
          "## Average accuracy (Table 2)", "", table2_markdown(report),
          "† task-specific vectors: the task is known at test time (TALL masks, TSV-C, magnitude masking); "
          "the fine-tuned row uses one model per task. \"data\": the data each number used beyond the merged "
          "checkpoints (none; validation (α): α chosen on the labelled validation splits; validation (λ per task): "
          "each task's mask chosen on its validation split; <N> unlabeled/task: a data-aware merge's samples).", "",
          "## Per-dataset accuracy", "", "Test top-1 (%) per dataset.", "", per_dataset_markdown(report)]
    if sweep is not None:
        md += ["## Multirun jobs", "", sweep_markdown(sweep)]
    if radars:
        md += ["## Radar charts (Fig. 4)", ""]
        md += [f"![{c[0]}, {c[1]}]({os.path.relpath(p, out)})" for c, p in radars]
        md.append("")
    if analyses:
        md += ["## Analyses", ""]
        md += [f"- [{p.relative_to(results_dir / 'analysis')}]({os.path.relpath(p, out)})" for p in analyses]
        md.append("")
    if report.duplicates:
        md += ["## Duplicate result files", "", "Several files describe the same cell; the newest was used:", ""]
        md += [f"- ignored `{old}` (used `{new}`)" for old, new in report.duplicates]
        md.append("")
    path = out / "report.md"
    text = "\n".join(md)
    atomic_write(path, lambda tmp: tmp.write_text(text))
    written["report.md"] = path
    jobs = None if sweep is None else {
        "expected": sweep.expected, "started": len(sweep.jobs),
        "without_result": [{"num": j.num, "overrides": list(j.overrides), "logs": [str(p) for p in j.logs]}
                           for j in sweep.without_result]}
    write_json(out / "report.json", {"results_dir": str(results_dir), "files": [str(r.path) for r in records],
                                     "table2": table2_rows(report), "duplicates": report.duplicates,
                                     "multirun": jobs})
    written["report.json"] = out / "report.json"
    return written

"""Every result file under ``results/`` gathered into the paper's tables (Table 2, per-dataset tables) and radar
charts (Fig. 4).

- Table 2: rows are methods, columns model × number of tasks (the benchmark task lists: the first T of SPEC §4),
  cells the average absolute test top-1 with the normalized one in parentheses (percent). A reference row
  "Fine-tuned (individual)" comes from ``results/single_task/<model>/nonlinear_ft_accuracies.json``.
- Per-dataset tables: one per model and task list (explicit ``DATASETS`` lists included), test top-1 per dataset.
- Radar chart per model and task list: one polygon per method over the datasets.

A Hydra multirun folder (``python main.py -m ...``, e.g. on Slurm: docs/cluster.md) is a results folder too: every
job copies its result file into its own sub-folder. Its report adds a "Multirun jobs" section
(:mod:`tsvmerge.analysis.multirun`): how many of the sweep's jobs wrote a result, and the overrides and log files of
those that did not; the fine-tuned reference row comes from the accuracy file the runs name.

Cells without a result file stay empty: nothing is interpolated or copied from elsewhere. When several files
describe the same cell (e.g. the same run in two sub-folders), the most recent one (``created_utc``) is used and
the others are listed in the report.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import math
import os
import sys
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import is_benchmark_prefix
from ..merging.registry import display_rank, method_label
from ..plotting.style import METHOD_LABELS
from ..utils.entry_point import run_main
from ..utils.errors import UserError
from .multirun import read_sweep, sweep_markdown

__all__ = [
    "METHOD_LABELS",
    "Report",
    "ResultFileError",
    "ResultRecord",
    "build_report",
    "collect_results",
    "main",
    "report_from_config",
    "run_report",
    "write_report",
]

log = logging.getLogger(__name__)

RESULT_SCHEMA_PREFIX = "tsvmerge.merge_eval/"

MODEL_ORDER = ("ViT-B-32", "ViT-B-16", "ViT-L-14")
FINETUNED = "finetuned"
#: The per-dataset tables' last column, the mean over the datasets (and the ``dataset`` of its CSV rows); the same
#: word as the weight-averaging method's name, which it does not mean.
AVERAGE_COLUMN = "average"


@dataclass(frozen=True)
class ResultRecord:
    """One ``main.py`` result file."""

    path: Path
    model: str
    method: str
    full_name: str
    suffix: str
    datasets: tuple[str, ...]
    test: Mapping[str, float]
    task_specific: bool
    created: str
    ft_accuracies_file: str | None = None  # the accuracy file the run normalized by

    @property
    def num_tasks(self) -> int:
        return len(self.datasets)

    @property
    def benchmark(self) -> bool:
        """The first T tasks of the benchmark list (a Table 2 column), not an explicit DATASETS list."""
        return is_benchmark_prefix(self.datasets)

    @property
    def tasks_label(self) -> str:
        return f"{self.num_tasks} tasks" if self.benchmark else "+".join(self.datasets)

    @property
    def row(self) -> tuple[str, str, str]:
        return (self.method, self.full_name, self.suffix)


def _suffix(path: Path) -> str:
    stem = path.stem
    marker = "_nonlinear_additions_"
    return stem.split(marker, 1)[1] if marker in stem else ""


class ResultFileError(UserError, ValueError):
    """A file under the results folder that cannot be used: unreadable, not valid JSON, or holding NaN / ±inf."""


Warn = Callable[[str], None]


def _reject_non_finite(text: str) -> float:
    raise ValueError(f"it holds the non-finite number {text}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # e.g. 1e999, which JSON parses as infinity
        _reject_non_finite(text)
    return value


def load_json(path: Path) -> Any:
    """The JSON in ``path``; ResultFileError naming it when it cannot be read or holds a non-finite number."""
    try:
        return json.loads(path.read_text(), parse_constant=_reject_non_finite, parse_float=_finite_float)
    except OSError as exc:
        raise ResultFileError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ResultFileError(f"{path}: not a text file") from None
    except json.JSONDecodeError as exc:
        raise ResultFileError(f"{path}: not valid JSON ({exc})") from None
    except ValueError as exc:
        raise ResultFileError(f"{path}: {exc}") from None


def read_result(path: Path) -> ResultRecord | None:
    """A result file of the ``tsvmerge.merge_eval`` schema, or None for any other JSON.

    Raises ResultFileError for a file that cannot be read or parsed, holds a non-finite number, or has the schema
    but not its fields.
    """
    payload = load_json(path)
    if not isinstance(payload, dict) or not str(payload.get("schema", "")).startswith(RESULT_SCHEMA_PREFIX):
        return None
    test = payload.get("test")
    if not isinstance(test, dict) or not isinstance(payload.get("datasets"), list):
        raise ResultFileError(f"{path}: a result file without its 'test' section or 'datasets' list")
    return ResultRecord(
        path=path, model=str(payload.get("model")), method=str(payload.get("method")),
        full_name=str(payload.get("method_full_name") or payload.get("method")), suffix=_suffix(path),
        datasets=tuple(payload["datasets"]), test=test, task_specific=payload.get("task_choices") is not None,
        created=str(payload.get("created_utc") or ""),
        ft_accuracies_file=str(payload["ft_accuracies_file"]) if payload.get("ft_accuracies_file") else None,
    )


def collect_results(results_dir: str | Path, warn: Warn | None = None) -> list[ResultRecord]:
    """Every merge result file below ``results_dir`` (hidden / temporary files skipped), sorted by path.

    A file that cannot be used is skipped with a warning naming it (``warn``, default: the module's logger), so a
    missing cell in the tables never goes unexplained.
    """
    warn = warn or log.warning
    root = Path(results_dir)
    records = []
    for path in sorted(root.rglob("*.json")):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        try:
            record = read_result(path)
        except ResultFileError as exc:
            warn(f"skipped {exc}")
            continue
        if record is not None:
            records.append(record)
    return records


def finetuned_accuracies(results_dir: str | Path, warn: Warn | None = None) -> dict[str, dict[str, float]]:
    """``{model: {split: top-1}}`` from ``<results_dir>/single_task/<model>/nonlinear_ft_accuracies.json``."""
    warn = warn or log.warning
    out = {}
    for path in sorted(Path(results_dir).glob("single_task/*/nonlinear_ft_accuracies.json")):
        accuracies = _read_accuracies(path, path.parent.name, warn)
        if accuracies is not None:
            out[path.parent.name] = accuracies
    return out


def _read_accuracies(path: Path, model: str, warn: Warn) -> dict[str, float] | None:
    """``{split: top-1}`` of one accuracy file; None (with a warning if it is unreadable) when it holds none."""
    try:
        data = load_json(path)
    except ResultFileError as exc:
        warn(f"skipped {exc} (the fine-tuned reference row of {model} stays empty)")
        return None
    if not isinstance(data, dict):
        return None
    return {k: float(v) for k, v in data.items() if isinstance(v, int | float)}


def finetuned_accuracies_of_runs(records: Sequence[ResultRecord], known: Mapping[str, Mapping[str, float]],
                                 warn: Warn | None = None) -> dict[str, dict[str, float]]:
    """``known`` completed with the accuracy files the runs themselves normalized by (``ft_accuracies_file`` of
    their result files), for models ``known`` lacks: a multirun folder holds no ``single_task/`` folder, but its
    runs name theirs. Only files that still exist are read."""
    warn = warn or log.warning
    out = {model: dict(accs) for model, accs in known.items()}
    for record in records:
        if record.model in out or not record.ft_accuracies_file:
            continue
        path = Path(record.ft_accuracies_file)
        accuracies = _read_accuracies(path, record.model, warn) if path.is_file() else None
        if accuracies is not None:
            out[record.model] = accuracies
    return out


# ----------------------------------------------------------------------------------------------------- tables

Column = tuple[str, str]  # (model, tasks label)
RowKey = tuple[str, str, str]  # (method, full name, suffix)


@dataclass
class Cell:
    top1: float | None
    normalized: float | None
    per_dataset: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    path: Path | None = None


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
                    record.path)
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


def _md_table(header: Sequence[str], lines: Sequence[Sequence[str]], align: Sequence[str]) -> str:
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def table2_markdown(report: Report) -> str:
    """Rows: methods; columns: model × number of tasks; cells: absolute (normalized) average test top-1."""
    if not report.columns:
        return "_No result file of a benchmark task list (the first 8 / 14 / 20 tasks) was found._\n"
    header = ["method"] + [f"{m} {t}" for m, t in report.columns]
    lines = []
    for row in report.rows:
        cells = [_cell_text(report.cells.get((row, c))) for c in report.columns]
        if not any(cells):
            continue
        label = report.labels[row] + (" †" if report.task_specific.get(row) and row[0] != FINETUNED else "")
        lines.append([label, *cells])
    return _md_table(header, lines, ["---"] + ["---:"] * len(report.columns)) + "\n"


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
                "result_file": None if cell is None or cell.path is None else str(cell.path),
            })
    return rows


def per_dataset_markdown(report: Report) -> str:
    parts = []
    for column, datasets in report.groups:
        header = ["method", *datasets, AVERAGE_COLUMN]
        lines = []
        for row in report.rows:
            cell = report.cells.get((row, column))
            if cell is None:
                continue
            values = [_pct(cell.per_dataset.get(d, (None, None))[0]) for d in datasets]
            label = report.labels[row] + (" †" if report.task_specific.get(row) and row[0] != FINETUNED else "")
            lines.append([label, *values, _pct(cell.top1)])
        if lines:
            parts.append(f"### {column[0]}, {column[1]}\n\n"
                         + _md_table(header, lines, ["---"] + ["---:"] * (len(datasets) + 1)) + "\n")
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
                             "normalized_top1": norm,
                             "result_file": None if cell.path is None else str(cell.path)})
    return rows


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("_")


def write_report(results_dir: str | Path, out: str | Path | None = None, *, radar: bool = True,
                 radar_metric: str = "top1", warn: Warn | None = None) -> dict[str, Path]:
    """Write ``report.md``, ``table2.csv``, ``per_dataset.csv`` and the radar charts under ``out``.

    ``warn`` receives one line per result file that had to be skipped.
    """
    from ..utils.files import atomic_write
    from ..utils.files import write_json
    from ..plotting.evaluation import plot_radar
    from ..plotting.style import write_csv

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
                                       "avg_normalized_top1", "result_file"])
    written["per_dataset.csv"] = write_csv(out / "per_dataset.csv", per_dataset_rows(report),
                                           ["model", "tasks", "method", "method_full_name", "suffix", "label",
                                            "dataset", "top1", "normalized_top1", "result_file"])
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
          "the fine-tuned row uses one model per task.", "",
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


PROG = "report.py"


def build_parser() -> argparse.ArgumentParser:
    """report.py's flags: each sets a key of the report schema (``config/report.yaml``)."""
    from ..config.flags import Flag, add_flags
    from ..config.schema import ReportSchema

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Gather every main.py result file under --results-dir into the paper's tables (Markdown, CSV) "
                    "and radar charts.")
    add_flags(parser, ReportSchema, [
        Flag("results_dir", ("--results-dir",)), Flag("out", ("--out",)),
        Flag("radar_metric", ("--radar-metric",)), Flag("radar", ("--no-radar",), "false", "skip the radar charts"),
    ])
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides of config/report.yaml")
    return parser


def main(argv: Sequence[str] | None = None, config: Any = None) -> int:
    """``report.py`` / ``tsvmerge-report``: flags and overrides composed on ``config/report.yaml`` (``config``: the
    entry point's :class:`~tsvmerge.config.ConfigSource`; None: the installed schema alone)."""
    from ..config import ConfigSource, compose_config
    from ..config.flags import flag_overrides

    args = build_parser().parse_args(argv)
    source = config if config is not None else ConfigSource(None)
    name = "report" if source.config_dir is not None else "report_schema"
    return run_main(PROG, lambda: report_from_config(
        compose_config(source, name, [*flag_overrides(args), *args.overrides])))


def report_from_config(cfg: Any) -> int:
    """Body of ``report.py``: the composed ``report`` configuration (results_dir, out, radar, radar_metric)."""
    metric = cfg.radar_metric
    return run_report(str(cfg.results_dir), None if cfg.out is None else str(cfg.out), radar=bool(cfg.radar),
                      radar_metric=str(getattr(metric, "name", metric)))


def run_report(results_dir: str | Path, out: str | Path | None = None, *, radar: bool = True,
               radar_metric: str = "top1") -> int:
    """Check the folders, write the report, print it; unusable result files are skipped with a warning each."""
    from ..utils.files import check_output_path

    results = Path(results_dir)
    if not results.is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such results directory; give the folder holding main.py's result "
                                "files (--results-dir)", str(results))
    target = Path(out) if out is not None else results / "report"
    check_output_path(target, label="report folder", folder=True)
    written = write_report(results, target, radar=radar, radar_metric=radar_metric, warn=_warn_on_stderr)
    print(Path(written["report.md"]).read_text())
    print("written: " + ", ".join(str(p) for p in written.values()))
    return 0


def _warn_on_stderr(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)

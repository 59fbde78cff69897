"""The demo's results table and chart: one row per merge method (plus the fine-tuned models), absolute and
normalized test accuracy and the data each number used, from the result files ``main.py`` wrote and the single-task
accuracy file."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..analysis.result_files import ResultRecord, collect_results
from ..checkpoints.paths import single_task_accuracy_path
from ..utils.files import atomic_write
from ..merging.registry import available_methods, method_class, method_label
from ..plotting.style import figure, method_color, save_figure, write_csv

__all__ = ["SummaryRow", "TABLE_ORDER", "summarize", "summary_markdown", "plot_summary"]

FINETUNED = "finetuned"


def demo_table_methods() -> tuple[str, ...]:
    """The methods of the demo's table (those with a ``demo_row`` trait), in row order."""
    rows = {name: method_class(name).demo_row for name in available_methods()}
    return tuple(sorted((name for name, row in rows.items() if row is not None), key=lambda name: rows[name]))


#: Row order of the table: the methods' ``demo_row`` (the paper's Table 2 order), fine-tuned last (the upper bound).
TABLE_ORDER = (*demo_table_methods(), FINETUNED)
_FINETUNED_LABEL = "Fine-tuned (one model per task)"


@dataclass(frozen=True)
class SummaryRow:
    method: str
    label: str
    avg_top1: float
    avg_normalized_top1: float
    top1: Mapping[str, float]  # per task, test split
    alpha: float | None
    source: str  # the result file (or the accuracy file for the fine-tuned row)
    data_regime: str = ""  # the data the numbers used (evaluation.data_regime); "" for the fine-tuned row


def _latest(records: Sequence[ResultRecord], model: str, datasets: Sequence[str]) -> dict[str, ResultRecord]:
    """Per method, the newest result of ``model`` on exactly ``datasets`` with α chosen on validation (or the
    method's fixed α): fixed-α runs of grid methods (``lambda<α>``) are not what the demo compares."""
    chosen: dict[str, ResultRecord] = {}
    for record in records:
        if record.model != model or list(record.datasets) != list(datasets) or "lambda" in record.suffix:
            continue
        current = chosen.get(record.method)
        if current is None or record.created > current.created:
            chosen[record.method] = record
    return chosen


def summarize(results_dir: str | Path, model: str, datasets: Sequence[str]) -> list[SummaryRow]:
    """The table's rows, in :data:`TABLE_ORDER`, from ``<results_dir>/merging/`` and the single-task accuracy file
    ``<results_dir>/single_task/<model>/``; methods without a result file are left out (never invented)."""
    rows = []
    chosen = _latest(collect_results(Path(results_dir) / "merging"), model, datasets)
    for method in TABLE_ORDER:
        if method == FINETUNED:
            path = single_task_accuracy_path(results_dir, model)
            if not path.is_file():
                continue
            accuracies = json.loads(path.read_text())
            if not all(d in accuracies for d in datasets):
                continue
            top1 = {d: float(accuracies[d]) for d in datasets}
            rows.append(SummaryRow(method, _FINETUNED_LABEL, float(np.mean(list(top1.values()))), 1.0, top1, None,
                                   str(path)))
            continue
        record = chosen.get(method)
        if record is None:
            continue
        payload = json.loads(record.path.read_text())
        top1 = {d: float(record.test[f"{d}:top1"]) for d in datasets}
        rows.append(SummaryRow(method, method_label(method), float(record.test["avg_top1"]),
                               float(record.test["avg_normalized_top1"]), top1,
                               None if payload.get("task_choices") is not None else float(payload["alpha"]),
                               str(record.path), record.data_regime))
    return rows


def summary_markdown(rows: Sequence[SummaryRow], datasets: Sequence[str]) -> str:
    """Markdown table: method, average absolute / normalized test accuracy (%), α, the data used, per-task absolute
    (%)."""
    header = ["Method", "Abs. acc.", "Norm. acc.", "α", "Data", *datasets]
    align = [":---", "---:", "---:", "---:", ":---", *["---:"] * len(datasets)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for row in rows:
        alpha = "" if row.alpha is None else f"{row.alpha:.3g}"
        cells = [row.label, f"{100 * row.avg_top1:.1f}", f"{100 * row.avg_normalized_top1:.1f}", alpha,
                 row.data_regime, *(f"{100 * row.top1[d]:.1f}" for d in datasets)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _csv_rows(rows: Sequence[SummaryRow], datasets: Sequence[str]) -> list[dict[str, object]]:
    return [{"method": r.method, "label": r.label, "avg_top1": r.avg_top1,
             "avg_normalized_top1": r.avg_normalized_top1, "alpha": r.alpha, "data_regime": r.data_regime,
             **{f"{d}:top1": r.top1[d] for d in datasets}, "source": r.source} for r in rows]


def plot_summary(rows: Sequence[SummaryRow], datasets: Sequence[str], path: str | Path, *, title: str = "") -> Path:
    """Horizontal bars of the average absolute and normalized accuracy per method, per-task accuracies as dots."""
    labels = [r.label for r in rows]
    y = np.arange(len(rows))[::-1]
    with figure(1, 2, figsize=(12, 0.55 * len(rows) + 1.8), sharey=True) as (fig, (left, right)):
        for ax, key, name in ((left, "avg_top1", "Absolute accuracy (%)"),
                              (right, "avg_normalized_top1", "Normalized accuracy (%)")):
            values = [100 * getattr(r, key) for r in rows]
            bars = ax.barh(y, values, color=[method_color(r.method, i) for i, r in enumerate(rows)], alpha=0.85)
            for bar, value in zip(bars, values, strict=True):  # right of every bar and dot (at most 100 %)
                ax.text(102, bar.get_y() + bar.get_height() / 2, f"{value:.1f}", va="center", fontsize=10)
            if key == "avg_top1":
                for yi, row in zip(y, rows, strict=True):
                    ax.scatter([100 * row.top1[d] for d in datasets], [yi] * len(datasets), s=12, color="black",
                               alpha=0.5, zorder=3, label="per task" if yi == y[0] else None)
                ax.legend(loc="lower right")
            ax.set_xlim(0, 114)
            ax.set_xlabel(name)
            ax.grid(axis="y", visible=False)
        left.set_yticks(y, labels)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        data = {"datasets": list(datasets), "rows": _csv_rows(rows, datasets)}
        return save_figure(fig, path, data, rows=_csv_rows(rows, datasets))


def write_summary(rows: Sequence[SummaryRow], datasets: Sequence[str], out_dir: str | Path,
                  title: str = "") -> dict[str, Path]:
    """``summary.md``, ``summary.csv`` and ``accuracy.png`` (with its numbers) in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = (f"# {title}\n\n" if title else "") + summary_markdown(rows, datasets)
    md = atomic_write(out / "summary.md", lambda p: p.write_text(text))
    csv = write_csv(out / "summary.csv", _csv_rows(rows, datasets))
    png = plot_summary(rows, datasets, out / "accuracy.png", title=title)
    return {"markdown": md, "csv": csv, "figure": png}

"""The ablation of Table 4: Task Arithmetic, low-rank only, interference reduction only, and TSV-M (both).

Each row is a ``main.py`` run (its result file is reused when it exists): α chosen on validation, test accuracy
reported absolute and normalized.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..merging.registry import ablation_rows

__all__ = ["ABLATION_METHODS", "ablation_rows", "ablation_markdown"]

#: method -> (label, low-rank truncation, interference reduction), from the methods' ``ablation`` trait
ABLATION_METHODS: dict[str, tuple[str, bool, bool]] = {
    name: (row.label, row.low_rank, row.interference_reduction) for name, row in ablation_rows().items()
}


def ablation_rows(payloads: Mapping[str, Mapping[str, Any] | None], datasets: Sequence[str]) -> list[dict[str, Any]]:
    """One row per method (in the given order); a missing result leaves its numbers empty (None)."""
    rows = []
    for method, payload in payloads.items():
        label, low_rank, orth = ABLATION_METHODS.get(method, (method, None, None))
        test = (payload or {}).get("test", {})
        row: dict[str, Any] = {
            "method": method, "label": label, "low_rank": low_rank, "interference_reduction": orth,
            "alpha": (payload or {}).get("alpha"),
            "avg_top1": test.get("avg_top1"), "avg_normalized_top1": test.get("avg_normalized_top1"),
        }
        for d in datasets:
            row[f"{d}:top1"] = test.get(f"{d}:top1")
            row[f"{d}:normalized_top1"] = test.get(f"{d}:normalized_top1")
        row["result_file"] = (payload or {}).get("_path")
        rows.append(row)
    return rows


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def _mark(flag: bool | None) -> str:
    return "" if flag is None else ("✓" if flag else "✗")


def ablation_markdown(rows: Sequence[Mapping[str, Any]], title: str) -> str:
    """Table 4 layout: method, the two ingredients, α, average test top-1 (normalized in parentheses)."""
    lines = [f"### {title}", "", "| method | low-rank | interference reduction | α | accuracy (normalized) |",
             "| --- | :---: | :---: | ---: | ---: |"]
    for r in rows:
        acc = "" if r["avg_top1"] is None else f"{_pct(r['avg_top1'])} ({_pct(r['avg_normalized_top1'])})"
        alpha = "" if r["alpha"] is None else f"{r['alpha']:g}"
        lines.append(f"| {r['label']} | {_mark(r['low_rank'])} | {_mark(r['interference_reduction'])} | {alpha} "
                     f"| {acc} |")
    return "\n".join(lines) + "\n"

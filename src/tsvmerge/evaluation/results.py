"""Result files (written atomically) and the end-of-run table.

Merged-model results: ``<results_dir>/<save_subfolder>/<model>_<T>tasks_<full_name>_nonlinear_additions_<suffix>.json``
(schema in ``docs/evaluation.md``); a copy goes to the Hydra run directory.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["RESULT_SCHEMA", "format_table", "result_path", "result_suffix"]

RESULT_SCHEMA = "tsvmerge.merge_eval/1"


def result_suffix(datasets: Sequence[str], benchmark_prefix: bool, alpha_fixed: float | None) -> str:
    """``valbest`` / ``lambda<α>``, prefixed by the dataset list when it is not the first T of the benchmark."""
    parts = []
    if not benchmark_prefix:
        joined = "-".join(datasets)
        parts.append(joined if len(joined) <= 60 else "custom" + hashlib.sha1(joined.encode()).hexdigest()[:8])
    parts.append("valbest" if alpha_fixed is None else f"lambda{alpha_fixed:g}")
    return "_".join(parts)


def result_path(results_dir: str | Path, save_subfolder: str, model: str, num_tasks: int, full_name: str,
                suffix: str) -> Path:
    name = f"{model}_{num_tasks}tasks_{full_name}_nonlinear_additions_{suffix}.json"
    if "/" in name or name.startswith("."):
        raise ValueError(f"invalid result file name {name!r} (check model / method.full_name)")
    return Path(results_dir) / save_subfolder / name


def format_table(test: Mapping[str, float], datasets: Sequence[str], val: Mapping[str, float] | None = None,
                 choices: Mapping[str, Any] | None = None, title: str = "") -> str:
    """One line per dataset: test top-1, normalized top-1 (and validation top-1 / chosen λ), then the average."""
    header = f"{'dataset':16s} {'top1':>8s} {'normalized':>11s}"
    if val is not None:
        header += f" {'val top1':>9s}"
    if choices:
        header += f" {'choice':>8s}"
    lines = [title] if title else []
    lines += [header, "-" * len(header)]
    for d in datasets:
        line = f"{d:16s} {100 * test[f'{d}:top1']:8.2f} {100 * test[f'{d}:normalized_top1']:11.2f}"
        if val is not None:
            line += f" {100 * val.get(f'{d}Val:top1', math.nan):9.2f}"
        if choices:
            line += f" {str(choices.get(d, '')):>8s}"
        lines.append(line)
    lines.append("-" * len(header))
    avg = f"{'mean':16s} {100 * test['avg_top1']:8.2f} {100 * test['avg_normalized_top1']:11.2f}"
    if val is not None:
        avg += f" {100 * val.get('avg_top1', math.nan):9.2f}"
    lines.append(avg)
    return "\n".join(lines)

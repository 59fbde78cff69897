"""Top-1, normalized top-1 and their averages (SPEC §4), in the flat key layout of the published result files.

A metrics section is ``{"<split>:top1": float, "<split>:normalized_top1": float, ..., "avg_top1": float,
"avg_normalized_top1": float}`` where ``<split>`` is ``Cars`` (test) or ``CarsVal`` (validation).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..utils.errors import UserError

__all__ = [
    "AccuracyFileError",
    "first_best",
    "load_ft_accuracies",
    "metrics_section",
    "missing_accuracy_keys",
    "top1",
]


class AccuracyFileError(UserError, FileNotFoundError):
    """The single-task accuracy file (denominators of normalized accuracy) is missing or incomplete."""


def top1(correct: int, total: int) -> float:
    if total <= 0:
        raise ValueError("top-1 of an empty split")
    return correct / total


def metrics_section(top1_by_split: Mapping[str, float], ft_accuracies: Mapping[str, float]) -> dict[str, float]:
    """Per split top-1 and normalized top-1 (top-1 / fine-tuned top-1 of the same split), plus plain means."""
    section: dict[str, float] = {}
    normalized = []
    for split, acc in top1_by_split.items():
        norm = acc / ft_accuracies[split]
        section[f"{split}:top1"] = acc
        section[f"{split}:normalized_top1"] = norm
        normalized.append(norm)
    values = list(top1_by_split.values())
    section["avg_top1"] = sum(values) / len(values) if values else math.nan
    section["avg_normalized_top1"] = sum(normalized) / len(normalized) if normalized else math.nan
    return section


def first_best(scores: Sequence[float]) -> int:
    """Index of the maximum; the first one wins ties (SPEC §4). NaN never wins."""
    best, best_value = 0, -math.inf
    for i, value in enumerate(scores):
        if value > best_value:
            best, best_value = i, value
    return best


def missing_accuracy_keys(accuracies: Mapping[str, object], splits: Sequence[str]) -> list[str]:
    return [s for s in splits if s not in accuracies]


def load_ft_accuracies(path: str | Path, splits: Sequence[str] = ()) -> dict[str, float]:
    """Read ``nonlinear_ft_accuracies.json``; every split in ``splits`` must have a positive fraction in (0, 1]."""
    p = Path(path)
    if not p.is_file():
        raise AccuracyFileError(
            f"single-task accuracy file {str(p)!r} does not exist (normalized accuracy divides by it).\n"
            "Use the published one (results/single_task/<model>/nonlinear_ft_accuracies.json ships with the "
            "repository; set results_dir / ft_accuracies to find it) or compute it with\n"
            "  python eval_single_task.py --model=<model> --finetuning-mode=standard"
        )
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise AccuracyFileError(f"{p} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise AccuracyFileError(f"{p} must hold a JSON object {{dataset: top1}}")
    missing = missing_accuracy_keys(data, splits)
    if missing:
        raise AccuracyFileError(
            f"{p} has no single-task accuracy for {', '.join(missing)}; compute them with\n"
            f"  python eval_single_task.py --model=<model> --finetuning-mode=standard --datasets "
            f"{' '.join(sorted({m.removesuffix('Val') for m in missing}))}"
        )
    out: dict[str, float] = {}
    for key, value in data.items():
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise AccuracyFileError(f"{p}: {key!r} is not a number")
        out[key] = float(value)
    bad = [s for s in splits if not 0.0 < out[s] <= 1.0]
    if bad:
        got = ", ".join(f"{b}={out[b]}" for b in bad)
        raise AccuracyFileError(f"{p}: accuracies must be fractions in (0, 1]; got {got}")
    return out

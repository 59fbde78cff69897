"""The report's inputs: every ``main.py`` result file under a results folder (one :class:`ResultRecord` each), and
the single-task fine-tuned accuracies of the reference row.

A result file is read through :class:`~tsvmerge.evaluation.results.ResultFile`, the one declaration of its keys.
Files that cannot be used (unreadable, not JSON, NaN / ±inf, a result file without its sections) are skipped with a
warning naming each, so a missing cell in the tables never goes unexplained; other JSON files are ignored.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data import is_benchmark_prefix
from ..evaluation.data_regime import regime_of
from ..evaluation.results import ResultFile, ResultFileError, is_result_file

__all__ = ["ResultRecord", "Warn", "collect_results", "finetuned_accuracies", "finetuned_accuracies_of_runs",
           "load_json", "read_result"]

log = logging.getLogger(__name__)

Warn = Callable[[str], None]


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
    data_regime: str = ""  # the data the numbers used (evaluation.data_regime.regime_of)

    @classmethod
    def of(cls, result: ResultFile, path: Path) -> ResultRecord:
        """What the tables need of the result file ``result``, read from ``path``."""
        return cls(path=path, model=result.model, method=result.method, full_name=result.method_full_name,
                   suffix=_suffix(path), datasets=result.datasets, test=result.test,
                   task_specific=result.task_choices is not None, created=result.created_utc,
                   ft_accuracies_file=result.ft_accuracies_file, data_regime=regime_of(result))

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
    data = load_json(path)
    if not is_result_file(data):
        return None
    return ResultRecord.of(ResultFile.from_json(data, path), path)


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

"""Result files (written atomically) and the end-of-run table.

Merged-model results: ``<results_dir>/<save_subfolder>/<model>_<T>tasks_<full_name>_nonlinear_additions_<suffix>.json``
(schema in ``docs/evaluation.md``); a copy goes to the Hydra run directory. :class:`ResultFile` declares the file's
fields once: ``main.py`` writes one (:meth:`ResultFile.to_json`), the report reads them back
(:meth:`ResultFile.from_json`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..utils.errors import UserError

__all__ = ["RESULT_SCHEMA", "RESULT_SCHEMA_PREFIX", "ResultFile", "ResultFileError", "format_table",
           "is_result_file", "result_path", "result_suffix"]

RESULT_SCHEMA = "tsvmerge.merge_eval/1"
#: What every version of the schema starts with: a reader takes any file whose ``schema`` starts with it.
RESULT_SCHEMA_PREFIX = "tsvmerge.merge_eval/"


class ResultFileError(UserError, ValueError):
    """A file under the results folder that cannot be used: unreadable, not valid JSON, or holding NaN / ±inf."""


def is_result_file(data: Any) -> bool:
    """Whether parsed JSON is a ``main.py`` result file (any version of the schema); other JSON is not an error."""
    return isinstance(data, dict) and str(data.get("schema", "")).startswith(RESULT_SCHEMA_PREFIX)


#: Keys only some methods write (the calibration data of data-aware merges; the α sweep's early stop; TALL-mask
#: files): left out of the file when None.
_WRITTEN_WHEN_SET = ("calibration", "alpha_early_stopping", "tall_mask_file", "tall_mask_saved")


@dataclass(frozen=True, kw_only=True)
class ResultFile:
    """One ``main.py`` result file (schema ``tsvmerge.merge_eval/1``, docs/evaluation.md): its keys, in the order
    they are written. Files of older versions may lack keys other than ``test`` and ``datasets``: those read as the
    defaults below."""

    schema: str = RESULT_SCHEMA
    model: str
    method: str
    method_full_name: str
    method_params: Mapping[str, Any] = field(default_factory=dict)
    entry_rules: Mapping[str, Any] = field(default_factory=dict)  # {svd_keys, average_keys}
    num_tasks: int = field(init=False)  # len(datasets)
    datasets: tuple[str, ...]
    alpha: float | None = None  # the α of the test numbers
    alpha_grid: Sequence[float] = ()  # the α values evaluated on validation
    task_choices: Mapping[str, Any] | None = None  # task-specific methods: {dataset: choice}
    selection: str = ""
    data_regime: str = ""  # the data the numbers used (evaluation.data_regime); "": not recorded (older files)
    calibration: Mapping[str, Any] | None = None  # data-aware methods: the unlabeled samples they merged with
    test: Mapping[str, float]  # metrics section of the test splits
    val: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # {α / choice label: metrics section}
    val_best: Mapping[str, float] = field(default_factory=dict)
    alpha_early_stopping: Mapping[str, Any] | None = None  # {patience, stopped_at}
    tall_mask_file: str | None = None
    tall_mask_saved: bool | None = None
    ft_accuracies_file: str | None = None  # the accuracy file the run normalized by
    merge_stats: Mapping[str, Any] = field(default_factory=dict)
    runtime: Mapping[str, Any] = field(default_factory=dict)  # device and timings
    created_utc: str = ""
    tsvmerge_version: str = ""
    config: Mapping[str, Any] = field(default_factory=dict)  # the resolved configuration

    def __post_init__(self) -> None:
        object.__setattr__(self, "datasets", tuple(self.datasets))
        object.__setattr__(self, "num_tasks", len(self.datasets))

    def to_json(self) -> dict[str, Any]:
        """The file's JSON object: every key in the order of the fields, those of :data:`_WRITTEN_WHEN_SET` only
        when set."""
        payload: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _WRITTEN_WHEN_SET and value is None:
                continue
            payload[f.name] = list(value) if f.name == "datasets" else value
        return payload

    @classmethod
    def from_json(cls, data: Any, path: str | Path) -> ResultFile:
        """The result file ``data`` (parsed from ``path``); ResultFileError naming ``path`` when it is not one or
        lacks its ``test`` section or ``datasets`` list. Keys of no field are ignored; the names are read as
        strings (``method_full_name`` defaults to ``method``)."""
        if not is_result_file(data):
            raise ResultFileError(f"{path}: not a result file (no '{RESULT_SCHEMA_PREFIX}' schema)")
        if not isinstance(data.get("test"), dict) or not isinstance(data.get("datasets"), list):
            raise ResultFileError(f"{path}: a result file without its 'test' section or 'datasets' list")
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        values = {key: value for key, value in data.items() if key in names}
        values.update(
            model=str(data.get("model")), method=str(data.get("method")),
            method_full_name=str(data.get("method_full_name") or data.get("method")),
            created_utc=str(data.get("created_utc") or ""), data_regime=str(data.get("data_regime") or ""),
            ft_accuracies_file=str(data["ft_accuracies_file"]) if data.get("ft_accuracies_file") else None,
        )
        return cls(**values)


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
                 choices: Mapping[str, Any] | None = None, title: str = "", data_regime: str = "") -> str:
    """One line per dataset: test top-1, normalized top-1 (and validation top-1 / chosen λ), then the average, and
    (``data_regime`` given) the data the numbers used, so a data-aware method is never read as data-free."""
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
    if data_regime:
        lines.append(f"data used: {data_regime}")
    return "\n".join(lines)

"""Optional Weights & Biases logging: ``wandb.mode=disabled`` (default) never imports wandb.

What a main.py run logs (:func:`log_merge_result`), so that a sweep's runs can be compared in wandb without the
result files:

- the resolved configuration (``wandb.init(config=...)``);
- the validation metrics of every α as history steps (``alpha``, ``val/...``), while the sweep runs;
- ``val/alpha_curve``: the α sweep as a table (α, mean top-1, mean normalized top-1 on validation) with a line plot
  of the normalized accuracy over α; task-specific methods log their mask choices λ instead of α;
- ``test/per_dataset``: one row per dataset (test top-1, normalized top-1, validation top-1 at the chosen α, choice);
- the final metrics in the run summary: ``test/<dataset>:top1``, ``test/avg_top1``, ``test/avg_normalized_top1``,
  ``val_best/...``, ``alpha``, and where the result file is.

Offline runs (``wandb.mode=offline``, e.g. on cluster nodes without internet) are written under ``$WANDB_DIR/wandb``
(default: the working directory) and uploaded later with ``wandb sync``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..config.tracking import WANDB_MODES, WandbSettings
from ..utils.files import json_safe

__all__ = ["Tracker", "WandbSettings", "log_merge_result"]


class Tracker:
    """Thin wrapper: every call is a no-op when disabled."""

    def __init__(self, settings: WandbSettings, config: Mapping[str, Any] | None = None,
                 name: str | None = None) -> None:
        if settings.mode not in WANDB_MODES:
            raise ValueError(f"wandb.mode={settings.mode!r}; valid: {', '.join(WANDB_MODES)}")
        self._run = None
        if settings.mode == "disabled":
            return
        try:
            import wandb
        except ImportError as exc:
            raise RuntimeError(
                f"wandb.mode={settings.mode} needs the wandb package (a dependency of tsvmerge: make venv, or "
                "pip install wandb), "
                "or run with wandb.mode=disabled"
            ) from exc
        self._run = wandb.init(project=settings.project, entity=settings.entity, group=settings.group,
                               mode=settings.mode, name=name, config=json_safe(config or {}))

    @property
    def enabled(self) -> bool:
        return self._run is not None

    def log(self, data: Mapping[str, Any], step: int | None = None) -> None:
        if self._run is not None:
            self._run.log(json_safe(data), step=step)

    def table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Log ``rows`` as a ``wandb.Table`` under ``key`` (kept as a file of the run: ``media/table/<key>_*``)."""
        if self._run is not None:
            import wandb

            self._run.log({key: wandb.Table(columns=list(columns), data=json_safe([list(r) for r in rows]))})

    def line(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], x: str, y: str,
             title: str) -> None:
        """Log ``rows`` as a table and a line plot of column ``y`` over column ``x`` (the table is kept as
        ``<key>_table``)."""
        if self._run is not None:
            import wandb

            table = wandb.Table(columns=list(columns), data=json_safe([list(r) for r in rows]))
            self._run.log({key: wandb.plot.line(table, x, y, title=title)})

    def summary(self, data: Mapping[str, Any]) -> None:
        if self._run is not None:
            for key, value in json_safe(data).items():
                self._run.summary[key] = value

    def finish(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None


def log_merge_result(tracker: Tracker, payload: Mapping[str, Any], result_file: str | None = None) -> None:
    """The end of a main.py run in wandb: the validation curve, the per-dataset table and the final metrics (the
    result file's ``payload``, schema in docs/evaluation.md)."""
    if not tracker.enabled:
        return
    val: Mapping[str, Mapping[str, float]] = payload.get("val") or {}
    choices = payload.get("task_choices")
    if choices is None:  # shared vector: one validation section per α of the sweep
        rows = [[float(label), s.get("avg_top1"), s.get("avg_normalized_top1")] for label, s in val.items()]
        tracker.line("val/alpha_curve", ["alpha", "val_avg_top1", "val_avg_normalized_top1"], rows,
                     "alpha", "val_avg_normalized_top1", "validation accuracy over α")
    else:  # task-specific vectors: one validation section per mask choice λ, chosen per task
        rows = [[label, s.get("avg_top1"), s.get("avg_normalized_top1")] for label, s in val.items()]
        tracker.table("val/choice_curve", ["choice", "val_avg_top1", "val_avg_normalized_top1"], rows)
    test: Mapping[str, float] = payload["test"]
    val_best: Mapping[str, float] = payload.get("val_best") or {}
    tracker.table("test/per_dataset", ["dataset", "top1", "normalized_top1", "val_top1", "choice"], [
        [d, test.get(f"{d}:top1"), test.get(f"{d}:normalized_top1"), val_best.get(f"{d}Val:top1"),
         None if choices is None else str(choices.get(d))]
        for d in payload["datasets"]])
    final = {f"test/{k}": v for k, v in test.items()} | {f"val_best/{k}": v for k, v in val_best.items()}
    final |= {"alpha": payload.get("alpha"), "num_tasks": payload.get("num_tasks"), "method": payload.get("method")}
    if result_file is not None:
        final["result_file"] = result_file
    tracker.summary(final)

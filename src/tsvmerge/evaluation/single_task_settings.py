"""From eval_single_task.py's composed configuration (``config/eval_single_task.yaml``) to the arguments of
:func:`tsvmerge.evaluation.single_task.run_single_task`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ..config import ConfigError, Problems, to_container
from ..config.schema import EvalSingleTaskSchema
from ..config.settings import check_device, check_minimums, dataset_names
from ..models.model_config import model_spec

__all__ = ["single_task_settings"]


def single_task_settings(cfg: DictConfig) -> dict[str, Any]:
    """Validate the composed configuration; raise one ConfigError listing every problem."""
    from ..data import task_list

    values: dict[str, Any] = to_container(cfg)
    problems = Problems()
    spec = model_spec(values["model"], problems)
    check_minimums(values, EvalSingleTaskSchema, problems)
    check_device(str(values["device"]), problems)
    names = dataset_names(values["datasets"])
    if names is not None and values["num_tasks"] is not None:
        problems.append("give either datasets (--datasets / --train-dataset) or num_tasks (--num-tasks), not both")
    datasets: list[str] = []
    if spec is not None and not problems:
        try:
            datasets = task_list(num_tasks=values["num_tasks"], datasets=names, benchmark=spec.benchmark)
        except ValueError as exc:
            problems.append(f"datasets: {exc}")
    problems.raise_if_any("invalid eval_single_task configuration")
    assert spec is not None
    if values["pretrained"]:
        spec = dataclasses.replace(spec, pretrained=values["pretrained"])
    if not datasets:
        raise ConfigError("no dataset to evaluate")
    return dict(spec=spec, mode=values["finetuning_mode"], datasets=datasets,
                model_location=Path(values["model_location"]), data_location=Path(values["data_location"]),
                results_dir=Path(values["results_dir"]), batch_size=values["batch_size"], device=str(values["device"]),
                precision=values["precision"], channels_last=values["channels_last"],
                num_workers=values["num_workers"], eval_cache=values["eval_cache"], cache_dir=Path(values["cache_dir"]),
                progress=values["progress"])

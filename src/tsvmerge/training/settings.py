"""From finetune.py's composed configuration (``config/finetune.yaml``) to a :class:`FinetuneConfig`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ..config import ConfigError, Problems, to_container
from ..config.schema import FinetuneSchema
from ..config.settings import check_minimums, dataset_names, wandb_settings
from ..models.model_config import model_spec
from ..config.tracking import WandbSettings
from ..models.finetuning_protocol import default_hyperparameters, default_tasks
from .run import FinetuneConfig

__all__ = ["finetune_config"]


def finetune_config(cfg: DictConfig) -> FinetuneConfig:
    """Validate the composed configuration; raise one ConfigError listing every problem (the device and the
    hyper-parameters against the number of processes are checked by :meth:`FinetuneConfig.validate`)."""
    from ..data import task_list

    values: dict[str, Any] = to_container(cfg)
    values.pop("hydra", None)
    problems = Problems()
    spec = model_spec(values["model"], problems)
    check_minimums(values, FinetuneSchema, problems)
    tasks: list[str] = []
    if spec is not None:
        if values["pretrained"]:
            spec = dataclasses.replace(spec, pretrained=values["pretrained"])
        names = dataset_names(values["train_dataset"])
        try:
            tasks = task_list(datasets=names) if names is not None else default_tasks(spec.benchmark)
        except ValueError as exc:
            problems.append(f"train_dataset: {exc}")
    problems.raise_if_any("invalid fine-tuning configuration")
    assert spec is not None
    try:
        hyperparameters = default_hyperparameters(
            spec.name, spec.arch, spec.finetuning, lr=values["lr"], weight_decay=values["wd"],
            batch_size=values["batch_size"], num_grad_accumulation=values["num_grad_accumulation"],
            label_smoothing=values["label_smoothing"], warmup_steps=values["warmup_steps"],
            max_grad_norm=values["max_grad_norm"])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid fine-tuning configuration: {exc}") from None
    wandb = wandb_settings(values["wandb"])
    if wandb.group is None:
        wandb = WandbSettings(wandb.mode, wandb.project, wandb.entity, spec.name)
    return FinetuneConfig(
        model=spec, tasks=tuple(tasks), hyperparameters=hyperparameters,
        model_location=Path(values["model_location"]), data_location=Path(values["data_location"]),
        results_dir=Path(values["results_dir"]), epochs=values["epochs"], seed=values["seed"],
        max_steps=values["max_steps"], checkpoint_every=values["checkpoint_every"], device=str(values["device"]),
        precision=values["precision"], num_workers=values["num_workers"], augment=values["augment"],
        evaluate=values["evaluate"], eval_batch_size=values["eval_batch_size"], log_every=values["log_every"],
        progress=values["progress"], world_size=values["world_size"], task_parallel=values["task_parallel"],
        port=values["port"],
        timeout_minutes=values["dist_timeout"], wandb=wandb,
    )

"""The typed settings of a merge run (``main.py``; ``analyze.py`` and ``tsvmerge doctor`` read the same keys), from
its composed configuration.

Hydra has already checked key names and value types against :mod:`tsvmerge.config.schema`. What is left is what
depends on other parts of the project: the method exists and accepts its parameters, the tasks exist in the model's
benchmark, numbers are in range, the device can be used. Every problem is collected, then raised as one
:class:`~tsvmerge.config.ConfigError`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..config.compose import to_container
from ..config.errors import ConfigError
from ..config.schema import RunSchema
from ..config.settings import Problems, check_device, check_minimums, wandb_settings
from ..config.tracking import WandbSettings
from ..data import benchmark_tasks
from ..data.task_selection import datasets_from_config
from ..merging.method_config import check_benchmark_defaults, method_from_section
from ..merging.registry import method_class, methods_where
from ..models.factory import ModelSpec
from ..models.model_config import model_spec

__all__ = ["RunSettings", "settings_from_config"]


@dataclass(frozen=True)
class RunSettings:
    """Everything ``main.py`` (and the analyses) need, validated and typed."""

    model: ModelSpec
    method: str
    method_full_name: str
    method_params: dict[str, Any]
    datasets: list[str]
    svd_keys: str | None = None  # method.svd_keys / method.average_keys: entry-rule overrides
    average_keys: str | None = None
    specify_lambda: float | None = None
    n_eval_points: int = 31
    device: str = "auto"
    precision: str = "bf16"
    channels_last: bool = True
    batch_size: int = 128
    num_workers: int | None = None
    data_location: Path = Path("data")
    model_location: Path = Path("models/checkpoints")
    results_dir: Path = Path("results")
    save_subfolder: str = "merging"
    result_suffix: str | None = None
    ft_accuracies: Path = Path("results/single_task/ViT-B-32/nonlinear_ft_accuracies.json")
    eval_cache: str = "memory"
    cache_dir: Path = Path("cache/eval")
    progress: bool = True
    calibration_samples: int | None = None  # calibration.samples / calibration.seed (data-aware methods)
    calibration_seed: int | None = None
    wandb: WandbSettings = field(default_factory=WandbSettings)

    @property
    def num_tasks(self) -> int:
        return len(self.datasets)

    @property
    def benchmark_prefix(self) -> bool:
        """Whether the tasks are the first T of the model's benchmark list (not an explicit DATASETS list)."""
        return tuple(self.datasets) == benchmark_tasks(self.model.benchmark)[: self.num_tasks]


def _specify_lambda(value: Any, problems: Problems) -> float | None:
    if value is None:
        return None
    if not math.isfinite(value) or value <= 0:
        problems.append(f"specify_lambda must be a positive finite number (the paper uses 1.0 for TSVM) or null, "
                        f"got {value}")
        return None
    return float(value)


def calibration_given(section: Mapping[str, Any]) -> bool:
    return any(section.get(key) is not None for key in ("samples", "seed"))


def method_takes_data(name: str) -> bool:
    return method_class(name).calibration is not None


def data_aware_methods() -> list[str]:
    return methods_where(lambda cls: cls.calibration is not None)


def settings_from_config(cfg: DictConfig | Mapping[str, Any]) -> RunSettings:
    """Validate a composed ``main.py`` configuration; raise one ConfigError listing every problem."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    problems = Problems()
    try:
        values = to_container(cfg)
    except ConfigError as exc:
        raise ConfigError(f"invalid configuration:\n  - {exc}") from None
    values.pop("hydra", None)
    unknown = [k for k in values if k not in {f.name for f in dataclasses.fields(RunSchema)} | {"analysis"}]
    if unknown:
        problems.append(f"unknown top-level config key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                        f"valid top-level config keys: {', '.join(f.name for f in dataclasses.fields(RunSchema))}")
    model = model_spec(values.get("model") or {}, problems)
    method = method_from_section(cfg.get("method") if "method" in cfg else None, problems)
    datasets = datasets_from_config(values, problems, model.benchmark if model is not None else "paper")
    if model is not None and method is not None and datasets:
        check_benchmark_defaults(method, model.name, len(datasets), problems)
    check_minimums(values, RunSchema, problems)
    specify_lambda = _specify_lambda(values.get("specify_lambda"), problems)
    check_device(str(values["device"]), problems)
    for key in ("data_location", "model_location", "results_dir", "cache_dir", "ft_accuracies"):
        if not str(values.get(key) or "").strip():
            problems.append(f"{key} must be a path")
    calibration = values.get("calibration") or {}
    if calibration.get("samples") is not None and calibration["samples"] < 1:
        problems.append(f"calibration.samples must be at least 1, got {calibration['samples']}")
    if method is not None and calibration_given(calibration) and not method_takes_data(method.name):
        problems.append(f"calibration.samples / calibration.seed apply to the data-aware methods "
                        f"({', '.join(data_aware_methods())}); {method.name!r} merges without data")
    problems.raise_if_any()
    assert model is not None and method is not None
    path = lambda key: Path(str(values[key])).expanduser()  # noqa: E731
    return RunSettings(
        model=model, method=method.name, method_full_name=method.full_name, method_params=method.params,
        svd_keys=method.svd_keys, average_keys=method.average_keys, datasets=datasets,
        specify_lambda=specify_lambda, n_eval_points=values["n_eval_points"],
        device=str(values["device"]), precision=values["precision"], channels_last=values["channels_last"],
        batch_size=values["batch_size"], num_workers=values["num_workers"],
        data_location=path("data_location"), model_location=path("model_location"),
        results_dir=path("results_dir"), save_subfolder=str(values["save_subfolder"] or ""),
        result_suffix=values["result_suffix"], ft_accuracies=path("ft_accuracies"),
        eval_cache=values["eval_cache"], cache_dir=path("cache_dir"), progress=values["progress"],
        calibration_samples=calibration.get("samples"), calibration_seed=calibration.get("seed"),
        wandb=wandb_settings(values["wandb"]),
    )

"""From a composed configuration to the typed settings a run works with, checking what a schema cannot.

Hydra has already checked key names and value types against :mod:`tsvmerge.config.schema`. What is left is what
depends on other parts of the project: the method exists and accepts its parameters, the tasks exist in the model's
benchmark, numbers are in range, the device can be used. Every problem is collected, then raised as one
:class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..models.factory import ModelSpec
from .compose import section_values, to_container
from .errors import ConfigError
from .schema import RunSchema
from .tracking import WandbSettings

__all__ = [
    "MethodChoice",
    "Problems",
    "RunSettings",
    "check_minimums",
    "method_choice",
    "method_from_section",
    "model_spec",
    "settings_from_config",
    "wandb_settings",
]


class Problems(list):
    """Problems found so far; :meth:`raise_if_any` raises them together."""

    def raise_if_any(self, what: str = "invalid configuration") -> None:
        if self:
            raise ConfigError(f"{what}:\n" + "\n".join(f"  - {p}" for p in self))


@dataclass(frozen=True)
class MethodChoice:
    """The configured merge method: its registry name, the name of its result files and its parameters."""

    name: str
    full_name: str
    params: dict[str, Any]
    svd_keys: str | None = None  # entry-rule overrides (regular expressions), not method parameters
    average_keys: str | None = None


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
    wandb: WandbSettings = field(default_factory=WandbSettings)

    @property
    def num_tasks(self) -> int:
        return len(self.datasets)

    @property
    def benchmark_prefix(self) -> bool:
        """Whether the tasks are the first T of the model's benchmark list (not an explicit DATASETS list)."""
        from ..data import benchmark_tasks

        return tuple(self.datasets) == benchmark_tasks(self.model.benchmark)[: self.num_tasks]


# ------------------------------------------------------------------------------------------------------- parts

def check_minimums(values: Mapping[str, Any], schema: type, problems: Problems, prefix: str = "") -> None:
    """Numbers below the ``minimum`` declared in the schema's field metadata."""
    for f in dataclasses.fields(schema):
        minimum = f.metadata.get("minimum")
        value = values.get(f.name)
        if minimum is not None and isinstance(value, int | float) and not isinstance(value, bool) \
                and value < minimum:
            problems.append(f"{prefix}{f.name} must be at least {minimum}, got {value}")


def model_spec(section: Mapping[str, Any], problems: Problems) -> ModelSpec | None:
    """The model config as a :class:`ModelSpec` (keys and types already checked by the schema)."""
    from ..data import BENCHMARKS

    name = section.get("name")
    if not isinstance(name, str) or not name or "/" in name or name in {".", ".."}:
        problems.append(f"model.name must be a model name (one path component), got {name!r}")
        return None
    benchmark = str(section.get("benchmark") or "paper")
    if benchmark not in BENCHMARKS:
        problems.append(f"model.benchmark={benchmark!r} is not valid; choose one of: {', '.join(BENCHMARKS)}")
        benchmark = "paper"
    finetuning = section.get("finetuning")
    if finetuning is not None:
        from ..training.protocol import check_protocol_overrides

        problems.extend(f"model.finetuning: {p}" for p in check_protocol_overrides(finetuning))
    return ModelSpec(name=name, arch=section.get("arch"), quick_gelu=bool(section.get("quick_gelu")),
                     pretrained=section.get("pretrained"), open_clip_config=section.get("open_clip_config"),
                     cache_dir=section.get("cache_dir"), benchmark=benchmark, finetuning=finetuning)


def method_from_section(section: Any, problems: Problems) -> MethodChoice | None:
    """The method config (``config/method/<name>.yaml`` plus overrides), checked against the method's schema and
    by the method itself (allowed values, ranges)."""
    from ..merging import available_methods, build_method
    from ..merging.entry_rules import EntryRules
    from ..merging.registry import method_class
    from .store import method_schema

    available = ", ".join(available_methods())
    if not isinstance(section, Mapping | DictConfig) or "name" not in section:
        problems.append(f"method must be a method config with a name; available methods: {available}")
        return None
    name = section["name"]
    if name not in available_methods():
        problems.append(f"unknown method {name!r}; available methods: {available}")
        return None
    schema = method_schema(method_class(name))
    try:
        values, unknown = section_values(schema, section)
    except ConfigError as exc:
        problems.append(f"method {name}: method.{exc}")
        return None
    if unknown:
        valid = ", ".join(f.name for f in dataclasses.fields(schema))
        problems.append(f"unknown method {name} key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                        f"valid method {name} keys: {valid}")
        return None
    params = {k: v for k, v in values.items() if k not in _NOT_PARAMETERS}
    try:
        method = build_method(name, params)
        EntryRules(svd_keys=values.get("svd_keys"), average_keys=values.get("average_keys"))
    except ValueError as exc:
        problems.append(f"method {name}: {exc}")
        return None
    overrides = [key for key in ("svd_keys", "average_keys") if values.get(key) is not None]
    if overrides and not method.uses_entry_rules:
        problems.append(f"method.{overrides[0]} applies to the SVD-based methods (which choose the matrices they "
                        f"decompose); {name} does not use it")
        return None
    full_name = values.get("full_name") or method.run_name() + _rules_suffix(values)
    if not isinstance(full_name, str) or "/" in full_name or full_name in {".", ".."}:
        problems.append(f"method.full_name must be a file-name part, got {full_name!r}")
        return None
    return MethodChoice(name, full_name, params, values.get("svd_keys"), values.get("average_keys"))


#: Keys of every method config that are not parameters of the method.
_NOT_PARAMETERS = ("name", "full_name", "svd_keys", "average_keys")


def _rules_suffix(values: Mapping[str, Any]) -> str:
    """Run-name suffix of entry-rule overrides, so that runs with other rules never share a result file."""
    rules = [values.get("svd_keys"), values.get("average_keys")]
    if rules == [None, None]:
        return ""
    return f"_keys{zlib.crc32(repr(rules).encode()):08x}"


def _check_benchmark_defaults(method: MethodChoice, model: str, num_tasks: int, problems: Problems) -> None:
    """Methods whose defaults depend on the model and task count (CART's published settings) must have them."""
    from ..merging import build_method

    try:
        build_method(method.name, method.params).for_benchmark(model, num_tasks)
    except ValueError as exc:
        problems.append(str(exc))


def method_choice(name: str, assignments: Sequence[str] = ()) -> MethodChoice:
    """A method configured without YAML files (``tsvmerge merge --method ties --set k=30``): the ``key=value``
    assignments (values read as in YAML: ``null``, ``true``, numbers), checked like a ``config/method`` file."""
    try:
        section = OmegaConf.to_container(OmegaConf.from_dotlist(list(assignments)))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"method {name}: cannot read {list(assignments)}: {exc}") from None
    problems = Problems()
    choice = method_from_section({**section, "name": name}, problems)
    if problems or choice is None:
        raise ConfigError("; ".join(problems))
    return choice


def wandb_settings(section: Mapping[str, Any]) -> WandbSettings:
    return WandbSettings(mode=str(section.get("mode", "disabled")), project=str(section.get("project") or "tsvmerge"),
                         entity=section.get("entity"), group=section.get("group"))


def _datasets(values: Mapping[str, Any], problems: Problems, benchmark: str) -> list[str]:
    from ..data import REGISTRY, benchmark_tasks, task_list

    listed = values.get("DATASETS")
    tasks = benchmark_tasks(benchmark)
    others = [d for d in REGISTRY if d not in tasks]
    valid = f"valid dataset names: {', '.join(tasks)}" + (f" (and any of {', '.join(others)})" if others else "")
    if listed:
        with_val = [d for d in listed if d.endswith("Val")]
        if with_val:
            problems.append(f"DATASETS lists base names (their <Dataset>Val splits are used for validation): "
                            f"remove 'Val' from {', '.join(with_val)}")
            return []
        try:
            return task_list(datasets=listed)
        except ValueError as exc:
            unknown = [d for d in listed if d not in REGISTRY]
            problems.append(f"unknown dataset{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; {valid}"
                            if unknown else str(exc))
            return []
    if listed is not None:  # DATASETS=[]
        problems.append(f"DATASETS is empty; list at least one dataset or use num_tasks; {valid}")
        return []
    n = values.get("num_tasks")
    if not isinstance(n, int) or not 1 <= n <= len(tasks):
        paper = " (8, 14 and 20 are the paper's benchmarks)" if benchmark == "paper" else ""
        problems.append(f"num_tasks must be an integer in 1..{len(tasks)}{paper}, got {n!r}; "
                        "or list the tasks with DATASETS=[...]")
        return []
    return task_list(num_tasks=n, benchmark=benchmark)


def check_device(device: str, problems: Problems, key: str = "device") -> None:
    from ..utils.device import resolve_device

    try:
        resolve_device(device)
    except (RuntimeError, ValueError) as exc:
        problems.append(f"{key}={device!r}: {exc} (valid: auto, cpu, cuda, cuda:<index>)")


def _specify_lambda(value: Any, problems: Problems) -> float | None:
    if value is None:
        return None
    if not math.isfinite(value) or value <= 0:
        problems.append(f"specify_lambda must be a positive finite number (the paper uses 1.0 for TSVM) or null, "
                        f"got {value}")
        return None
    return float(value)


# ------------------------------------------------------------------------------------------------------ the run

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
    datasets = _datasets(values, problems, model.benchmark if model is not None else "paper")
    if model is not None and method is not None and datasets:
        _check_benchmark_defaults(method, model.name, len(datasets), problems)
    check_minimums(values, RunSchema, problems)
    specify_lambda = _specify_lambda(values.get("specify_lambda"), problems)
    check_device(str(values["device"]), problems)
    for key in ("data_location", "model_location", "results_dir", "cache_dir", "ft_accuracies"):
        if not str(values.get(key) or "").strip():
            problems.append(f"{key} must be a path")
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
        wandb=wandb_settings(values["wandb"]),
    )


def dataset_names(values: Sequence[str] | None) -> list[str] | None:
    """A task list given on a command line: ``MNIST,Cars`` items split, ``Val`` suffixes removed."""
    if not values:
        return None
    return [n.strip().removesuffix("Val") for v in values for n in str(v).split(",") if n.strip()]

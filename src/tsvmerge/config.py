"""The run configuration of ``main.py``: validated before any work starts.

Two checks, both ending in a message that lists the valid choices:

- :func:`check_overrides` looks at the command line before Hydra composes the config, so that an unknown key
  (``method.k=5`` for a method without ``k``) or an unknown choice (``method=foo``) is reported with the valid
  keys / options instead of Hydra's bare "Key 'k' is not in struct";
- :func:`settings_from_config` turns the composed config into :class:`RunSettings`, rejecting unknown keys (added
  with ``+key=``), unknown methods and method parameters, ``num_tasks`` outside 1..20, unknown dataset names and
  malformed values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .evaluation.tracking import WANDB_MODES, WandbSettings
from .models.factory import ModelSpec

__all__ = [
    "CACHE_POLICIES",
    "ConfigError",
    "METHOD_META_KEYS",
    "MODEL_KEYS",
    "PRECISIONS",
    "RunSettings",
    "TOP_LEVEL_KEYS",
    "WANDB_KEYS",
    "check_overrides",
    "method_config_keys",
    "settings_from_config",
]


class ConfigError(ValueError):
    """The configuration is invalid; the message says what is valid."""


def _ties_suffix(use_ties: Any, agg: Any) -> str:
    """``${ties_suffix:${method.use_ties},${method.ties_agg}}``: '' or '_use_ties_<agg>' (TALL-mask file naming)."""
    return f"_use_ties_{agg}" if str(use_ties).lower() == "true" else ""


OmegaConf.register_new_resolver("ties_suffix", _ties_suffix, replace=True)


GROUPS = ("model", "method")
TOP_LEVEL_KEYS = (
    "model", "method", "num_tasks", "DATASETS", "specify_lambda", "n_eval_points", "device", "precision",
    "channels_last", "batch_size", "num_workers", "data_location", "model_location", "results_dir",
    "save_subfolder", "result_suffix", "ft_accuracies", "eval_cache", "cache_dir", "progress", "wandb",
)
MODEL_KEYS = ("name", "arch", "quick_gelu", "pretrained", "open_clip_config", "cache_dir", "benchmark", "finetuning")
WANDB_KEYS = ("mode", "project", "entity", "group")
METHOD_META_KEYS = ("name", "full_name")
PRECISIONS = ("bf16", "fp16", "fp32")
CACHE_POLICIES = ("memory", "disk", "none")


def method_config_keys(name: str) -> list[str]:
    """Keys a ``config/method/<name>.yaml`` may hold: name, full_name, the engine's parameters (+ load_mask)."""
    from .merging import method_parameters

    extra = ["load_mask"] if name == "tall_mask" else []
    return [*METHOD_META_KEYS, *extra, *method_parameters(name)]


@dataclass(frozen=True)
class RunSettings:
    """Everything ``main.py`` needs, validated and typed."""

    model: ModelSpec
    method: str
    method_full_name: str
    method_params: dict[str, Any]
    datasets: list[str]
    load_mask: bool = False
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
        from .data import benchmark_tasks

        return tuple(self.datasets) == benchmark_tasks(self.model.benchmark)[: self.num_tasks]


# --------------------------------------------------------------------------------------------- composed config


def _none(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in {"none", "null", ""})


def _listing(values: Sequence[str]) -> str:
    return ", ".join(values)


def _as_plain(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(cfg, DictConfig):
        try:
            plain = OmegaConf.to_container(cfg, resolve=True)
        except OmegaConfBaseException as exc:
            raise ConfigError(f"cannot resolve the configuration: {exc}") from exc
    else:
        plain = dict(cfg)
    assert isinstance(plain, dict)
    plain.pop("hydra", None)
    return plain


class _Problems(list):
    def check_keys(self, section: Mapping[str, Any], valid: Sequence[str], where: str) -> None:
        unknown = [k for k in section if k not in valid]
        if unknown:
            self.append(f"unknown {where} key{'s' if len(unknown) > 1 else ''} {_listing(unknown)}; "
                        f"valid {where} keys: {_listing(valid)}")


def _int(value: Any, key: str, problems: _Problems, minimum: int | None = None) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        else:
            problems.append(f"{key} must be an integer, got {value!r}")
            return None
    if minimum is not None and value < minimum:
        problems.append(f"{key} must be at least {minimum}, got {value}")
        return None
    return value


def _bool(value: Any, key: str, problems: _Problems) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"true", "false"}:
        return value.lower() == "true"
    problems.append(f"{key} must be true or false, got {value!r}")
    return False


def _choice(value: Any, key: str, valid: Sequence[str], problems: _Problems) -> str:
    if value not in valid:
        problems.append(f"{key}={value!r} is not valid; choose one of: {_listing(valid)}")
    return str(value)


def _datasets(plain: Mapping[str, Any], problems: _Problems, benchmark: str) -> list[str]:
    from .data import REGISTRY, benchmark_tasks, task_list

    listed = plain.get("DATASETS")
    tasks = benchmark_tasks(benchmark)
    valid = f"valid dataset names: {_listing(tasks)}" + (
        f" (and any of {_listing([d for d in REGISTRY if d not in tasks])})" if len(REGISTRY) > len(tasks) else "")
    if not _none(listed) and listed != []:
        if isinstance(listed, str):
            listed = [s.strip() for s in listed.split(",") if s.strip()]
        if not isinstance(listed, list) or not all(isinstance(d, str) for d in listed):
            problems.append(f"DATASETS must be a list of dataset names, e.g. DATASETS=[MNIST,Cars]; {valid}")
            return []
        with_val = [d for d in listed if d.endswith("Val")]
        if with_val:
            problems.append(f"DATASETS lists base names (their <Dataset>Val splits are used for validation): "
                            f"remove 'Val' from {_listing(with_val)}")
            return []
        try:
            return task_list(datasets=listed)
        except ValueError as exc:
            unknown = [d for d in listed if d not in REGISTRY]
            problems.append(f"unknown dataset{'s' if len(unknown) > 1 else ''} {_listing(unknown)}; {valid}"
                            if unknown else str(exc))
            return []
    n = plain.get("num_tasks")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(tasks):
        paper = " (8, 14 and 20 are the paper's benchmarks)" if benchmark == "paper" else ""
        problems.append(f"num_tasks must be an integer in 1..{len(tasks)}{paper}, got {n!r}; "
                        "or list the tasks with DATASETS=[...]")
        return []
    return task_list(num_tasks=n, benchmark=benchmark)


def _model(section: Any, problems: _Problems) -> ModelSpec | None:
    if not isinstance(section, Mapping):
        problems.append(f"model must be a model config (config/model/<name>.yaml), got {section!r}")
        return None
    problems.check_keys(section, MODEL_KEYS, "model")
    name = section.get("name")
    if not isinstance(name, str) or not name or "/" in name:
        problems.append(f"model.name must be a model name (one path component), got {name!r}")
        return None
    pretrained = section.get("pretrained")
    arch = section.get("arch")
    oc_cfg = section.get("open_clip_config")
    if oc_cfg is not None and not isinstance(oc_cfg, Mapping):
        problems.append("model.open_clip_config must be a mapping (an open_clip model config) or null")
        oc_cfg = None
    from .data import BENCHMARKS

    benchmark = str(section.get("benchmark") or "paper")
    if benchmark not in BENCHMARKS:
        problems.append(f"model.benchmark={benchmark!r} is not valid; choose one of: {_listing(BENCHMARKS)}")
        benchmark = "paper"
    finetuning = section.get("finetuning")
    if finetuning is not None:
        from .training.protocol import check_protocol_overrides

        if not isinstance(finetuning, Mapping):
            problems.append("model.finetuning must be a mapping of fine-tuning settings or null")
            finetuning = None
        else:
            problems.extend(f"model.finetuning: {p}" for p in check_protocol_overrides(finetuning))
    return ModelSpec(
        name=name,
        arch=None if _none(arch) else str(arch),
        quick_gelu=_bool(section.get("quick_gelu", False), "model.quick_gelu", problems),
        pretrained=None if _none(pretrained) else str(pretrained),
        open_clip_config=oc_cfg,
        cache_dir=None if _none(section.get("cache_dir")) else str(section.get("cache_dir")),
        benchmark=benchmark,
        finetuning=finetuning,
    )


def _method(section: Any, problems: _Problems) -> tuple[str, str, dict[str, Any], bool]:
    from .merging import available_methods, build_method, method_parameters

    if not isinstance(section, Mapping) or "name" not in section:
        problems.append(f"method must be a method config with a name; available methods: "
                        f"{_listing(available_methods())}")
        return "", "", {}, False
    name = section["name"]
    if name not in available_methods():
        problems.append(f"unknown method {name!r}; available methods: {_listing(available_methods())}")
        return "", "", {}, False
    problems.check_keys(section, method_config_keys(name), f"method {name}")
    engine_keys = method_parameters(name)
    params = {k: v for k, v in section.items() if k in engine_keys}
    try:
        build_method(name, params)
    except ValueError as exc:
        problems.append(f"method {name}: {exc}")
    load_mask = _bool(section.get("load_mask", False), "method.load_mask", problems)
    full_name = section.get("full_name") or name
    if not isinstance(full_name, str) or "/" in full_name:
        problems.append(f"method.full_name must be a file-name part, got {full_name!r}")
        full_name = name
    return name, full_name, params, load_mask


def settings_from_config(cfg: DictConfig | Mapping[str, Any]) -> RunSettings:
    """Validate the composed Hydra config; raise one ConfigError listing every problem and the valid choices."""
    plain = _as_plain(cfg)
    problems = _Problems()
    problems.check_keys(plain, TOP_LEVEL_KEYS, "top-level config")
    model = _model(plain.get("model"), problems)
    method, full_name, params, load_mask = _method(plain.get("method"), problems)
    datasets = _datasets(plain, problems, model.benchmark if model is not None else "paper")

    specify_lambda = plain.get("specify_lambda")
    if _none(specify_lambda):
        specify_lambda = None
    else:
        try:
            specify_lambda = float(specify_lambda)
        except (TypeError, ValueError):
            problems.append(f"specify_lambda must be a number or null, got {specify_lambda!r}")
            specify_lambda = None

    device = str(plain.get("device", "auto"))
    try:
        from .utils.device import resolve_device

        resolve_device(device)
    except (RuntimeError, ValueError) as exc:
        problems.append(f"device={device!r}: {exc} (valid: auto, cpu, cuda, cuda:<index>)")

    num_workers = plain.get("num_workers")
    num_workers = None if _none(num_workers) else _int(num_workers, "num_workers", problems, 0)
    wandb_section = plain.get("wandb") or {}
    if not isinstance(wandb_section, Mapping):
        problems.append("wandb must be a mapping with keys " + _listing(WANDB_KEYS))
        wandb_section = {}
    problems.check_keys(wandb_section, WANDB_KEYS, "wandb")
    wandb = WandbSettings(
        mode=_choice(wandb_section.get("mode", "disabled"), "wandb.mode", WANDB_MODES, problems),
        project=str(wandb_section.get("project") or "tsvmerge"),
        entity=None if _none(wandb_section.get("entity")) else str(wandb_section.get("entity")),
        group=None if _none(wandb_section.get("group")) else str(wandb_section.get("group")),
    )
    for key in ("data_location", "model_location", "results_dir", "cache_dir", "ft_accuracies"):
        if _none(plain.get(key)):
            problems.append(f"{key} must be a path")
    suffix = plain.get("result_suffix")
    settings = dict(
        specify_lambda=specify_lambda,
        n_eval_points=_int(plain.get("n_eval_points", 31), "n_eval_points", problems, 2) or 31,
        device=device,
        precision=_choice(plain.get("precision", "bf16"), "precision", PRECISIONS, problems),
        channels_last=_bool(plain.get("channels_last", True), "channels_last", problems),
        batch_size=_int(plain.get("batch_size", 128), "batch_size", problems, 1) or 128,
        num_workers=num_workers,
        data_location=Path(str(plain.get("data_location"))).expanduser(),
        model_location=Path(str(plain.get("model_location"))).expanduser(),
        results_dir=Path(str(plain.get("results_dir"))).expanduser(),
        save_subfolder=str(plain.get("save_subfolder") or ""),
        result_suffix=None if _none(suffix) else str(suffix),
        ft_accuracies=Path(str(plain.get("ft_accuracies"))).expanduser(),
        eval_cache=_choice(plain.get("eval_cache", "memory"), "eval_cache", CACHE_POLICIES, problems),
        cache_dir=Path(str(plain.get("cache_dir"))).expanduser(),
        progress=_bool(plain.get("progress", True), "progress", problems),
        wandb=wandb,
    )
    if load_mask and method != "tall_mask":
        problems.append("method.load_mask applies to method=tall_mask only")
    if problems or model is None:
        raise ConfigError("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))
    return RunSettings(model=model, method=method, method_full_name=full_name, method_params=params,
                       datasets=datasets, load_mask=load_mask, **settings)


# ------------------------------------------------------------------------------------------------ command line

# Hydra flags that take a value (the value is not an override).
_FLAGS_WITH_VALUE = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--cfg", "-c",
                     "--package", "-p", "--experimental-rerun"}


def _split_argv(argv: Sequence[str]) -> tuple[list[str], list[Path], str]:
    overrides, config_dirs, config_name = [], [], "config"
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("-"):
            flag, eq, value = arg.partition("=")
            if flag in _FLAGS_WITH_VALUE:
                if not eq:
                    i += 1
                    value = args[i] if i < len(args) else ""
                if flag in {"--config-dir", "-cd"}:
                    config_dirs.append(Path(value))
                elif flag in {"--config-name", "-cn"}:
                    config_name = value
            elif flag == "--info" and not eq and i + 1 < len(args) and "=" not in args[i + 1]:
                i += 1
        else:
            overrides.append(arg)
        i += 1
    return overrides, config_dirs, config_name


def _group_options(dirs: Sequence[Path], group: str) -> list[str]:
    names = {p.stem for d in dirs for p in (d / group).glob("*.yaml")} if dirs else set()
    return sorted(names, key=str.lower)


def _group_file(dirs: Sequence[Path], group: str, option: str) -> Path | None:
    for d in dirs:
        path = d / group / f"{option}.yaml"
        if path.is_file():
            return path
    return None


def check_overrides(argv: Sequence[str], config_dir: str | Path) -> None:
    """Reject unknown override keys / group options on the command line, listing the valid ones.

    Only plain assignments (``key=value``) are checked; ``+key`` additions are checked after composition by
    :func:`settings_from_config`, and anything this function cannot parse is left to Hydra.
    """
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from hydra.core.override_parser.types import OverrideType

        overrides_text, extra_dirs, config_name = _split_argv(argv)
        overrides = OverridesParser.create().parse_overrides(overrides_text)
        dirs = [*extra_dirs, Path(config_dir)]
        primary = _group_file(dirs, ".", config_name) or Path(config_dir) / f"{config_name}.yaml"
        primary_cfg = OmegaConf.load(primary)
    except Exception:  # noqa: BLE001 - unparsable input: Hydra reports it
        return
    defaults: dict[str, str] = {}
    for entry in primary_cfg.get("defaults", []) or []:
        if isinstance(entry, Mapping | DictConfig):
            for group, option in entry.items():
                if group in GROUPS and isinstance(option, str):
                    defaults[group] = option
    problems: list[str] = []
    choices = dict(defaults)
    for o in overrides:
        if o.type == OverrideType.CHANGE and o.key_or_group in GROUPS and not o.is_sweep_override():
            choices[o.key_or_group] = str(o.value())
    for group, option in choices.items():
        if _group_file(dirs, group, option) is None:
            problems.append(f"unknown {group} {option!r}; available: {_listing(_group_options(dirs, group))}")
    primary_plain = OmegaConf.to_container(primary_cfg, resolve=False)
    top_keys = [str(k) for k in primary_plain if k != "defaults"]
    for o in overrides:
        if o.type != OverrideType.CHANGE or o.package:
            continue
        parts = o.key_or_group.split(".")
        if parts[0] == "hydra":
            continue
        if parts[0] in GROUPS:
            if len(parts) == 1:
                continue
            option_file = _group_file(dirs, parts[0], choices.get(parts[0], ""))
            if option_file is None:
                continue
            valid = [str(k) for k in OmegaConf.load(option_file).keys()]
            if parts[1] not in valid:
                problems.append(f"unknown key {o.key_or_group!r} for {parts[0]}={choices[parts[0]]}; valid "
                                f"{parts[0]} keys: {_listing(valid)}")
            continue
        if parts[0] not in top_keys:
            problems.append(f"unknown config key {parts[0]!r}; valid keys: {_listing([*GROUPS, *top_keys])}")
            continue
        node: Any = primary_plain
        for depth, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                where = ".".join(parts[:depth]) or "top-level"
                valid = [str(k) for k in node] if isinstance(node, dict) else []
                problems.append(f"unknown config key {o.key_or_group!r}; valid {where} keys: {_listing(valid)}")
                break
            node = node[part]
    if problems:
        raise ConfigError("invalid command line:\n" + "\n".join(f"  - {p}" for p in problems))


def load_model_spec(name: str, config_dirs: Sequence[str | Path], path: str | Path | None = None) -> ModelSpec:
    """``config/model/<name>.yaml`` (first found in ``config_dirs``), or the model yaml at ``path``."""
    dirs = [Path(d) for d in config_dirs]
    file = Path(path) if path is not None else _group_file(dirs, "model", name)
    if file is None or not file.is_file():
        where = str(path) if path is not None else f"model/{name}.yaml in {', '.join(map(str, dirs))}"
        raise ConfigError(f"unknown model {name!r} ({where} not found); available: "
                          f"{_listing(_group_options(dirs, 'model'))}")
    try:
        section = OmegaConf.to_container(OmegaConf.load(file), resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot read {file}: {exc}") from exc
    problems = _Problems()
    spec = _model(section, problems)
    if problems or spec is None:
        raise ConfigError(f"invalid model config {file}:\n" + "\n".join(f"  - {p}" for p in problems))
    return spec

"""Composing a configuration the way Hydra does, with errors that say what is valid.

Every entry point reads its configuration through :func:`compose_config`: Hydra composes the YAML files of the
entry point's ``config/`` folder (plus any ``--config-dir``) on the schema of :mod:`tsvmerge.config.schema`, applying
the overrides. ``main.py`` and ``analyze.py`` then hand the same command line to ``@hydra.main`` (multirun,
launchers, run folders); :func:`check_command_line` composes every job of it first, so that a mistake stops the run
before any work, with exit status 2 and a message listing the valid keys or values, instead of Hydra's traceback-like
report after the launcher started.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError
from .store import register_configs

__all__ = [
    "ConfigSource",
    "check_command_line",
    "compose_config",
    "explain",
    "run_checked_app",
    "section_values",
    "split_command_line",
    "to_container",
]


@dataclass(frozen=True)
class ConfigSource:
    """Where an entry point's YAML files are: its own ``config/`` folder, and extra folders searched first
    (``--config-dir``; they may add models, methods or analyses)."""

    config_dir: Path | None
    extra_dirs: tuple[Path, ...] = field(default=())

    def with_extra(self, dirs: Sequence[str | Path]) -> ConfigSource:
        return ConfigSource(self.config_dir, (*self.extra_dirs, *(Path(d).resolve() for d in dirs)))

    @property
    def search_dirs(self) -> list[Path]:
        return [*self.extra_dirs, *([self.config_dir] if self.config_dir is not None else [])]

    def options(self, group: str) -> list[str]:
        """The YAML configs of ``group`` (``model``, ``method``, ``analysis``) in every folder."""
        names = {p.stem for d in self.search_dirs for p in (d / group).glob("*.yaml")}
        return sorted(names, key=str.lower)


def _searchpath_override(source: ConfigSource) -> list[str]:
    if not source.extra_dirs:
        return []
    return ["hydra.searchpath=[" + ",".join(f"'file://{d}'" for d in source.extra_dirs) + "]"]


def compose_config(source: ConfigSource, config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The composed configuration ``config_name`` with ``overrides`` applied (Hydra's own composition).

    Inside a running Hydra application (``@hydra.main``) the application's search path is used; elsewhere a
    Hydra context is opened for the call and closed again, so no global state is left behind. Without a config
    folder (``source.config_dir`` None: an installed command), only the schemas of the ConfigStore are found.
    """
    from hydra import compose, initialize, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    overrides = [*_searchpath_override(source), *overrides]
    try:
        if GlobalHydra.instance().is_initialized():
            return compose(config_name=config_name, overrides=overrides)
        if source.config_dir is None:
            with initialize(config_path=None, version_base=None):
                return compose(config_name=config_name, overrides=overrides)
        with initialize_config_dir(config_dir=str(Path(source.config_dir).resolve()), version_base=None):
            return compose(config_name=config_name, overrides=overrides)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - every composition error becomes one readable ConfigError
        raise ConfigError(explain(exc, source)) from None


def _node_keys(node: Any) -> list[str]:
    if isinstance(node, DictConfig):
        return [str(k) for k in node.keys()]
    return []


def explain(exc: BaseException, source: ConfigSource | None = None) -> str:
    """One message for a Hydra / OmegaConf composition error: the key, what is wrong, what is valid."""
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(exc, MissingConfigException):
        missing = exc.missing_cfg_file or ""
        group, _, option = missing.rpartition("/")
        if group and exc.options is not None:
            return f"unknown {group} {option!r}; available: {', '.join(sorted(exc.options, key=str.lower))}"
        return str(exc).split("\n")[0]
    if isinstance(exc, OverrideParseException):
        return f"cannot parse the override: {str(exc).splitlines()[0]}"
    for cause in (exc, exc.__cause__, exc.__context__):
        if isinstance(cause, OmegaConfBaseException) and cause.full_key:
            return _explain_omegaconf(cause)
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    # "In 'model/bad': ValidationError raised while composing config:" / message / "full_key: model.quick_gelu"
    keys = [line.removeprefix("full_key:").strip() for line in lines if line.startswith("full_key:")]
    details = [line for line in lines[1:] if not line.startswith(("full_key:", "reference_type=", "object_type="))]
    if "raised while composing" in lines[0] and details:
        where = lines[0].split("'")[1] if lines[0].count("'") >= 2 else ""
        return f"{where}: {keys[0] + ': ' if keys and keys[0] else ''}{details[0]}"
    return lines[0]


def _explain_omegaconf(exc: OmegaConfBaseException) -> str:
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    key = exc.full_key
    parent = exc.parent_node
    msg = (exc.msg or "").split("\n")[0]
    if isinstance(exc, ConfigAttributeError | ConfigKeyError):
        where, _, _ = key.rpartition(".")
        valid = [k for k in _node_keys(parent) if k != "hydra"]
        chosen = ""
        if where in ("method", "analysis") and isinstance(parent, DictConfig) and "name" in parent:
            chosen = f" for {where}={parent['name']}"
        what = f"{where} keys" if where else "keys"
        return f"unknown {'key' if chosen else 'config key'} {key!r}{chosen}; valid {what}: {', '.join(valid)}"
    if isinstance(exc, ValidationError):
        return f"{key}: {msg}"
    return f"{key}: {msg}" if msg else str(exc)


# ------------------------------------------------------------------------------------------------ command lines

#: Hydra flags that take a value.
_FLAGS_WITH_VALUE = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--cfg", "-c",
                     "--package", "-p", "--experimental-rerun", "--info", "-i"}
#: Hydra flags after which no job runs (help, completion): nothing to check.
_NO_RUN_FLAGS = {"--help", "-h", "--hydra-help", "--version", "--shell-completion", "-sc", "--info", "-i"}


@dataclass
class CommandLine:
    """A Hydra application's command line, split: overrides, extra config folders, primary config name."""

    overrides: list[str]
    config_dirs: list[Path]
    config_name: str | None
    runs_jobs: bool


def split_command_line(argv: Sequence[str]) -> CommandLine:
    overrides: list[str] = []
    dirs: list[Path] = []
    name = None
    runs = True
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("-"):
            flag, eq, value = arg.partition("=")
            runs = runs and flag not in _NO_RUN_FLAGS
            if flag in _FLAGS_WITH_VALUE:
                if not eq:
                    takes_value = flag not in {"--info", "-i"} or (i + 1 < len(args) and "=" not in args[i + 1])
                    if takes_value:
                        i += 1
                        value = args[i] if i < len(args) else ""
                if flag in {"--config-dir", "-cd"}:
                    dirs.append(Path(value))
                elif flag in {"--config-name", "-cn"}:
                    name = value
        else:
            overrides.append(arg)
        i += 1
    return CommandLine(overrides, dirs, name, runs)


def _jobs(overrides: Sequence[str]) -> list[list[str]]:
    """Each job's overrides of a (multi)run command line: sweeps (``a=1,2``, ``range(...)``) expanded."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as exc:
        raise ConfigError(f"cannot parse the command line: {str(exc).splitlines()[0]}") from None
    choices: list[list[str]] = []
    for o in parsed:
        if o.is_sweep_override():
            try:
                prefix = o.get_key_element()
                choices.append([f"{prefix}={value}" for value in o.sweep_string_iterator()])
            except Exception:  # noqa: BLE001 - sweeps Hydra cannot enumerate (intervals): checked in the job
                continue
        else:
            choices.append([o.input_line])
    return [list(combo) for combo in itertools.product(*choices)]


def check_command_line(argv: Sequence[str], source: ConfigSource, config_name: str,
                       validate: Callable[[DictConfig], Any] | None = None) -> None:
    """Compose every job of the command line (and ``validate`` each composed config): raise one ConfigError
    listing every problem before Hydra launches anything."""
    line = split_command_line(argv)
    if not line.runs_jobs:
        return
    source = source.with_extra(line.config_dirs)
    problems: list[str] = []
    for job in _jobs(line.overrides):
        try:
            cfg = compose_config(source, line.config_name or config_name, job)
            if validate is not None:
                validate(cfg)
        except ConfigError as exc:
            text = str(exc).removeprefix("invalid configuration:\n")
            for problem in text.splitlines():
                problem = problem.strip().removeprefix("- ")
                if problem and problem not in problems:
                    problems.append(problem)
    if problems:
        raise ConfigError("invalid command line:\n" + "\n".join(f"  - {p}" for p in problems))


def section_values(schema: type, section: Mapping[str, Any] | DictConfig) -> tuple[dict[str, Any], list[str]]:
    """``section`` (a config node or a mapping) on ``schema``: its values typed by the schema (defaults filled in),
    and the keys the schema does not know, left out for the caller to report in its own terms. A value of the wrong
    type raises ConfigError naming the key."""
    plain = to_container(section) if isinstance(section, DictConfig) else dict(section)
    known = {f.name for f in dataclasses.fields(schema)}
    unknown = [str(k) for k in plain if k not in known]
    try:
        typed = OmegaConf.merge(OmegaConf.structured(schema), {k: v for k, v in plain.items() if k in known})
    except OmegaConfBaseException as exc:
        raise ConfigError(explain(exc)) from None
    return to_container(typed), unknown


def to_container(cfg: DictConfig | ListConfig) -> Any:
    """Plain Python values (Enums as their values), interpolations resolved."""
    try:
        return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(explain(exc)) from None


def run_checked_app(prog: str, app: Callable[[], Any], source: ConfigSource, config_name: str,
                    validate: Callable[[DictConfig], Any]) -> int:
    """Run a ``@hydra.main`` application ``app`` after :func:`check_command_line` accepted every job of
    ``sys.argv``; both through :func:`tsvmerge.utils.entry_point.run_main`. Returns the exit status."""
    import sys

    from ..utils.entry_point import run_main

    register_configs()
    code = run_main(prog, lambda: check_command_line(sys.argv[1:], source, config_name, validate=validate))
    return code or run_main(prog, app)

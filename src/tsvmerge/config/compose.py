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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError
from .store import register_configs

__all__ = [
    "ConfigSource",
    "app_command_line",
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
    (``--config-dir``; they may add models, methods or analyses, or replace the primary config, e.g. config.yaml)."""

    config_dir: Path | None
    extra_dirs: tuple[Path, ...] = field(default=())
    #: ``(group, name, schema)`` of the methods and analyses the YAML files refer to (``/schema/method/<name>``),
    #: computed when a configuration is composed, so that methods registered since are included.
    schemas: Callable[[], Iterable[tuple[str, str, type]]] | None = None

    def with_extra(self, dirs: Sequence[str | Path]) -> ConfigSource:
        """This source with ``dirs`` (``--config-dir`` values) searched before it; each must be an existing folder,
        since a mistyped one would otherwise be skipped without a word and the packaged configs used instead."""
        for given in dirs:
            path = Path(given)
            if not path.is_dir():
                what = "is a file, not a folder" if path.exists() else "does not exist"
                raise ConfigError(f"--config-dir {str(given)!r} {what}; give a folder of config files (e.g. holding "
                                  "config.yaml or model/<name>.yaml)")
        return ConfigSource(self.config_dir, (*self.extra_dirs, *(Path(d).resolve() for d in dirs)), self.schemas)

    def register(self) -> None:
        """Put the primary schemas and this source's method and analysis schemas in Hydra's ConfigStore."""
        register_configs(self.schemas() if self.schemas is not None else ())

    @property
    def search_dirs(self) -> list[Path]:
        """Every folder, in search order: the extra ones first, then the entry point's own."""
        return [*self.extra_dirs, *([self.config_dir] if self.config_dir is not None else [])]

    def options(self, group: str) -> list[str]:
        """The YAML configs of ``group`` (``model``, ``method``, ``analysis``) in every folder."""
        names = {p.stem for d in self.search_dirs for p in (d / group).glob("*.yaml")}
        return sorted(names, key=str.lower)


def _searchpath_override(dirs: Sequence[str]) -> list[str]:
    """The ``hydra.searchpath`` override appending ``dirs`` (``file://`` URLs) to Hydra's search path."""
    if not dirs:
        return []
    return ["hydra.searchpath=[" + ",".join(f"'{d}'" for d in dirs) + "]"]


def _file_urls(dirs: Sequence[Path]) -> list[str]:
    return [f"file://{Path(d).resolve()}" for d in dirs]


@dataclass(frozen=True)
class _Layout:
    """The folders of a source as Hydra's search path takes them: its primary folder, the one right after it (where
    Hydra puts a ``--config-dir``) and the rest (``hydra.searchpath``, searched after both)."""

    primary: Path
    second: Path | None
    rest: list[Path]


def _layout(source: ConfigSource, config_name: str) -> _Layout | None:
    """Where each folder of ``source`` goes so that Hydra searches them in order (None: no folder).

    Hydra looks for a primary config (``config_name``.yaml) in its first two folders only, never in
    ``hydra.searchpath``: the first folder that has it is made the second one when it comes later. The order is
    then exact, except that such a folder moves ahead of the folders between it and the first.
    """
    dirs = [d.resolve() for d in source.search_dirs]
    if not dirs:
        return None
    holder = next((i for i, d in enumerate(dirs) if (d / f"{config_name}.yaml").is_file()), 0)
    second = dirs[holder] if holder > 1 else dirs[1] if len(dirs) > 1 else None
    return _Layout(dirs[0], second, [d for d in dirs[1:] if d != second])


@contextmanager
def _hydra_context(layout: _Layout) -> Iterator[None]:
    """A Hydra context over ``layout``'s first two folders, closed (the previous global state restored) on exit."""
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(layout.primary), version_base=None):
        if layout.second is not None:
            # What Hydra's own --config-dir does to an application's search path; the compose API has no option
            # for it, so the context is made again with that search path.
            from hydra._internal.hydra import Hydra
            from hydra.core.config_search_path import SearchPathQuery
            from hydra.core.global_hydra import GlobalHydra

            search_path = GlobalHydra.instance().config_loader().get_search_path()
            search_path.prepend(provider="command-line", path=f"file://{layout.second}",
                                anchor=SearchPathQuery(provider="schema"))
            GlobalHydra.instance().clear()
            Hydra.create_main_hydra2(task_name="app", config_search_path=search_path)
        yield


def _running_app_searchpath(source: ConfigSource) -> list[str]:
    """Inside a running ``@hydra.main`` application: the application's own ``hydra.searchpath`` (where
    :func:`run_checked_app` put the folders after the first two), then ``source``'s folders not yet in it."""
    from hydra.core.hydra_config import HydraConfig

    current = [str(p) for p in HydraConfig.get().searchpath] if HydraConfig.initialized() else []
    return [*current, *(url for url in _file_urls(source.search_dirs) if url not in current)]


def compose_config(source: ConfigSource, config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The composed configuration ``config_name`` with ``overrides`` applied (Hydra's own composition).

    The folders are searched in the order of ``source.search_dirs`` (see :func:`_layout`): a ``config_name``.yaml
    or a group option in an extra folder wins over the entry point's own. Inside a running Hydra application
    (``@hydra.main``) the application's search path is used, followed by ``source``'s folders; elsewhere a Hydra
    context is opened for the call and closed again, so no global state is left behind. Without any folder
    (``source.config_dir`` None: an installed command), only the schemas of the ConfigStore are found.
    """
    from hydra import compose, initialize
    from hydra.core.global_hydra import GlobalHydra

    source.register()
    try:
        if GlobalHydra.instance().is_initialized():
            return compose(config_name=config_name,
                           overrides=[*_searchpath_override(_running_app_searchpath(source)), *overrides])
        layout = _layout(source, config_name)
        if layout is None:
            with initialize(config_path=None, version_base=None):
                return compose(config_name=config_name, overrides=list(overrides))
        with _hydra_context(layout):
            return compose(config_name=config_name,
                           overrides=[*_searchpath_override(_file_urls(layout.rest)), *overrides])
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
    """A Hydra application's command line, split: overrides, extra config folders, primary config name.

    ``config_dir_args``: the positions in the command line of the ``--config-dir`` flags and their values;
    ``first_override``: the position of the first override (None: no override).
    """

    overrides: list[str]
    config_dirs: list[Path]
    config_name: str | None
    runs_jobs: bool
    config_dir_args: list[int] = field(default_factory=list)
    first_override: int | None = None


def split_command_line(argv: Sequence[str]) -> CommandLine:
    overrides: list[str] = []
    dirs: list[Path] = []
    dir_args: list[int] = []
    first_override = None
    name = None
    runs = True
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        start = i
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
                    dir_args.extend(range(start, min(i, len(args) - 1) + 1))
                elif flag in {"--config-name", "-cn"}:
                    name = value
        else:
            overrides.append(arg)
            first_override = i if first_override is None else first_override
        i += 1
    return CommandLine(overrides, dirs, name, runs, dir_args, first_override)


def app_command_line(argv: Sequence[str], source: ConfigSource, config_name: str) -> list[str]:
    """``argv`` rewritten so that Hydra's own parser searches the folders as :func:`compose_config` does.

    Hydra puts a ``--config-dir`` after the application's own folder, where neither its config.yaml nor its group
    options could replace the packaged ones. Instead the folders are laid out by :func:`_layout`: the first becomes
    the application's folder (``--config-path``), the second its ``--config-dir``, the rest ``hydra.searchpath``.
    Folders are checked as :meth:`ConfigSource.with_extra` does.
    """
    line = split_command_line(argv)
    if not line.config_dirs:
        return list(argv)
    layout = _layout(source.with_extra(line.config_dirs), line.config_name or config_name)
    assert layout is not None
    dropped = set(line.config_dir_args)
    kept = [arg for i, arg in enumerate(argv) if i not in dropped]
    searchpath = _searchpath_override(_file_urls(layout.rest))
    if line.first_override is None:
        kept += searchpath
    else:  # beside the other overrides: Hydra's parser takes them as one run of arguments
        at = line.first_override - sum(1 for i in dropped if i < line.first_override)
        kept[at:at] = searchpath
    second = [f"--config-dir={layout.second}"] if layout.second is not None else []
    return [f"--config-path={layout.primary}", *second, *kept]


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
    ``sys.argv``; both through :func:`tsvmerge.utils.entry_point.run_main`. Returns the exit status.

    The application sees the command line of :func:`app_command_line` (``sys.argv`` is restored afterwards), so
    that it composes exactly what was checked.
    """
    import sys

    from ..utils.entry_point import run_main

    source.register()
    code = run_main(prog, lambda: check_command_line(sys.argv[1:], source, config_name, validate=validate))
    if code:
        return code
    original = sys.argv
    sys.argv = [original[0], *app_command_line(original[1:], source, config_name)]
    try:
        return run_main(prog, app)
    finally:
        sys.argv = original

"""A method config (``config/method/<name>.yaml``, or ``--method NAME --set key=value``) read into a
:class:`MethodChoice`, checked against the method's generated schema and by the method itself.

The schema of each registered method is generated from its class (:func:`method_schemas`); the commands put them in
Hydra's ConfigStore through their :class:`~tsvmerge.config.ConfigSource`, so ``config/method/<name>.yaml`` finds
``/schema/method/<name>``.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..config.compose import section_values
from ..config.errors import ConfigError
from ..config.settings import Problems
from ..config.store import method_schema
from .entry_rules import EntryRules
from .registry import available_methods, build_method, method_class

__all__ = ["MethodChoice", "check_benchmark_defaults", "method_choice", "method_from_section", "method_schemas"]


@dataclass(frozen=True)
class MethodChoice:
    """The configured merge method: its registry name, the name of its result files and its parameters."""

    name: str
    full_name: str
    params: dict[str, Any]
    svd_keys: str | None = None  # entry-rule overrides (regular expressions), not method parameters
    average_keys: str | None = None


def method_schemas() -> list[tuple[str, str, type]]:
    """``(group, name, schema)`` of every registered method, for :class:`~tsvmerge.config.ConfigSource`."""
    return [("method", name, method_schema(method_class(name))) for name in available_methods()]


def method_from_section(section: Any, problems: Problems) -> MethodChoice | None:
    """The method config (``config/method/<name>.yaml`` plus overrides), checked against the method's schema and
    by the method itself (allowed values, ranges)."""
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


def check_benchmark_defaults(method: MethodChoice, model: str, num_tasks: int, problems: Problems) -> None:
    """Methods whose defaults depend on the model and task count (CART's published settings) must have them."""
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

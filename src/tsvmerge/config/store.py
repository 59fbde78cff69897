"""Registering the schema in Hydra's ConfigStore, where the YAML files of ``config/`` find it.

Called by :func:`tsvmerge.config.compose.compose_config` before composing; importing this module registers nothing.
The per-method and per-analysis schemas are generated (:func:`method_schema`, :func:`analysis_schema`) from the method
classes and the analyses' parameter dataclasses, which the commands hand over through their
:class:`~tsvmerge.config.ConfigSource`; so a new method or analysis needs no schema of its own: its YAML file names
``/schema/method/<name>@_here_`` (or ``/schema/analysis/<name>@_here_``) in its defaults list.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Iterable
from typing import Any, Optional

from . import schema

__all__ = ["PRIMARY_SCHEMAS", "analysis_schema", "method_schema", "register_configs"]

#: name in the ConfigStore -> schema of an entry point's primary config (``config/<file>.yaml`` defaults list).
PRIMARY_SCHEMAS: dict[str, type] = {
    "main_schema": schema.MergeEvalSchema,
    "analyze_schema": schema.AnalyzeSchema,
    "finetune_schema": schema.FinetuneSchema,
    "eval_single_task_schema": schema.EvalSingleTaskSchema,
    "demo_schema": schema.DemoSchema,
    "report_schema": schema.ReportSchema,
}


def _config_type(annotation: Any) -> Any:
    """The OmegaConf-supported form of a parameter's annotation (Literal choices become str, checked later by the
    method itself; unions other than Optional become Any)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return str
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        inner = _config_type(args[0]) if len(args) == 1 else Any
        return Optional[inner] if type(None) in typing.get_args(annotation) else inner  # noqa: UP007
    if annotation in (bool, int, float, str):
        return annotation
    return Any


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return "???"


def _schema_of(cls: type, leading: list[tuple[str, Any, Any]]) -> type:
    """A structured config with the ``leading`` fields, then one field per constructor field of dataclass ``cls``
    (its default, its annotation in the form OmegaConf supports)."""
    hints = typing.get_type_hints(cls)
    fields = list(leading)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = _default(f)
        value = dataclasses.field(default_factory=lambda d=default: d) if isinstance(default, list | dict) \
            else dataclasses.field(default=default)
        fields.append((f.name, _config_type(hints[f.name]), value))
    return dataclasses.make_dataclass(f"{cls.__name__}Config", fields)


# Generated once per class: every configuration a command composes lists every method and analysis schema.
@functools.cache
def method_schema(cls: type) -> type:
    """The structured config of a merge method: ``name``, ``full_name``, the entry-rule overrides ``svd_keys`` /
    ``average_keys`` (regular expressions, :mod:`tsvmerge.merging.entry_rules`) and the method's own parameters."""
    return _schema_of(cls, [("name", str, dataclasses.field(default=cls.name)),
                            ("full_name", Optional[str], dataclasses.field(default=None)),  # noqa: UP007
                            ("svd_keys", Optional[str], dataclasses.field(default=None)),  # noqa: UP007
                            ("average_keys", Optional[str], dataclasses.field(default=None))])  # noqa: UP007


@functools.cache
def analysis_schema(name: str, params: type) -> type:
    """The structured config of an analysis: ``name`` and its parameter dataclass' fields."""
    return _schema_of(params, [("name", str, dataclasses.field(default=name))])


def register_configs(schemas: Iterable[tuple[str, str, type]] = ()) -> None:
    """Store the primary schemas, and ``schemas`` (``(group, name, schema)``: one per method and analysis, given by
    the commands through their :class:`~tsvmerge.config.ConfigSource`), in Hydra's ConfigStore. Idempotent: what
    is already there is kept."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    stored = store.repo.get("schema", {})
    for name, node in PRIMARY_SCHEMAS.items():
        if f"{name}.yaml" not in store.repo:
            store.store(name=name, node=node)
    for group, name, node in schemas:  # schemas added since the last call (plug-in methods, tests) are stored
        known = stored.get(group, {}) if isinstance(stored, dict) else {}
        if f"{name}.yaml" not in known:
            store.store(group=f"schema/{group}", name=name, node=node)

"""Command-line flags (``--model=ViT-B-32 --train-dataset=MNIST,Cars``) as Hydra overrides of a schema.

finetune.py, eval_single_task.py and demo.py keep the spellings users know (the authors' scripts use argparse
flags), but a flag only *names* a schema key: its type, default and allowed values come from
:mod:`tsvmerge.config.schema`, and its value reaches the configuration as a Hydra override, composed like every
other entry point's. Plain overrides (``lr=2e-5``) are accepted too.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Flag", "add_flags", "flag_overrides", "group_flag", "quote"]

Kind = Literal["value", "list", "true", "false", "group"]


@dataclass(frozen=True)
class Flag:
    """``spellings`` set schema key ``key``: with a value (``value``), a comma-separated or repeated list
    (``list``), to true / false without a value (``true`` / ``false``), or as a config-group choice (``group``:
    ``--model=ViT-B-32`` selects ``config/model/ViT-B-32.yaml``)."""

    key: str
    spellings: tuple[str, ...]
    kind: Kind = "value"
    help: str | None = None


def _field(schema: type, key: str) -> dataclasses.Field | None:
    node: Any = schema
    found = None
    for part in key.split("."):
        fields = {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else {}
        found = fields.get(part)
        if found is None:
            return None
        default = found.default_factory() if found.default_factory is not dataclasses.MISSING else found.default
        node = type(default) if dataclasses.is_dataclass(default) else None
    return found


def _describe(schema: type, flag: Flag) -> str:
    f = _field(schema, flag.key)
    text = flag.help or (f.metadata.get("help", "") if f is not None else "")
    if f is None or flag.kind in ("true", "false", "group"):
        return text
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if isinstance(default, enum.Enum):
        choices = [m.name for m in type(default)]
        return f"{text} (one of {', '.join(choices)}; default {default.name})"
    if default is None or default is dataclasses.MISSING or isinstance(default, str) and default.startswith("${"):
        return text
    return f"{text} (default {default})"


def add_flags(parser: argparse.ArgumentParser, schema: type, flags: Iterable[Flag]) -> None:
    """Add ``flags`` to ``parser``; each stores nothing unless given, so defaults stay in the schema."""
    for flag in flags:
        kwargs: dict[str, Any] = {"dest": f"flag:{flag.key}", "default": argparse.SUPPRESS,
                                  "help": _describe(schema, flag)}
        if flag.kind == "true":
            kwargs.update(action="store_const", const=True)
        elif flag.kind == "false":
            kwargs.update(action="store_const", const=False)
        elif flag.kind == "list":
            kwargs.update(action="extend", nargs="+", metavar="NAME")
        else:
            kwargs.update(metavar=flag.key.removeprefix("group:").rpartition(".")[2].upper())
        parser.add_argument(*flag.spellings, **kwargs)


_SAFE = re.compile(r"[A-Za-z0-9_./+@-][A-Za-z0-9_./:+@-]*")
_KEYWORDS = {"null", "true", "false", "nan", "inf", "-inf"}


def quote(value: Any) -> str:
    """A value in Hydra's override grammar: strings that Hydra would read otherwise (spaces, commas, '=', brackets,
    quotes, keywords such as ``null``) are quoted, so that a path stays one string."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ",".join(quote(v) for v in value) + "]"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    if _SAFE.fullmatch(text) and text.lower() not in _KEYWORDS:
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _names(values: Sequence[str]) -> list[str]:
    return [n.strip() for v in values for n in str(v).split(",") if n.strip()]


def flag_overrides(namespace: argparse.Namespace) -> list[str]:
    """The Hydra overrides of the flags given on the command line, in their order."""
    overrides = []
    for dest, value in vars(namespace).items():
        if not dest.startswith("flag:"):
            continue
        key = dest.removeprefix("flag:")
        if isinstance(value, list):
            overrides.append(f"{key}={quote(_names(value))}")
        elif key.startswith("group:"):
            overrides.append(f"{key.removeprefix('group:')}={value}")
        else:
            overrides.append(f"{key}={quote(value)}")
    return overrides


def group_flag(group: str, spellings: tuple[str, ...], help: str) -> Flag:  # noqa: A002
    """A flag choosing a config-group option (``--model=ViT-B-32``)."""
    return Flag(f"group:{group}", spellings, "value", help)

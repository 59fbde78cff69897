"""The configuration reference, generated from the schema: the README's table of keys, types and defaults.

    python -m tsvmerge.config.docs            # print the tables
    python -m tsvmerge.config.docs README.md  # rewrite them in place, between the markers

The README holds the output between ``<!-- config-table:start -->`` and ``<!-- config-table:end -->``; a test checks
that it is what this module generates, so the table cannot drift from the schema.
"""

from __future__ import annotations

import dataclasses
import enum
import sys
import typing
from pathlib import Path
from typing import Any

from ..utils.files import replace_between_markers
from . import schema

__all__ = ["END", "START", "config_reference", "schema_table", "update_file"]

START = "<!-- config-table:start -->"
END = "<!-- config-table:end -->"

#: (title, entry point, schema) of every table, in the README's order.
TABLES: list[tuple[str, str, type]] = [
    ("main.py and analyze.py", "config/config.yaml, config/analyze.yaml", schema.RunSchema),
    ("model (config/model/<name>.yaml)", "model.<key>=...", schema.ModelSchema),
    ("wandb", "wandb.<key>=...", schema.WandbSchema),
    ("finetune.py", "config/finetune.yaml; flags --<key-with-dashes>", schema.FinetuneSchema),
    ("eval_single_task.py", "config/eval_single_task.yaml", schema.EvalSingleTaskSchema),
    ("demo.py", "config/demo.yaml", schema.DemoSchema),
    ("report.py", "config/report.yaml", schema.ReportSchema),
]


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, str):
        annotation = eval(annotation, vars(schema))  # noqa: S307 - the schema module's own annotations
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union and type(None) in args:
        return _type_name(next(a for a in args if a is not type(None))) + " \\| null"
    if origin in (list, typing.List):  # noqa: UP006
        return f"list[{_type_name(args[0])}]"
    if origin in (dict, typing.Dict):  # noqa: UP006
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " \\| ".join(m.name for m in annotation)
    if annotation is Any:
        return "config"
    if dataclasses.is_dataclass(annotation):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def _default(f: dataclasses.Field) -> str:
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        if dataclasses.is_dataclass(value):
            return "(section)"
    else:
        value = f.default
    if value == "???":
        return "(group choice)" if f.name in ("model", "method", "analysis") else "required"
    if isinstance(value, enum.Enum):
        value = value.name
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return f"`{value}`" if value != [] else "`[]`"


def schema_table(cls: type) -> str:
    """A Markdown table of ``cls``' keys: name, type, default, meaning (and minimum)."""
    hints = typing.get_type_hints(cls, vars(schema))
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for f in dataclasses.fields(cls):
        meaning = f.metadata.get("help", "")
        if "minimum" in f.metadata:
            meaning += f" (at least {f.metadata['minimum']})"
        meaning = meaning.replace("|", "\\|")
        lines.append(f"| `{f.name}` | {_type_name(hints[f.name])} | {_default(f)} | {meaning} |")
    return "\n".join(lines)


def config_reference() -> str:
    """Every table, with its heading."""
    parts = [f"**{title}** ({where})\n\n{schema_table(cls)}" for title, where, cls in TABLES]
    return "\n\n".join(parts)


def update_file(path: Path) -> bool:
    """Rewrite the tables between the markers of ``path``; True when the file changed."""
    return replace_between_markers(path, START, END, config_reference())


if __name__ == "__main__":
    if len(sys.argv) > 1:
        changed = update_file(Path(sys.argv[1]))
        print(f"{sys.argv[1]}: {'updated' if changed else 'up to date'}")
    else:
        print(config_reference())

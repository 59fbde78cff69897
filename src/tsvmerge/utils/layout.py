"""The floor plan of ``src/tsvmerge``, written once: the layers bottom to top, and the README's Layout section
generated from each package's docstring.

A package may import itself and the layers listed before it, never one after it (``tests/test_layers.py`` checks
every import, inside functions too). The README shows the same order, each package with the first paragraph of its
own docstring, so that the map of the code cannot drift from the code:

    python -m tsvmerge.utils.layout               # print the section
    python -m tsvmerge.utils.layout README.md     # rewrite it in place, between the markers

Docstrings are read with :mod:`ast`: no package of tsvmerge is imported.
"""

from __future__ import annotations

import ast
import re
import sys
import textwrap
from pathlib import Path

from .files import replace_between_markers

__all__ = ["END", "LAYERS", "START", "layout_block", "update_file"]

#: Bottom to top. Generic helpers; configuration plumbing; checkpoint and dataset I/O; the merging math and the
#: models; fetching published files; the primitives of evaluation, training and plotting; the paper's analyses; the
#: demo's own parts; one recipe per command; the entry points. Each name is a package (or a top-level module) of
#: ``src/tsvmerge``.
LAYERS: tuple[str, ...] = (
    "utils",
    "config",
    "checkpoints", "data",
    "merging", "models",
    "download",
    "evaluation", "calibration", "training", "plotting",
    "analysis",
    "demo",
    "recipes",
    "cluster",
    "cli", "console", "__main__",
)

#: Packages whose modules are listed one by one in the README (the commands' recipes, the methods' math).
LISTED_MODULES = ("recipes", "merging")

START = "<!-- layout:start -->"
END = "<!-- layout:end -->"

PACKAGE = Path(__file__).resolve().parents[1]
_WIDTH = 118
_NAME_COLUMN = 26


def _summary(path: Path) -> str:
    """The first paragraph of the module's docstring, on one line, Sphinx roles and double backticks simplified."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    text = " ".join(doc.split("\n\n")[0].split())
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def _entry(name: str, summary: str, indent: int) -> list[str]:
    first = " " * indent + name.ljust(_NAME_COLUMN - indent) + " "
    if len(first) > _NAME_COLUMN + 1:
        first = " " * indent + name + " "
    return textwrap.wrap(summary, _WIDTH, initial_indent=first, subsequent_indent=" " * (_NAME_COLUMN + 1)) or [first]


def _unit_path(unit: str, package: Path) -> Path:
    folder = package / unit
    return folder / "__init__.py" if folder.is_dir() else package / f"{unit}.py"


def layout_block(package: Path = PACKAGE) -> str:
    """The README's Layout block for ``src/tsvmerge``: every layer bottom to top, with its docstring's summary."""
    lines = ["```", "src/tsvmerge/              (bottom to top: each imports only what is listed before it)"]
    for unit in LAYERS:
        path = _unit_path(unit, package)
        shown = f"{unit}/" if path.name == "__init__.py" else path.name
        lines += _entry(shown, _summary(path), 2)
        if unit in LISTED_MODULES:
            for module in sorted((package / unit).iterdir()):
                if module.suffix == ".py" and module.name != "__init__.py":
                    lines += _entry(module.name, _summary(module), 4)
                elif (module / "__init__.py").is_file():
                    lines += _entry(f"{module.name}/", _summary(module / "__init__.py"), 4)
    lines.append("```")
    return "\n".join(lines)


def update_file(path: Path, package: Path = PACKAGE) -> bool:
    """Replace the text between :data:`START` and :data:`END` in ``path``; True when it changed."""
    return replace_between_markers(path, START, END, layout_block(package))


if __name__ == "__main__":
    if len(sys.argv) > 1:
        for name in sys.argv[1:]:
            print(f"{name}: {'updated' if update_file(Path(name)) else 'up to date'}")
    else:
        print(layout_block())

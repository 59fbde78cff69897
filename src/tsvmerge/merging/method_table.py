"""The navigation table of the merge methods (method → class → math module → YAML → tests) in docs/evaluation.md.

    python -m tsvmerge.merging.method_table           # print the table
    python -m tsvmerge.merging.method_table --write   # rewrite docs/evaluation.md between the markers

Why generated: a hand-written table of where each method lives goes stale at the first moved function or renamed
test. Every column is derived from the code instead: the rows are the registry's methods (in the paper-style tables'
:attr:`~tsvmerge.merging.registry.MergeMethod.display_order`), the math modules are the modules of
``tsvmerge.merging`` whose names the class's methods use (read from their source, following its helpers, ``self``
calls and the method classes it builds), and the tests are the files of ``tests/merging/`` that name the method or one
of those math names. docs/evaluation.md holds the output between ``<!-- method-table:start -->`` and
``<!-- method-table:end -->``; ``tests/docs/test_method_table.py`` checks that it is what this module generates.

Imports only ``tsvmerge.merging`` modules and the standard library.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FunctionType, ModuleType
from typing import Any

from ..utils.files import replace_between_markers
from . import methods as _methods  # noqa: F401  (registers the built-in methods)
from .registry import MergeMethod, method_class, methods_where

__all__ = ["END", "START", "TEST_DIR", "MethodRow", "method_rows", "method_table_markdown", "update_file"]

START = "<!-- method-table:start -->"
END = "<!-- method-table:end -->"

PACKAGE = "tsvmerge.merging"
METHODS_PACKAGE = f"{PACKAGE}.methods"
#: Modules of ``tsvmerge.merging`` that are machinery, not math: the registry, the streaming engine and what it
#: streams through (task vectors, threads, processes), the entry rules (which entries are matrices) and this module.
#: Every other module of the package whose names a method class uses is one of its math modules.
MACHINERY = frozenset({"registry", "engine", "task_vectors", "parallel", "collective", "entry_rules",
                       "method_table", "methods"})
#: The hooks that do a method's work, looked at first (so that the math module of ``merge_entry`` comes first).
HOOKS = ("merge_entry", "prepare", "finalize")
#: Where the tests of the methods and their math live (relative to the repository root).
TEST_DIR = Path("tests") / "merging"


@dataclass(frozen=True)
class MethodRow:
    """One method's row: where its class, math, configuration and tests are (paths relative to the repository)."""

    name: str
    label: str
    cls: str
    math: list[str]
    yaml: str
    tests: list[str]


def _is_method_code(obj: Any) -> bool:
    """A function or class defined in a module of ``tsvmerge.merging.methods`` (whose source is followed)."""
    return (inspect.isfunction(obj) or inspect.isclass(obj)) and str(getattr(obj, "__module__", "")).startswith(
        f"{METHODS_PACKAGE}.")


def _math_module(qualified: str) -> str | None:
    """``tsv`` for ``tsvmerge.merging.tsv`` (or a name inside it), when that module is math; None otherwise."""
    parts = qualified.split(".")
    if parts[:2] != PACKAGE.split(".") or len(parts) < 3 or parts[2] in MACHINERY:
        return None
    return parts[2] if _is_module(f"{PACKAGE}.{parts[2]}") else None


def _is_module(qualified: str) -> bool:
    try:
        importlib.import_module(qualified)
    except ImportError:
        return False
    return True


def _imports(module: ModuleType) -> dict[str, tuple[str, bool]]:
    """Name bound by each import of ``module`` → (the qualified module it comes from, whether the name is that module
    itself): ``keep_top`` → (``tsvmerge.merging.sparsify``, False), ``sparsify`` of ``from .. import sparsify`` →
    (``tsvmerge.merging.sparsify``, True)."""
    package = module.__name__.rsplit(".", 1)[0]
    found: dict[str, tuple[str, bool]] = {}
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                source = ".".join([*parts[:len(parts) - node.level + 1], *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:
                bound = alias.asname or alias.name
                found[bound] = (source, False) if node.module else (f"{source}.{alias.name}", True)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                found[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0], True)
    return found


def _body_nodes(function: FunctionType) -> Iterator[ast.AST]:
    """The nodes of ``function``'s body, in source order (its annotations and decorators left out)."""
    try:
        source = textwrap.dedent(inspect.getsource(function))
    except (OSError, TypeError):  # generated code (a dataclass' __init__, __eq__...): no source, no math
        return
    tree = ast.parse(source)
    definition = tree.body[0]
    assert isinstance(definition, ast.FunctionDef | ast.AsyncFunctionDef)

    def visit(node: ast.AST) -> Iterator[ast.AST]:
        yield node
        for child in ast.iter_child_nodes(node):
            yield from visit(child)

    for statement in definition.body:
        yield from visit(statement)


def _own_functions(cls: type) -> list[FunctionType]:
    """The functions of ``cls`` and of its bases defined in the method modules: hooks first, then in definition
    order (properties by their getter)."""
    found: dict[str, FunctionType] = {}
    for hook in HOOKS:
        value = inspect.getattr_static(cls, hook, None)
        if inspect.isfunction(value) and _is_method_code(value):
            found[hook] = value
    for klass in cls.__mro__:
        if not _is_method_code(klass):
            continue
        for name, value in vars(klass).items():
            value = value.fget if isinstance(value, property) else value
            if inspect.isfunction(value) and f"{klass.__name__}.{name}" not in found:
                found[f"{klass.__name__}.{name}"] = value
    return list(found.values())


def _math_names(cls: type[MergeMethod]) -> tuple[list[str], list[str]]:
    """(math modules, names used from them) of a method class: the modules in order of first use (the hooks first),
    except that the module named after the class's family comes first."""
    modules: dict[str, None] = {}
    names: dict[str, None] = {}
    seen: set[int] = set()

    def follow(obj: Any) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if inspect.isclass(obj):
            for function in _own_functions(obj):
                follow(function)
            return
        module = sys.modules[obj.__module__]
        imported = _imports(module)
        for node in _body_nodes(obj):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
                value = inspect.getattr_static(cls, node.attr, None)
                value = value.fget if isinstance(value, property) else value
                if inspect.isfunction(value) and _is_method_code(value):
                    follow(value)
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                source, is_module = imported.get(node.value.id, ("", False))
                if is_module and _math_module(source) is not None:  # ``sparsify.keep_top``
                    names.setdefault(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                source, is_module = imported.get(node.id, ("", False))
                math = _math_module(source)
                if math is not None:
                    modules.setdefault(math)
                    if not is_module:
                        names.setdefault(node.id)
                elif _is_method_code(module.__dict__.get(node.id)):
                    follow(module.__dict__[node.id])

    follow(cls)
    # The family's own math module first (``methods/isotropic.py`` → ``isotropic.py``), then in order of first use.
    family = cls.__module__.rsplit(".", 1)[-1]
    return sorted(modules, key=lambda module: module != family), list(names)


def _tests_naming(repo_root: Path, name: str, math_names: list[str]) -> list[str]:
    """Test files of :data:`TEST_DIR` that name method ``name`` (a quoted string, or ``method=<name>``) or one of
    the math names it uses, as paths relative to ``repo_root``."""
    patterns = [rf"""["']{re.escape(name)}["']""", rf"method={re.escape(name)}\b",
                *(rf"\b{re.escape(n)}\b" for n in math_names)]
    combined = re.compile("|".join(patterns))
    return [path.relative_to(repo_root).as_posix() for path in sorted((repo_root / TEST_DIR).rglob("test_*.py"))
            if combined.search(path.read_text(encoding="utf-8"))]


def _builtin(cls: type[MergeMethod]) -> bool:
    """Methods of this package (not those a test or a plug-in registers for a while)."""
    return cls.__module__.startswith(f"{PACKAGE}.")


def method_rows(repo_root: Path) -> list[MethodRow]:
    """One row per built-in registered method, in the paper-style tables' order (then by name)."""
    rows = []
    for name in methods_where(_builtin):
        cls = method_class(name)
        math, math_names = _math_names(cls)
        rows.append(MethodRow(
            name=name,
            label=cls.label or name,
            cls=f"{cls.__module__.removeprefix('tsvmerge.')}.{cls.__qualname__}",
            math=[f"src/{PACKAGE.replace('.', '/')}/{module}.py" for module in math],
            yaml=f"config/method/{name}.yaml",
            tests=_tests_naming(repo_root, name, math_names),
        ))
    return rows


def _cell(items: list[str]) -> str:
    """Code-formatted items, comma-separated; a dash for none."""
    return ", ".join(f"`{item}`" for item in items) if items else "—"


def method_table_markdown(repo_root: Path) -> str:
    """The Markdown table (Method, Label, Class, Math, YAML, Tests) of every built-in method."""
    lines = ["| Method | Label | Class | Math | YAML | Tests |", "| --- | --- | --- | --- | --- | --- |"]
    for row in method_rows(Path(repo_root)):
        lines.append(f"| `{row.name}` | {row.label} | `{row.cls}` | {_cell(row.math)} | `{row.yaml}` | "
                     f"{_cell(row.tests)} |")
    return "\n".join(lines)


def update_file(path: Path, repo_root: Path) -> bool:
    """Rewrite the table between the markers of ``path``; True when the file changed."""
    return replace_between_markers(path, START, END, method_table_markdown(repo_root))


def _repo_root() -> Path:
    """The checkout this module runs from (``src/tsvmerge/merging/`` → the root), else the current directory."""
    root = Path(__file__).resolve().parents[3]
    return root if (root / "config" / "method").is_dir() else Path.cwd()


if __name__ == "__main__":
    root = _repo_root()
    if "--write" in sys.argv[1:]:
        doc = root / "docs" / "evaluation.md"
        print(f"{doc}: {'updated' if update_file(doc, root) else 'up to date'}")
    else:
        print(method_table_markdown(root))

"""The floor plan of ``src/tsvmerge``: every import, inside functions too, goes down the layer table, never up.

A package may import itself and the packages listed before it, nothing after it (so no two packages import each
other). ``KNOWN_UPWARD`` lists the upward imports that remain, each by file and imported package; it may only
shrink: a new upward import fails the test, and so does an entry of the list that no longer exists.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "tsvmerge"

#: Bottom to top. Generic helpers; configuration plumbing; checkpoint and dataset I/O; the merging math and the
#: models; fetching published files; the primitives of evaluation, training and plotting; the paper's analyses;
#: the commands' bodies; the entry points.
LAYERS = (
    "utils",
    "config",
    "checkpoints", "data",
    "merging", "models",
    "download",
    "evaluation", "training", "plotting",
    "analysis",
    "recipes",
    "demo", "merge_folder", "doctor", "cluster",
    "cli", "console", "__main__",
)

#: Upward imports that remain: (file below src/tsvmerge, imported package).
KNOWN_UPWARD: set[tuple[str, str]] = set()


def _unit(path: Path) -> str:
    """The layer of a module: its package below tsvmerge, or the module name for a top-level module."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _imported_units(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """``(line, layer)`` of every tsvmerge import in ``path`` (or in ``source``, read as that module), relative or
    absolute, at any depth."""
    module = ["tsvmerge", *path.relative_to(PACKAGE).with_suffix("").parts]
    package = module[:-1] if module[-1] != "__init__" else module[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = [*base, *(node.module.split(".") if node.module else [])]
                names = [".".join(target)] if node.module else [".".join([*target, a.name]) for a in node.names]
            elif node.module:
                names = [node.module] if node.module != "tsvmerge" else [f"tsvmerge.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] != "tsvmerge" or len(parts) == 1:
                continue
            # ``from tsvmerge import __version__``: a name of the package itself, not a module of a layer.
            is_module = (PACKAGE / parts[1]).is_dir() or (PACKAGE / f"{parts[1]}.py").is_file()
            found.append((node.lineno, parts[1] if is_module else "__init__"))
    return found


def _upward_imports() -> dict[tuple[str, str], list[int]]:
    rank = {unit: i for i, unit in enumerate(LAYERS)}
    upward: dict[tuple[str, str], list[int]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        unit = _unit(path)
        if unit == "__init__":
            continue
        assert unit in rank, f"{path.relative_to(PACKAGE)}: {unit!r} is in no layer; add it to LAYERS"
        for line, imported in _imported_units(path):
            if imported == unit or imported == "__init__":
                continue
            assert imported in rank, f"{path.relative_to(PACKAGE)}:{line} imports {imported!r}, in no layer"
            if rank[imported] > rank[unit]:
                upward.setdefault((str(path.relative_to(PACKAGE)), imported), []).append(line)
    return upward


def test_no_new_upward_import() -> None:
    new = {key: lines for key, lines in _upward_imports().items() if key not in KNOWN_UPWARD}
    assert not new, "imports that go up the layer table (file, package: lines): " + "; ".join(
        f"{file} imports {package} at line {', '.join(map(str, lines))}" for (file, package), lines in sorted(new.items()))


def test_known_upward_imports_still_exist() -> None:
    """Each entry of KNOWN_UPWARD that is gone must leave the list, so that it only ever shrinks."""
    gone = KNOWN_UPWARD - set(_upward_imports())
    assert not gone, f"no longer imported upward, remove from KNOWN_UPWARD: {sorted(gone)}"


def test_the_checker_sees_imports_inside_functions() -> None:
    """A lazy import inside a function counts, relative or absolute: the test must be able to fail."""
    source = "def f():\n    from ..analysis import report\n    import tsvmerge.cli\n    from . import files\n"
    found = _imported_units(PACKAGE / "utils" / "probe.py", source)
    assert found == [(2, "analysis"), (3, "cli"), (4, "utils")]

"""The floor plan of ``src/tsvmerge``: every import, inside functions too, goes down the layer table, never up.

A package may import itself and the packages listed before it in ``tsvmerge.utils.layout.LAYERS``, nothing after it
(so no two packages import each other, and there is no import cycle between packages). The test fails naming each
offending file, package and line. The same table orders the README's Layout section, generated from the docstrings.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tsvmerge.utils.layout import LAYERS, layout_block

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "tsvmerge"


def _unit(path: Path) -> str:
    """The layer of a module: its package below tsvmerge, or the module name for a top-level module."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _imports(path: Path, source: str | None = None) -> list[tuple[int, str, list[str]]]:
    """``(line, module, names)`` of every tsvmerge import in ``path`` (or in ``source``, read as that module),
    relative or absolute, at any depth: the dotted module imported (or imported from), and the names a
    ``from ... import`` takes from it (empty for a plain ``import``)."""
    package = ["tsvmerge", *path.relative_to(PACKAGE).with_suffix("").parts][:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            if module.split(".")[0] == "tsvmerge":
                found.append((node.lineno, module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names if alias.name.startswith("tsvmerge.")]
    return found


def _imported_units(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """``(line, layer)`` of every tsvmerge import in ``path`` (or in ``source``, read as that module)."""
    found = []
    for line, module, names in _imports(path, source):
        # ``from tsvmerge import analysis`` / ``from .. import analysis``: the names are the modules.
        for name in [module] if "." in module else [f"{module}.{n}" for n in names]:
            parts = name.split(".")
            # ``from tsvmerge import __version__``: a name of the package itself, not a module of a layer.
            is_module = (PACKAGE / parts[1]).is_dir() or (PACKAGE / f"{parts[1]}.py").is_file()
            found.append((line, parts[1] if is_module else "__init__"))
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


def test_no_upward_import() -> None:
    upward = _upward_imports()
    assert not upward, "imports that go up the layer table (file, package: lines): " + "; ".join(
        f"{file} imports {package} at line {', '.join(map(str, lines))}"
        for (file, package), lines in sorted(upward.items()))


def test_the_checker_sees_imports_inside_functions() -> None:
    """A lazy import inside a function counts, relative or absolute: the test must be able to fail."""
    source = "def f():\n    from ..analysis import report\n    import tsvmerge.cli\n    from . import files\n"
    found = _imported_units(PACKAGE / "utils" / "probe.py", source)
    assert found == [(2, "analysis"), (3, "cli"), (4, "utils")]


def test_readme_layout_is_generated_from_the_docstrings() -> None:
    """README's Layout block is the package docstrings in layer order; every package of src/tsvmerge is listed."""
    units = {p.name if p.is_dir() else p.stem for p in PACKAGE.iterdir()
             if (p.is_dir() and (p / "__init__.py").is_file()) or (p.suffix == ".py" and p.name != "__init__.py")}
    assert units == set(LAYERS), f"packages not in LAYERS: {sorted(units - set(LAYERS))}; " \
                                 f"in LAYERS but gone: {sorted(set(LAYERS) - units)}"
    readme = (PACKAGE.parents[1] / "README.md").read_text()
    block = readme.split("<!-- layout:start -->\n", 1)[1].split("\n<!-- layout:end -->", 1)[0]
    assert block == layout_block(), \
        "README.md's Layout section is stale: run `python -m tsvmerge.utils.layout README.md`"


ROOT_SCRIPTS = ("main.py", "finetune.py", "eval_single_task.py", "analyze.py", "report.py", "demo.py")


def test_root_scripts_only_parse_compose_and_call_a_recipe() -> None:
    """Each entry script is at most 60 lines and imports from tsvmerge only recipes, config and utils."""
    root = PACKAGE.parents[1]
    problems = []
    for name in ROOT_SCRIPTS:
        source = (root / name).read_text()
        if len(source.splitlines()) > 60:
            problems.append(f"{name} has {len(source.splitlines())} lines (at most 60)")
        for node in ast.walk(ast.parse(source)):
            modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for module in modules:
                parts = module.split(".")
                if parts[0] == "tsvmerge" and (len(parts) < 2 or parts[1] not in ("recipes", "config", "utils")):
                    problems.append(f"{name}:{node.lineno} imports {module}")
    assert not problems, "; ".join(problems)


def _module_exists(dotted: str) -> bool:
    parts = dotted.split(".")[1:]
    path = PACKAGE.joinpath(*parts)
    return path.is_dir() or path.with_suffix(".py").is_file()


def test_every_import_of_tsvmerge_names_an_existing_module() -> None:
    """An import of a moved or deleted module fails here, even when it sits in a function no test runs."""
    missing = [f"{path.relative_to(PACKAGE)}:{line} imports {module}"
               for path in sorted(PACKAGE.rglob("*.py")) for line, module, _ in _imports(path)
               if module != "tsvmerge" and not _module_exists(module)]
    assert not missing, "; ".join(missing)

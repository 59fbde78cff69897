"""docs/evaluation.md's table of the merge methods (method → class → math → YAML → tests) is the generated one.

Regenerate it with ``python -m tsvmerge.merging.method_table --write``.
"""

from __future__ import annotations

import re
from pathlib import Path

from tsvmerge.merging.method_table import END, START, method_rows, method_table_markdown, update_file
from tsvmerge.merging.registry import available_methods, method_class

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "evaluation.md"
REGENERATE = "run `python -m tsvmerge.merging.method_table --write` to regenerate it"


def _doc_table() -> str:
    text = DOC.read_text(encoding="utf-8")
    assert START in text and END in text, f"{DOC} has lost its {START} ... {END} markers"
    return text.split(START, 1)[1].split(END, 1)[0].strip()


def test_docs_method_table_is_the_generated_one() -> None:
    assert _doc_table() == method_table_markdown(ROOT).strip(), (
        f"docs/evaluation.md's method table is stale: {REGENERATE}")


def test_every_registered_method_has_a_row() -> None:
    builtin = {name for name in available_methods() if method_class(name).__module__.startswith("tsvmerge.")}
    rows = {row.name for row in method_rows(ROOT)}
    assert rows == builtin
    documented = set(re.findall(r"^\| `([^`]+)` \|", _doc_table(), flags=re.MULTILINE))
    assert documented == builtin, f"methods missing from docs/evaluation.md's table: {REGENERATE}"


def test_every_path_named_exists() -> None:
    for row in method_rows(ROOT):
        assert (ROOT / row.yaml).is_file(), f"{row.name}: no {row.yaml}"
        assert row.math or row.name == "zeroshot", f"{row.name}: no math module found"
        for path in [*row.math, *row.tests]:
            assert (ROOT / path).is_file(), f"{row.name}: {path} does not exist"
        assert row.tests, f"{row.name}: no test file of tests/merging names it or its math"
    # and every path written in the docs' table, whatever generated it
    for path in re.findall(r"`((?:src|config|tests)/[^`]+)`", _doc_table()):
        assert (ROOT / path).is_file(), f"docs/evaluation.md's method table names {path}, which does not exist"


def test_write_rewrites_only_the_table(tmp_path: Path) -> None:
    copy = tmp_path / "evaluation.md"
    copy.write_text(f"before\n{START}\nold table\n{END}\nafter\n", encoding="utf-8")
    assert update_file(copy, ROOT)
    assert copy.read_text(encoding="utf-8") == f"before\n{START}\n{method_table_markdown(ROOT)}\n{END}\nafter\n"
    assert not update_file(copy, ROOT)

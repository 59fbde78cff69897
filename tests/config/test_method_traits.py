"""What the evaluation, configuration and entry points know about a method comes from its traits, never its name."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tsvmerge.merging import available_methods, build_method
from tsvmerge.merging.registry import method_class

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "src" / "tsvmerge"


def _files() -> list[Path]:
    """Every module of the package but the merging code (where the methods are declared), and the root scripts."""
    files = sorted(p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] != "merging")
    files += [REPO / name for name in ("main.py", "analyze.py", "finetune.py", "eval_single_task.py", "demo.py",
                                       "report.py")]
    return files


#: Strings that equal a method's name but mean something else, each with the file it is in and why.
NOT_METHOD_NAMES = {
    ("src/tsvmerge/analysis/report.py", "average"): "the per-dataset tables' mean column, as the report prints it",
}


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_method_name_in_code_that_must_not_know_methods(path: Path) -> None:
    names = set(available_methods())
    where = str(path.relative_to(REPO))
    found = [(node.lineno, node.value) for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names
             and (where, node.value) not in NOT_METHOD_NAMES]
    assert not found, f"{path} names methods {found}: declare a trait on the method class instead"


def test_traits_of_the_published_methods() -> None:
    zeroshot = build_method("zeroshot")
    assert not zeroshot.uses_finetuned and zeroshot.default_alpha == 0.0
    assert build_method("sum").alpha_grid_max == 1.0 and build_method("TSVM").alpha_grid_max == 3.0
    assert build_method("TSVC").task_specific and build_method("tall_mask").task_specific
    build = build_method("tall_mask").mask_files()
    assert build.writes and not build.reads and build.variant == ""
    load = build_method("tall_mask", {"load_mask": True}).mask_files()
    assert load.reads and not load.writes
    ties = build_method("tall_mask", {"use_ties": True, "ties_agg": "mean"}).mask_files()
    assert ties.variant == "_use_ties_mean" and ties.built_with == {"use_ties": True, "ties_agg": "mean", "ties_k": 20}
    consensus = build_method("consensus").mask_files()
    assert consensus.reads and consensus.made_by == "tall_mask"
    assert build_method("consensus", {"tall_lambda": 0.4}).mask_files() is None
    assert build_method("sum").mask_files() is None


@pytest.mark.parametrize(("name", "params", "run_name"), [
    ("sum", {}, "sum_k100"), ("average", {"k": 20}, "average_k20"), ("ties", {}, "ties_k20_mean"),
    ("mag_masking", {}, "mag_masking_k20"), ("tall_mask", {"use_ties": True}, "tall_mask_use_ties_sum"),
    ("consensus", {"prun_thre_k": 3}, "consensus_k3"), ("TSVM", {}, "TSVM"), ("zeroshot", {}, "zeroshot"),
])
def test_run_names_keep_the_published_result_file_names(name: str, params: dict, run_name: str) -> None:
    assert build_method(name, params).run_name() == run_name


@pytest.mark.parametrize("name", available_methods())
def test_every_method_declares_what_users_see(name: str) -> None:
    cls = method_class(name)
    assert cls.label.strip() and cls.reference.strip(), f"{name}: declare its label and reference on the class"


def test_method_list_shows_each_label_and_reference() -> None:
    done = subprocess.run([sys.executable, "-m", "tsvmerge.cli", "methods"], capture_output=True, text=True,
                          check=True)
    for name in available_methods():
        cls = method_class(name)
        line = next((line for line in done.stdout.splitlines() if line.split()[:1] == [name]), None)
        assert line is not None, f"{name} not listed"
        assert cls.label in line and cls.reference in line, line

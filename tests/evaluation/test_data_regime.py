"""The data each result used, in words: the regime of a run, and of a result file with or without the key."""

from __future__ import annotations

import pytest

from tsvmerge.evaluation.data_regime import data_regime, regime_of
from tsvmerge.evaluation.results import ResultFile


@pytest.mark.parametrize(("args", "regime"), [
    ((None, 1), "none"),
    ((None, 0), "none"),
    ((None, 30), "validation (α)"),
    ((None, 1, 5), "validation (λ per task)"),
    ((None, 1, 1), "none"),
    ((256, 1), "256 unlabeled/task"),
    ((256, 0), "256 unlabeled/task"),
    ((32, 14), "32 unlabeled/task + validation (α)"),
])
def test_data_regime(args: tuple, regime: str) -> None:
    assert data_regime(*args) == regime


@pytest.mark.parametrize("args", [(0, 1), (-3, 1), (None, -1), (None, 1, -1)])
def test_data_regime_rejects_impossible_counts(args: tuple) -> None:
    with pytest.raises(ValueError):
        data_regime(*args)


def _file(**keys) -> ResultFile:
    """A result file with ``keys``: one written before ``data_regime`` existed unless they add it."""
    data = {"schema": "tsvmerge.merge_eval/1", "model": "ViT-B-32", "method": "TSVM", "datasets": ["MNIST", "DTD"],
            "test": {"avg_top1": 0.5}, **keys}
    return ResultFile.from_json(data, "r.json")


@pytest.mark.parametrize(("keys", "regime"), [
    ({}, "none"),
    ({"alpha_grid": [1.0]}, "none"),  # specify_lambda or a fixed-α method
    ({"alpha_grid": [0.1, 0.2, 0.3]}, "validation (α)"),
    ({"task_choices": {"MNIST": 0.2, "DTD": 0.4}, "alpha_grid": [1.0],
      "val": {"0.2": {}, "0.3": {}, "0.4": {}}}, "validation (λ per task)"),
    ({"task_choices": {"MNIST": 1.0, "DTD": 1.0}, "alpha_grid": [1.0], "val": {"1.0": {}}}, "none"),  # TSV-C
])
def test_regime_of_an_older_file_is_derived(keys: dict, regime: str) -> None:
    assert regime_of(_file(**keys)) == regime


def test_regime_of_a_file_that_stores_it() -> None:
    result = _file(alpha_grid=[0.1, 0.2], data_regime="256 unlabeled/task + validation (α)",
                       calibration={"samples": 256})
    assert regime_of(result) == "256 unlabeled/task + validation (α)"
    assert regime_of(_file(alpha_grid=[0.1, 0.2], data_regime="")) == "validation (α)", "'': not recorded"

"""ResultFile, the one declaration of main.py's result file: what main.py writes, what report.py reads back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.entry_points import run_main
from tests.support.world import World
from tsvmerge.analysis.result_files import read_result
from tsvmerge.evaluation.results import RESULT_SCHEMA, ResultFile, ResultFileError, is_result_file
from tsvmerge.utils.errors import UserError
from tsvmerge.utils.files import json_safe

#: The keys of a result file, in the order main.py has always written them (docs/evaluation.md).
KEYS = ["schema", "model", "method", "method_full_name", "method_params", "entry_rules", "num_tasks", "datasets",
        "alpha", "alpha_grid", "task_choices", "selection", "data_regime", "test", "val", "val_best",
        "ft_accuracies_file", "merge_stats", "runtime", "created_utc", "tsvmerge_version", "config"]
#: Where the keys only some methods write go: after ``data_regime``, and after ``val_best``.
AFTER_REGIME, AFTER_VAL = KEYS.index("data_regime") + 1, KEYS.index("val_best") + 1


def _section(splits: list[str], top1: float) -> dict[str, float]:
    return ({f"{s}:top1": top1 for s in splits} | {f"{s}:normalized_top1": top1 / 0.9 for s in splits}
            | {"avg_top1": top1, "avg_normalized_top1": top1 / 0.9})


def _result(**extra) -> ResultFile:
    datasets = ["MNIST", "DTD"]
    val = [f"{d}Val" for d in datasets]
    return ResultFile(
        model="ViT-B-32", method="TSVM", method_full_name="TSVM", method_params={"k": 20},
        entry_rules={"svd_keys": None, "average_keys": None}, datasets=datasets, alpha=1.0, alpha_grid=[1.0, 2.0],
        task_choices=None, selection="alpha maximizing val avg_normalized_top1 (first maximum)",
        test=_section(datasets, 0.7), val={"1.0": _section(val, 0.6), "2.0": _section(val, 0.5)},
        val_best=_section(val, 0.6), **extra, ft_accuracies_file="results/single_task/ViT-B-32/acc.json",
        merge_stats={"seconds": 1.5}, runtime={"device": "cpu", "total_s": 3.0},
        created_utc="2026-01-01T00:00:00+00:00", tsvmerge_version="0.1.0", config={"method": {"name": "TSVM"}})


@pytest.mark.parametrize(("extra", "keys"), [
    ({}, KEYS),
    ({"alpha_early_stopping": {"patience": 1, "stopped_at": None}},
     [*KEYS[:AFTER_VAL], "alpha_early_stopping", *KEYS[AFTER_VAL:]]),
    ({"tall_mask_file": "masks.npy", "tall_mask_saved": False},
     [*KEYS[:AFTER_VAL], "tall_mask_file", "tall_mask_saved", *KEYS[AFTER_VAL:]]),
    ({"data_regime": "256 unlabeled/task + validation (α)", "calibration": {"samples": 256, "seed": 0}},
     [*KEYS[:AFTER_REGIME], "calibration", *KEYS[AFTER_REGIME:]]),
])
def test_round_trip_keeps_every_key_in_order(extra: dict, keys: list[str], tmp_path: Path) -> None:
    result = _result(**extra)
    payload = result.to_json()
    assert list(payload) == keys
    assert payload["schema"] == RESULT_SCHEMA and payload["num_tasks"] == 2 and payload["datasets"] == ["MNIST", "DTD"]
    assert ResultFile.from_json(payload, "x.json") == result
    text = json.dumps(json_safe(payload), indent=2, allow_nan=False)
    again = ResultFile.from_json(json.loads(text), "x.json").to_json()
    assert list(again.items()) == list(json.loads(text).items())


def test_an_older_file_reads_with_the_defaults() -> None:
    """The reader has always needed only the schema, ``test`` and ``datasets``."""
    result = ResultFile.from_json({"schema": "tsvmerge.merge_eval/0", "method": "sum", "datasets": ["MNIST"],
                                   "test": {"avg_top1": 0.5}}, "old.json")
    assert (result.method, result.method_full_name, result.num_tasks) == ("sum", "sum", 1)
    assert result.created_utc == "" and result.ft_accuracies_file is None and result.task_choices is None
    assert result.data_regime == "" and result.calibration is None


@pytest.mark.parametrize("data", [
    {"schema": RESULT_SCHEMA, "model": "ViT-B-32"},
    {"schema": RESULT_SCHEMA, "datasets": ["MNIST"], "test": [0.5]},
    {"schema": RESULT_SCHEMA, "datasets": "MNIST", "test": {"avg_top1": 0.5}},
    {"schema": RESULT_SCHEMA, "test": {"avg_top1": 0.5}},
])
def test_a_result_file_without_its_sections_is_rejected(data: dict, tmp_path: Path) -> None:
    with pytest.raises(ResultFileError, match=r"x\.json: a result file without its 'test' section or 'datasets' list"):
        ResultFile.from_json(data, "x.json")
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ResultFileError, match="a result file without its 'test' section or 'datasets' list"):
        read_result(path)
    assert issubclass(ResultFileError, UserError) and issubclass(ResultFileError, ValueError)


@pytest.mark.parametrize("data", [{"not": "a result"}, {"schema": "something/1"}, [1, 2], "text", None])
def test_other_json_is_not_a_result_file(data: object, tmp_path: Path) -> None:
    assert not is_result_file(data)
    with pytest.raises(ResultFileError, match="not a result file"):
        ResultFile.from_json(data, "x.json")
    path = tmp_path / "other.json"
    path.write_text(json.dumps(data))
    assert read_result(path) is None, "the reader ignores other JSON files"


@pytest.mark.parametrize("number", ["NaN", "Infinity", "1e999"])
def test_the_reader_rejects_non_finite_numbers(number: str, tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_result().to_json()).replace('"avg_top1": 0.7', f'"avg_top1": {number}', 1))
    with pytest.raises(ResultFileError, match=f"{path}: it holds the non-finite number"):
        read_result(path)


@pytest.mark.parametrize(("overrides", "keys"), [
    (["method=iso_c", "method.early_stop_patience=1"],
     [*KEYS[:AFTER_VAL], "alpha_early_stopping", *KEYS[AFTER_VAL:]]),
    (["method=tall_mask"], [*KEYS[:AFTER_VAL], "tall_mask_file", "tall_mask_saved", *KEYS[AFTER_VAL:]]),
])
def test_main_writes_a_result_file_that_reads_back_byte_for_byte(world: World, overrides: list[str],
                                                                 keys: list[str], monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    results = tmp_path / "results"
    args = world.main_args(*overrides, f"results_dir={results}", f"ft_accuracies={world.ft_accuracies}",
                           run_dir=tmp_path / "run")
    assert run_main(args, monkeypatch) == 0
    [path] = sorted((results / "merging").glob("*.json"))
    text = path.read_text()
    result = ResultFile.from_json(json.loads(text), path)
    assert list(json.loads(text)) == keys
    assert json.dumps(json_safe(result.to_json()), indent=2, allow_nan=False) + "\n" == text
    record = read_result(path)
    assert record is not None and record.datasets == tuple(world.datasets) and record.test == result.test

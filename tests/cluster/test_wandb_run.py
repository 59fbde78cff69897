"""main.py with ``wandb.mode=offline``: the offline run holds the config, the α curve, the per-dataset table and the
final metrics, equal to what the result file says (read back from wandb's own files, no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cluster.demo_world import MODEL, DemoWorld
from tests.cluster.wandb_records import read_offline_run
from tests.support.entry_points import run_main


@pytest.fixture
def wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """wandb writes only under tmp_path (runs, settings, caches), prints nothing, does not wrap stdout; its service
    process is stopped afterwards."""
    pytest.importorskip("wandb")
    for var, sub in (("WANDB_DIR", "wandb_dir"), ("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"),
                     ("WANDB_DATA_DIR", "data")):
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(var, str(tmp_path / sub))
    for var, value in (("WANDB_SILENT", "true"), ("WANDB_CONSOLE", "off"), ("WANDB_DISABLE_GIT", "true"),
                       ("WANDB_MODE", "offline")):
        monkeypatch.setenv(var, value)
    yield tmp_path / "wandb_dir"
    import wandb

    wandb.teardown()


def test_offline_run_logs_config_alpha_curve_table_and_metrics(demo_world: DemoWorld, wandb_env: Path,
                                                               tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    results = tmp_path / "results"
    args = demo_world.main_args("method=sum", "n_eval_points=3", f"results_dir={results}", "wandb.mode=offline",
                                "wandb.project=tsv-test", f"hydra.run.dir={tmp_path / 'run'}")
    assert run_main(args, monkeypatch) == 0
    (result_file,) = (results / "merging").glob("*.json")
    payload = json.loads(result_file.read_text())
    (folder,) = (wandb_env / "wandb").glob("offline-run-*")
    run = read_offline_run(folder)

    # the resolved configuration
    assert run.config["model"]["name"] == MODEL and run.config["method"]["name"] == "sum"
    assert run.config["num_tasks"] == 2 and run.config["wandb"]["project"] == "tsv-test"

    # the α sweep: one history step per α, then the curve as a table
    steps = [row for row in run.history if "alpha" in row and "val/avg_normalized_top1" in row]
    assert [row["alpha"] for row in steps] == pytest.approx(payload["alpha_grid"]) and len(steps) == 2
    for row, section in zip(steps, payload["val"].values()):
        assert row["val/avg_normalized_top1"] == pytest.approx(section["avg_normalized_top1"])
    curve = run.table("val/alpha_curve_table")
    assert curve["columns"] == ["alpha", "val_avg_top1", "val_avg_normalized_top1"]
    expected = [[float(a), s["avg_top1"], s["avg_normalized_top1"]] for a, s in payload["val"].items()]
    assert len(curve["data"]) == len(expected) == 2
    for row, want in zip(curve["data"], expected):
        assert row == pytest.approx(want)

    # the per-dataset table
    table = run.table("test/per_dataset")
    assert table["columns"] == ["dataset", "top1", "normalized_top1", "val_top1", "choice"]
    assert [r[0] for r in table["data"]] == list(demo_world.tasks)
    for name, top1, normalized, val_top1, _ in table["data"]:
        assert top1 == pytest.approx(payload["test"][f"{name}:top1"])
        assert normalized == pytest.approx(payload["test"][f"{name}:normalized_top1"])
        assert val_top1 == pytest.approx(payload["val_best"][f"{name}Val:top1"])

    # the final metrics
    assert run.summary["test/avg_top1"] == pytest.approx(payload["test"]["avg_top1"])
    assert run.summary["test/avg_normalized_top1"] == pytest.approx(payload["test"]["avg_normalized_top1"])
    assert run.summary["alpha"] == payload["alpha"] and run.summary["method"] == "sum"
    assert run.summary["result_file"] == str(result_file)


def test_task_specific_runs_log_their_mask_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    """TALL masks / TSV-C choose a mask per task instead of one α: their curve is one row per choice λ, and the
    per-dataset table names each task's choice (a stand-in wandb module records the calls)."""
    import sys
    import types

    from tsvmerge.evaluation.tracking import Tracker, WandbSettings, log_merge_result

    logged: list[dict] = []

    class Run:
        summary: dict = {}

        def log(self, data, step=None):
            logged.append(data)

        def finish(self):
            pass

    class Table:
        def __init__(self, columns, data):
            self.columns, self.data = columns, data

    fake = types.SimpleNamespace(init=lambda **kw: Run(), Table=Table,
                                 plot=types.SimpleNamespace(line=lambda *a, **k: pytest.fail("no α curve expected")))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    payload = {"datasets": ["A", "B"], "task_choices": {"A": 0.2, "B": 0.6}, "alpha": 1.0, "num_tasks": 2,
               "method": "tall_mask",
               "val": {"0.2": {"avg_top1": 0.5, "avg_normalized_top1": 0.6},
                       "0.6": {"avg_top1": 0.4, "avg_normalized_top1": 0.5}},
               "val_best": {"AVal:top1": 0.7, "BVal:top1": 0.3, "avg_top1": 0.5},
               "test": {"A:top1": 0.8, "A:normalized_top1": 0.9, "B:top1": 0.2, "B:normalized_top1": 0.25,
                        "avg_top1": 0.5, "avg_normalized_top1": 0.575}}
    tracker = Tracker(WandbSettings(mode="offline"))
    log_merge_result(tracker, payload, "r.json")
    curve, per_dataset = logged[0]["val/choice_curve"], logged[1]["test/per_dataset"]
    assert curve.columns == ["choice", "val_avg_top1", "val_avg_normalized_top1"]
    assert curve.data == [["0.2", 0.5, 0.6], ["0.6", 0.4, 0.5]]
    assert per_dataset.data == [["A", 0.8, 0.9, 0.7, "0.2"], ["B", 0.2, 0.25, 0.3, "0.6"]]
    assert Run.summary["test/avg_normalized_top1"] == 0.575 and Run.summary["val_best/AVal:top1"] == 0.7
    assert Run.summary["method"] == "tall_mask" and Run.summary["result_file"] == "r.json"

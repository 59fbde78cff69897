"""main.py with ``wandb.mode=offline``: the offline run holds the config, the α curve, the per-dataset table and the
final metrics, equal to what the result file says (read back from wandb's own files, no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cluster.demo_world import MODEL, DemoWorld
from tests.cluster.wandb_records import read_offline_run
from tests.evaluation.conftest import run_main


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

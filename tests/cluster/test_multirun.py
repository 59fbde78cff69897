"""main.py sweeps through hydra-submitit-launcher: real submitit jobs on this machine (``submitit_local``), the
sbatch script our Slurm launcher config produces, and report.py's Table 2 from the multirun folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.cluster.demo_world import MODEL, DemoWorld
from tsvmerge.analysis.multirun import read_sweep
from tsvmerge.recipes.report import run_report

REPO = Path(__file__).resolve().parents[2]


def _main_py(args: list[str], extra_env: dict[str, str] | None = None,
             timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """``python main.py <args>`` in a fresh process (submitit pickles main.py's task function, so it must be the
    real ``__main__``), with this checkout's sources first on the path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", **(extra_env or {})}
    return subprocess.run([sys.executable, "main.py", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def local_sweep(demo_world: DemoWorld, tmp_path_factory: pytest.TempPathFactory) -> Path:
    sweep = tmp_path_factory.mktemp("sweep") / "multirun"
    done = _main_py(["-m", *demo_world.main_args("n_eval_points=2", f"results_dir={sweep.parent / 'results'}"),
                     "method=sum,zeroshot", "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}"])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return sweep


def test_submitit_local_runs_one_job_per_cell(local_sweep: Path) -> None:
    results = {}
    for job in ("0", "1"):
        files = list((local_sweep / job).glob("*.json"))
        assert len(files) == 1, files
        payload = json.loads(files[0].read_text())
        results[payload["method"]] = payload
        hydra = yaml.safe_load((local_sweep / job / ".hydra" / "hydra.yaml").read_text())["hydra"]
        job_id = str(hydra["job"]["id"])
        # submitit ran it: its own folder for the job, with the pickled result of the call
        assert list((local_sweep / ".submitit" / job_id).glob(f"{job_id}_0_result.pkl")), job_id
        assert hydra["launcher"]["_target_"].endswith("submitit_launcher.LocalLauncher")
    assert set(results) == {"sum", "zeroshot"}
    assert all(p["model"] == MODEL and p["num_tasks"] == 2 for p in results.values())
    assert len({str(yaml.safe_load((local_sweep / j / ".hydra" / "hydra.yaml").read_text())["hydra"]["job"]["id"])
                for j in ("0", "1")}) == 2, "two separate submitit jobs"


def test_report_tables_a_multirun_folder(local_sweep: Path, tmp_path: Path) -> None:
    assert run_report(local_sweep, tmp_path / "report", radar=False) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    table2 = text.split("## Average accuracy (Table 2)", 1)[1].split("##", 1)[0]
    assert f"| method | {MODEL} 2 tasks |" in table2
    for job in ("0", "1"):
        payload = json.loads(next((local_sweep / job).glob("*.json")).read_text())
        label = {"sum": "Task Arithmetic", "zeroshot": "Zero-shot"}[payload["method"]]
        cell = f"{100 * payload['test']['avg_top1']:.1f} ({100 * payload['test']['avg_normalized_top1']:.1f})"
        assert f"| {label} | {cell} |" in table2
    # the fine-tuned reference row, from the accuracy file the runs name (a multirun folder has no single_task/)
    assert "| Fine-tuned (individual) | 80.0 (100.0) |" in table2
    assert "2 of 2 jobs" in text and "Jobs without a result file" not in text


def test_report_names_the_jobs_without_a_result(local_sweep: Path, tmp_path: Path) -> None:
    copy = tmp_path / "multirun"
    subprocess.run(["cp", "-r", str(local_sweep), str(copy)], check=True)
    lost = next((copy / "1").glob("*.json"))
    method = json.loads(lost.read_text())["method"]
    lost.unlink()
    assert run_report(copy, tmp_path / "report", radar=False) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "1 of 2 jobs" in text and "Jobs without a result file" in text
    row = next(line for line in text.splitlines() if line.startswith("| 1 |"))
    assert f"method={method}" in row and "_log.err" in row and "main.log" in row


def test_sweep_counts_jobs_that_never_started(tmp_path: Path) -> None:
    root = tmp_path / "multirun"
    (root / "0" / ".hydra").mkdir(parents=True)
    (root / "multirun.yaml").write_text(yaml.safe_dump(
        {"hydra": {"overrides": {"task": ["model=ViT-B-32", "method=sum,TSVM", "num_tasks=8,14,20"]}}}))
    (root / "0" / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["model=ViT-B-32", "method=sum",
                                                                          "num_tasks=8"]))
    sweep = read_sweep(root)
    assert sweep is not None and sweep.expected == 6 and sweep.never_started == 5
    assert sweep.swept_keys == ("method", "num_tasks") and [j.num for j in sweep.without_result] == [0]
    assert read_sweep(tmp_path) is None  # not a multirun folder


def test_slurm_launcher_config_reaches_sbatch(demo_world: DemoWorld, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture) -> None:
    """``hydra/launcher=slurm`` with documented overrides: the sbatch script submitit writes requests them (a fake
    ``sbatch`` keeps the script and refuses the submission, so nothing runs)."""
    from tests.support.entry_points import run_main

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/sh\ncp "$1" "$SBATCH_RECORD"\necho "fake sbatch: refused" >&2\nexit 1\n')
    (bin_dir / "srun").write_text('#!/bin/sh\nexec "$@"\n')  # submitit checks that srun exists
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    record = tmp_path / "job.sbatch"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SBATCH_RECORD", str(record))
    args = ["-m", *demo_world.main_args(f"results_dir={tmp_path / 'results'}"), "method=sum,TSVM", "num_tasks=1,2",
            "hydra/launcher=slurm", "hydra.launcher.partition=gpu-a100", "hydra.launcher.timeout_min=90",
            "hydra.launcher.mem_gb=32", f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    assert run_main(args, monkeypatch) != 0  # Hydra reports the refused submission and exits with 1
    assert "fake sbatch: refused" in capfd.readouterr().err
    directives = {line.split()[1] for line in record.read_text().splitlines() if line.startswith("#SBATCH")}
    assert {"--partition=gpu-a100", "--time=90", "--mem=32GB", "--gpus-per-node=1", "--cpus-per-task=8",
            "--array=0-3%4", "--nodes=1", "--ntasks-per-node=1"} <= directives
    assert not list((tmp_path / "results").rglob("*.json")), "nothing ran"


def test_launcher_typos_stop_before_submitting(demo_world: DemoWorld) -> None:
    """main.py composes every job, launcher keys included, before Hydra submits anything (what main.py's cli()
    runs first; exit status 2 with this message)."""
    from tsvmerge.config import ConfigError
    from tsvmerge.recipes.configs import config_source
    from tsvmerge.config.compose import check_command_line
    from tsvmerge.recipes.merge_and_evaluate import check_run_config

    argv = ["-m", *demo_world.main_args(), "method=sum,TSVM", "hydra/launcher=slurm", "hydra.launcher.partiton=gpu"]
    with pytest.raises(ConfigError, match="unknown config key 'hydra.launcher.partiton'.*partition"):
        check_command_line(argv, config_source(REPO / "config"), "config", check_run_config)
    check_command_line([*argv[:-1], "hydra.launcher.partition=gpu"], config_source(REPO / "config"), "config",
                       check_run_config)

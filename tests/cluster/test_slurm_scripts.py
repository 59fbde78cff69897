"""scripts/slurm/*.sbatch run outside Slurm with Slurm's variables set and stand-ins for the programs they start
(python for finetune.py / eval_single_task.py, srun, scontrol): array index -> task, and the command lines."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tsvmerge.cluster import main as cluster_main
from tsvmerge.cluster import task_at
from tsvmerge.data import BENCHMARK_DATASETS, SYNTHETIC_TASKS

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts" / "slurm"


def _stub(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def _run(script: str, args: list[str], tmp_path: Path, env: dict[str, str]) -> list[str]:
    """Run ``script`` with bash; the stand-ins write the command they were given, one argument a line."""
    record = tmp_path / "argv"
    done = subprocess.run(["bash", str(SCRIPTS / script), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "RECORD": str(record), **env})
    assert done.returncode == 0, done.stdout + done.stderr
    return record.read_text().splitlines()


@pytest.fixture
def python_stub(tmp_path: Path) -> dict[str, str]:
    """A ``$PYTHON`` that runs ``-m tsvmerge.cluster`` for real and records any other command line."""
    src = os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])
    stub = _stub(tmp_path, "python", f'if [ "$1" = "-m" ]; then PYTHONPATH="{src}" exec "{sys.executable}" "$@"; fi\n'
                                     'printf "%s\\n" "$@" > "$RECORD"\n')
    return {"PYTHON": str(stub)}


def test_task_names_by_index(capsys: pytest.CaptureFixture) -> None:
    assert task_at(3) == BENCHMARK_DATASETS[3] and task_at(0, "synthetic") == SYNTHETIC_TASKS[0]
    with pytest.raises(ValueError, match="out of range.*20 tasks"):
        task_at(20)
    assert cluster_main(["tasks", "--num-tasks", "8"]) == 0
    assert capsys.readouterr().out.split() == list(BENCHMARK_DATASETS[:8])
    assert cluster_main(["task", "--index", "8", "--benchmark", "synthetic"]) == 2
    assert "indices 0-7" in capsys.readouterr().err


def test_finetune_array_job_trains_its_task(tmp_path: Path, python_stub: dict[str, str]) -> None:
    argv = _run("finetune_array.sbatch", ["ViT-B-32", "--epochs=1", "--model-location=/shared/ckpt"], tmp_path,
                {**python_stub, "SLURM_ARRAY_TASK_ID": "5"})
    assert argv == ["finetune.py", "--model=ViT-B-32", f"--train-dataset={BENCHMARK_DATASETS[5]}", "--epochs=1",
                    "--model-location=/shared/ckpt"]


def test_eval_single_task_one_job_or_one_per_task(tmp_path: Path, python_stub: dict[str, str]) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SLURM_ARRAY_TASK_ID"}
    record = tmp_path / "argv"
    done = subprocess.run(["bash", str(SCRIPTS / "eval_single_task.sbatch"), "demo", "--finetuning-mode=standard"],
                          cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**env, **python_stub, "RECORD": str(record)})
    assert done.returncode == 0, done.stderr
    assert record.read_text().splitlines() == ["eval_single_task.py", "--model=demo", "--finetuning-mode=standard"]
    argv = _run("eval_single_task.sbatch", ["demo", "--finetuning-mode=standard"], tmp_path,
                {**python_stub, "SLURM_ARRAY_TASK_ID": "2", "BENCHMARK": "synthetic"})
    assert argv == ["eval_single_task.py", "--model=demo", f"--datasets={SYNTHETIC_TASKS[2]}",
                    "--finetuning-mode=standard"]


def test_multinode_job_runs_torchrun_on_every_node(tmp_path: Path) -> None:
    _stub(tmp_path, "scontrol", 'printf "gpu-node-07\\ngpu-node-08\\n"\n')
    _stub(tmp_path, "srun", 'printf "%s\\n" "$@" > "$RECORD"\n')
    argv = _run("finetune_multinode.sbatch", ["ViT-L-14", "--batch-size=64"], tmp_path, {
        "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_NODELIST": "gpu-node-[07-08]",
        "SLURM_NNODES": "2", "SLURM_GPUS_ON_NODE": "4", "SLURM_JOB_ID": "4242"})
    assert argv == ["torchrun", "--nnodes=2", "--nproc_per_node=4", "--rdzv_id=4242", "--rdzv_backend=c10d",
                    "--rdzv_endpoint=gpu-node-07:29500", "finetune.py", "--model=ViT-L-14", "--batch-size=64"]

"""``torchrun -m tsvmerge merge`` over 2 CPU processes (gloo) writes the same tensors as one process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.support.hf_models import make_folders
from tsvmerge.checkpoints.hf_folder import HFModelFolder
from tsvmerge.cli import main

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _state(folder):
    with HFModelFolder(folder) as state:
        return {key: state[key].clone() for key in state}


@pytest.mark.parametrize(("method", "outputs"), [("ties", ["."]), ("mag_masking", ["task0", "task1"])])
def test_two_processes_equal_one(tmp_path, method, outputs):
    pre, fts = make_folders(tmp_path / "in", num_tasks=2)
    args = ["merge", "--quiet", "--method", method, "--pretrained", str(pre), "--finetuned", *map(str, fts),
            "--max-shard-size", "40KB", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "tsvmerge", *args, "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 processes" in run.stdout
    for sub in outputs:
        one, two = _state(tmp_path / "one" / sub), _state(tmp_path / "two" / sub)
        assert one.keys() == two.keys()
        assert all(torch.equal(one[k], two[k]) for k in one)
        theta0 = _state(pre)
        assert any(not torch.equal(two[k], theta0[k]) for k in two)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left

"""One Slurm array job per task: every job adds its accuracies to the same single-task accuracy file at the same
time; none may be lost (tsvmerge.utils.file_lock)."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

from tsvmerge.evaluation.accuracy_files import record_accuracies
from tsvmerge.utils.file_lock import lock_path

JOBS, UPDATES = 6, 15


def _job(path: str, job: int, start: multiprocessing.synchronize.Event) -> None:
    start.wait()
    for i in range(UPDATES):
        record_accuracies(path, {f"T{job}_{i}": 0.5, f"T{job}_{i}Val": 0.25})


def test_concurrent_updates_keep_every_entry(tmp_path: Path) -> None:
    path = tmp_path / "single_task" / "demo" / "nonlinear_ft_accuracies.json"
    record_accuracies(path, {"Existing": 0.9})
    ctx = multiprocessing.get_context("fork")  # the children share this process' imports: they start at once
    start = ctx.Event()
    jobs = [ctx.Process(target=_job, args=(str(path), j, start)) for j in range(JOBS)]
    for p in jobs:
        p.start()
    start.set()
    for p in jobs:
        p.join(60)
        assert p.exitcode == 0
    data = json.loads(path.read_text())
    assert len(data) == 1 + JOBS * UPDATES * 2, "an update was lost"
    assert data["Existing"] == 0.9 and data["T5_14Val"] == 0.25
    assert lock_path(path).name == ".nonlinear_ft_accuracies.json.lock"
    assert sorted(p.name for p in path.parent.iterdir()) == [lock_path(path).name, path.name], "no temporary left"

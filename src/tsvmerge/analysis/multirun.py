"""A Hydra multirun folder (``python main.py -m ... hydra/launcher=slurm``) seen as a list of jobs.

A sweep on a cluster rarely ends with every job done: some hit their time limit, some never leave the queue. The
result files alone cannot tell a missing cell of Table 2 from a run that was never asked for, so ``report.py``
reads the folder Hydra leaves behind as well:

- ``multirun.yaml``: the command line of the sweep (``hydra.overrides.task``), from which the number of jobs follows;
- ``<n>/.hydra/overrides.yaml``: the overrides of job ``n`` (written when the job starts);
- ``<n>/.hydra/hydra.yaml``: the job's id (``hydra.job.id``: the Slurm / submitit job id), which names its log
  folder ``.submitit/<id>/`` under the sweep folder.

A job "has a result" when a merge result file lies in its folder (main.py copies its result there).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

__all__ = ["Sweep", "SweepJob", "read_sweep", "sweep_markdown"]


@dataclass(frozen=True)
class SweepJob:
    """One started job of a sweep: its number, folder, overrides, result file (None: it wrote none) and logs."""

    num: int
    folder: Path
    overrides: tuple[str, ...]
    result: Path | None
    logs: tuple[Path, ...]


@dataclass(frozen=True)
class Sweep:
    """The jobs of a multirun folder; ``expected`` is None when the sweep's command line cannot be expanded."""

    root: Path
    swept_keys: tuple[str, ...]
    expected: int | None
    jobs: tuple[SweepJob, ...]

    @property
    def finished(self) -> list[SweepJob]:
        return [job for job in self.jobs if job.result is not None]

    @property
    def without_result(self) -> list[SweepJob]:
        return [job for job in self.jobs if job.result is None]

    @property
    def never_started(self) -> int | None:
        return None if self.expected is None else max(0, self.expected - len(self.jobs))


def _load_yaml(path: Path) -> object:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def _task_overrides(root: Path) -> list[str] | None:
    data = _load_yaml(root / "multirun.yaml")
    try:
        task = data["hydra"]["overrides"]["task"]  # type: ignore[index]
    except (TypeError, KeyError):
        return None
    return [str(o) for o in task] if isinstance(task, list) else None


def _expand(overrides: Sequence[str]) -> tuple[int | None, tuple[str, ...]]:
    """(number of jobs, keys that vary) of a sweep's overrides, through Hydra's own override parser."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
        count, keys = 1, []
        for o in parsed:
            if o.is_sweep_override():
                keys.append(o.get_key_element())
                count *= len(list(o.sweep_string_iterator()))
    except Exception:  # noqa: BLE001 - a sweep Hydra cannot enumerate (intervals): the count stays unknown
        return None, ()
    return count, tuple(keys)


def _job_logs(root: Path, job_folder: Path) -> tuple[Path, ...]:
    """The job's log files: submitit's (``.submitit/<job id>/*_log.{out,err}``, where a failed job's traceback
    is) and Hydra's ``<n>/<job name>.log``."""
    logs = sorted(job_folder.glob("*.log"))
    hydra = _load_yaml(job_folder / ".hydra" / "hydra.yaml")
    try:
        job_id = str(hydra["hydra"]["job"]["id"])  # type: ignore[index]
    except (TypeError, KeyError):
        return tuple(logs)
    folder = root / ".submitit" / job_id
    return (*(sorted(folder.glob("*_log.*")) if folder.is_dir() else ()), *logs)


def read_sweep(root: str | Path, result_files: Iterable[Path] = ()) -> Sweep | None:
    """The jobs of the multirun folder ``root`` (None when ``root`` holds no ``multirun.yaml``); ``result_files``
    are the merge result files found under it."""
    root = Path(root)
    if not (root / "multirun.yaml").is_file():
        return None
    task = _task_overrides(root)
    expected, keys = _expand(task) if task is not None else (None, ())
    by_folder: dict[Path, Path] = {}
    for path in sorted(Path(p).resolve() for p in result_files):
        by_folder.setdefault(path.parent, path)
    jobs = []
    for overrides_file in sorted(root.glob("*/.hydra/overrides.yaml")):
        folder = overrides_file.parent.parent
        if not folder.name.isdigit():
            continue
        overrides = _load_yaml(overrides_file)
        jobs.append(SweepJob(int(folder.name), folder,
                             tuple(str(o) for o in overrides) if isinstance(overrides, list) else (),
                             by_folder.get(folder.resolve()), _job_logs(root, folder)))
    return Sweep(root, keys, expected, tuple(sorted(jobs, key=lambda j: j.num)))


def _swept(job: SweepJob, keys: Sequence[str]) -> str:
    """The job's values of the swept keys (all its overrides when the keys are unknown)."""
    chosen = [o for o in job.overrides if o.split("=", 1)[0] in keys] if keys else list(job.overrides)
    return " ".join(chosen)


def sweep_markdown(sweep: Sweep) -> str:
    """The report's "Multirun jobs" section: how many jobs wrote a result, and which did not, with their logs."""
    expected = "?" if sweep.expected is None else str(sweep.expected)
    lines = [f"{len(sweep.finished)} of {expected} jobs of `{sweep.root}` wrote a result file; "
             f"{len(sweep.jobs)} started."]
    if sweep.never_started:
        lines += ["", f"{sweep.never_started} job(s) never started (still queued, cancelled, or their folder was "
                      "removed): their cells stay empty."]
    missing = sweep.without_result
    if missing:
        lines += ["", "Jobs without a result file (failed, timed out or still running):", "",
                  "| job | overrides | logs |", "| ---: | --- | --- |"]
        for job in missing:
            logs = ", ".join(f"`{p.relative_to(sweep.root)}`" for p in job.logs) or f"`{job.folder.name}/`"
            lines.append(f"| {job.num} | `{_swept(job, sweep.swept_keys)}` | {logs} |")
    return "\n".join(lines) + "\n"

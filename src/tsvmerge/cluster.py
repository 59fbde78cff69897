"""Task names for Slurm array jobs: ``scripts/slurm/*.sbatch`` turn ``$SLURM_ARRAY_TASK_ID`` into a dataset.

finetune.py and eval_single_task.py take their tasks by name (``--train-dataset=EuroSAT``); an array job only knows
its index. The benchmark's task order is defined once (:data:`tsvmerge.data.BENCHMARKS`), so the scripts ask for it
here instead of repeating the list:

    python -m tsvmerge.cluster task --index 3                        # GTSRB (the paper's 4th task)
    python -m tsvmerge.cluster task --index 0 --benchmark synthetic  # Digits (the demo's tasks)
    python -m tsvmerge.cluster tasks --num-tasks 8                   # the first 8, one a line
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main", "task_at"]


def task_at(index: int, benchmark: str = "paper") -> str:
    """The ``index``-th task (from 0) of ``benchmark``; ValueError naming the valid range."""
    from .data import benchmark_tasks

    tasks = benchmark_tasks(benchmark)
    if not 0 <= index < len(tasks):
        raise ValueError(f"task index {index} is out of range: the {benchmark} benchmark has {len(tasks)} tasks "
                         f"(indices 0-{len(tasks) - 1}; e.g. sbatch --array=0-7 for the first 8)")
    return tasks[index]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tsvmerge.cluster", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("task", help="the name of one task, by its index in the benchmark's list")
    one.add_argument("--index", type=int, required=True)
    every = commands.add_parser("tasks", help="the first --num-tasks tasks (default: all), one a line")
    every.add_argument("--num-tasks", type=int, default=None)
    for sub in (one, every):
        sub.add_argument("--benchmark", default="paper", help="paper (the 20 datasets) or synthetic (the demo's)")
    args = parser.parse_args(argv)
    try:
        if args.command == "task":
            print(task_at(args.index, args.benchmark))
        else:
            from .data import benchmark_tasks

            print("\n".join(benchmark_tasks(args.benchmark)[:args.num_tasks]))
    except ValueError as exc:
        print(f"python -m tsvmerge.cluster: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

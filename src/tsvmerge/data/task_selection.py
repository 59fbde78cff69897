"""The tasks of a merge run, from its ``DATASETS`` or ``num_tasks`` keys, checked against the dataset registry."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config.settings import Problems
from .registry import REGISTRY, benchmark_tasks, task_list

__all__ = ["datasets_from_config"]


def datasets_from_config(values: Mapping[str, Any], problems: Problems, benchmark: str) -> list[str]:
    """The tasks a run names: ``DATASETS=[...]`` (base names) or the first ``num_tasks`` of ``benchmark``; each
    problem is added to ``problems`` (and an empty list returned)."""
    listed = values.get("DATASETS")
    tasks = benchmark_tasks(benchmark)
    others = [d for d in REGISTRY if d not in tasks]
    valid = f"valid dataset names: {', '.join(tasks)}" + (f" (and any of {', '.join(others)})" if others else "")
    if listed:
        with_val = [d for d in listed if d.endswith("Val")]
        if with_val:
            problems.append(f"DATASETS lists base names (their <Dataset>Val splits are used for validation): "
                            f"remove 'Val' from {', '.join(with_val)}")
            return []
        try:
            return task_list(datasets=listed)
        except ValueError as exc:
            unknown = [d for d in listed if d not in REGISTRY]
            problems.append(f"unknown dataset{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; {valid}"
                            if unknown else str(exc))
            return []
    if listed is not None:  # DATASETS=[]
        problems.append(f"DATASETS is empty; list at least one dataset or use num_tasks; {valid}")
        return []
    n = values.get("num_tasks")
    if not isinstance(n, int) or not 1 <= n <= len(tasks):
        paper = " (8, 14 and 20 are the paper's benchmarks)" if benchmark == "paper" else ""
        problems.append(f"num_tasks must be an integer in 1..{len(tasks)}{paper}, got {n!r}; "
                        "or list the tasks with DATASETS=[...]")
        return []
    return task_list(num_tasks=n, benchmark=benchmark)

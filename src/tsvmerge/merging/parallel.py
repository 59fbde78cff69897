"""Per-entry work on a few threads, results in input order, under a workspace byte budget.

The merge itself and the whole-model passes before it (top-k counts, TIES' signs) are independent per entry: on the
CPU one entry per core, each with one BLAS thread, uses the cores better than one entry with all of them (LAPACK
and ``bincount`` use several cores poorly within one call; independent calls scale).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import torch
from tqdm.auto import tqdm

from .task_vectors import TaskEntry, TaskVectors, workspace_bytes

__all__ = ["WORKSPACE_BUDGET_BYTES", "default_workers", "map_entries", "map_in_order"]

#: Workspace bytes the concurrent entries of a merge may need together (estimated by ``workspace_bytes``): a new
#: entry waits for the ones in flight when it would exceed this. ViT entries run ``workers`` at a time; an LLM's
#: vocabulary-sized embeddings (a GiB and more of float32 task stacks each) run alone.
WORKSPACE_BUDGET_BYTES = 2**30

R = TypeVar("R")


def default_workers(device: torch.device) -> int:
    """Entries processed concurrently: one per CPU core (at most 8) on the CPU, one on a GPU."""
    return 1 if device.type != "cpu" else max(1, min(8, len(os.sched_getaffinity(0))))


def map_in_order(fn: Callable[[Any], R], entries: Iterable[Any], workers: int,
                 label: Callable[[Any], str] = lambda entry: entry.key,
                 cost: Callable[[Any], int] | None = None,
                 budget: int = WORKSPACE_BUDGET_BYTES) -> Iterator[tuple[str, R]]:
    """``(label(entry), fn(entry))`` in input order, computed by ``workers`` threads.

    With ``cost`` (bytes an entry needs), an entry is only started while the entries in flight plus itself stay
    within ``budget`` (or when nothing else is in flight), so that a few huge entries never run side by side.

    A few more entries than workers are queued so that a large layer waiting to be yielded does not
    idle the other workers; queued entries hold no tensors until a worker starts them when ``fn`` reads them
    itself (pass keys, not entries), so at most ``workers`` layers' task stacks are in memory at once.
    """
    if workers <= 1:
        for entry in entries:
            yield label(entry), fn(entry)
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            in_flight: deque[tuple[str, Future[R], int]] = deque()
            for entry in entries:
                need = cost(entry) if cost is not None else 0
                while in_flight and sum(c for _, _, c in in_flight) + need > budget:
                    key, future, _ = in_flight.popleft()
                    yield key, future.result()
                in_flight.append((label(entry), pool.submit(fn, entry), need))
                if len(in_flight) >= 4 * workers:
                    key, future, _ = in_flight.popleft()
                    yield key, future.result()
            while in_flight:
                key, future, _ = in_flight.popleft()
                yield key, future.result()
    finally:
        torch.set_num_threads(threads)


def map_entries(fn: Callable[[TaskEntry], R], tasks: TaskVectors, description: str | None = None, *,
                progress: bool = False, workers: int | None = None) -> Iterator[tuple[str, R]]:
    """``(key, fn(entry))`` over this process's mergeable entries in key order, each entry read by the worker
    that processes it: a whole-model pass (statistics before a merge) on ``workers`` threads, within the budget."""
    workers = default_workers(tasks.device) if workers is None else workers
    keys = [key for key in tasks.own_keys if tasks.is_mergeable(key)]
    keys_bar = tqdm(keys, desc=description, disable=not progress, unit="entry", leave=False)
    cost = lambda key: workspace_bytes(tasks.shape(key), tasks.num_tasks)  # noqa: E731  (as the merge budgets)
    yield from map_in_order(lambda key: fn(tasks.entry(key)), keys_bar, workers, label=lambda key: key, cost=cost)

"""Normalized accuracy as a function of α for several task subsets (Fig. 7).

For each method and subset of tasks, the subset's checkpoints are merged once and the merged model θ0 + α·τMT is
evaluated at every α of the grid (the method's own grid ``linspace(0, max, n_eval_points)[1:]`` unless the
analysis gives one), rewriting the encoder's weights in place: each further α costs only forward passes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from tqdm.auto import tqdm

from ..config import ConfigError
from ..data import benchmark_tasks, task_list
from ..evaluation.alpha_search import alpha_grid
from ..evaluation.metrics import first_best, metrics_section
from ..merging import TaskVectors, build_method, merge
from .common import EvalSession, calibrate_if_needed

__all__ = ["alpha_sweep", "resolve_subsets"]

log = logging.getLogger(__name__)


def resolve_subsets(subsets: Any, benchmark: str = "paper") -> list[tuple[str, list[str]]]:
    """Subsets as (label, datasets): an integer n is the first n tasks of the model's benchmark (label
    ``n tasks``; counts beyond the benchmark's size are skipped with a warning, so one config serves the 20-task
    benchmark and the 8-task demo), a list is an explicit task list, a mapping gives labels to lists or integers."""
    if isinstance(subsets, Mapping):
        items = list(subsets.items())
    elif isinstance(subsets, Sequence) and not isinstance(subsets, str):
        items = [(None, s) for s in subsets]
    else:
        raise ConfigError(f"analysis.subsets must be a list (or mapping) of task counts / task lists, got {subsets!r}")
    available = len(benchmark_tasks(benchmark))
    out = []
    for label, subset in items:
        try:
            if isinstance(subset, int) and not isinstance(subset, bool):
                if subset > available:
                    log.warning("skipping the subset of %d tasks: the %s benchmark has %d", subset, benchmark,
                                available)
                    continue
                datasets = task_list(num_tasks=subset, benchmark=benchmark)
                label = label or f"{subset} tasks"
            elif isinstance(subset, Sequence) and not isinstance(subset, str):
                datasets = task_list(datasets=[str(d) for d in subset])
                label = label or "+".join(datasets)
            else:
                raise ValueError(f"a subset is a task count or a list of dataset names, got {subset!r}")
        except ValueError as exc:
            raise ConfigError(f"analysis.subsets: {exc}") from None
        out.append((str(label), datasets))
    if not out:
        raise ConfigError("analysis.subsets is empty")
    return out


def alpha_sweep(session: EvalSession, subsets: Sequence[tuple[str, Sequence[str]]],
                methods: Mapping[str, Mapping[str, Any]], *, alphas: Sequence[float] | None = None,
                n_eval_points: int = 31, progress: bool = False) -> dict[str, Any]:
    """``{"split", "methods": {method: {"alphas", "subsets": [{"label", "datasets", "avg_top1": [...],
    "avg_normalized_top1": [...], "per_dataset": {split: [...]}, "best_alpha", "best_avg_normalized_top1"}]}}}``.

    ``methods`` maps method names to their engine parameters; ``session`` must hold every dataset of the subsets.
    Every (method, subset) is merged first (τMT kept on the CPU); then each dataset is evaluated for every merge
    that contains it and every α, so that its images are preprocessed once and only one dataset's images are
    held in memory at a time.
    """
    assert session.tasks is not None
    index = {d: i for i, d in enumerate(session.datasets)}
    grids: dict[str, list[float]] = {}
    merged: dict[tuple[str, int], dict[str, Any]] = {}
    unscaled: dict[tuple[str, int], frozenset[str]] = {}  # entries α does not multiply (ESM)
    for name, params in methods.items():
        method = build_method(name, dict(params))
        if method.task_specific:
            raise ConfigError(f"method {name} evaluates each task with its own vector: it has no α to sweep")
        grids[name] = [float(a) for a in alphas] if alphas else alpha_grid(method, n_eval_points)
        for s, (label, datasets) in enumerate(subsets):
            tasks = TaskVectors(session.tasks.pretrained, [session.tasks.finetuned[index[d]] for d in datasets],
                                names=list(datasets), device=session.tasks.device)
            subset_method = build_method(name, dict(params))
            calibrate_if_needed(subset_method, tasks, session.settings, datasets, session.evaluator.encoder,
                                session.preprocess)
            result = merge(subset_method, tasks, progress=progress)
            merged[(name, s)] = result.task_vector or {}
            unscaled[(name, s)] = frozenset(k for k in merged[(name, s)] if not subset_method.alpha_scaled(k))
    # top1[(method, subset)][dataset] = [top-1 at each α]
    top1: dict[tuple[str, int], dict[str, list[float]]] = {key: {} for key in merged}
    device = session.evaluator.runtime.device
    for d in tqdm(session.datasets, desc="datasets", disable=not progress, unit="dataset"):
        session.cache(d)
        for (name, s), tau in merged.items():
            if d not in subsets[s][1]:
                continue
            on_device = {k: v.to(device) for k, v in tau.items()}
            scores = []
            for alpha in tqdm(grids[name], desc=f"{name} {subsets[s][0]} {d}", disable=not progress, leave=False,
                              unit="α"):
                session.set_weights(on_device, alpha, unscaled[(name, s)])
                scores.append(session.top1(d, f"α={alpha:g}"))
            top1[(name, s)][d] = scores
            del on_device
        session.release(d)
    session.weights.reset()
    out: dict[str, Any] = {"split": session.split, "methods": {}}
    for name in methods:
        rows = []
        for s, (label, datasets) in enumerate(subsets):
            sections = [metrics_section({session.split_name(d): top1[(name, s)][d][j] for d in datasets},
                                        session.ft_accuracies) for j in range(len(grids[name]))]
            scores = [x["avg_normalized_top1"] for x in sections]
            best = first_best(scores)
            rows.append({
                "label": label, "datasets": list(datasets),
                "avg_top1": [x["avg_top1"] for x in sections],
                "avg_normalized_top1": scores,
                "per_dataset": {session.split_name(d): top1[(name, s)][d] for d in datasets},
                "best_alpha": grids[name][best], "best_avg_normalized_top1": scores[best],
            })
        out["methods"][name] = {"alphas": grids[name], "subsets": rows}
    return out

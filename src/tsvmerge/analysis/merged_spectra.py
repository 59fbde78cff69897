"""Singular-value spectra of the merged task vector τMT, one per merging method (no data).

The methods differ in how they shape the merged matrices: Task Arithmetic keeps the decaying spectrum of Σ τi,
TSV-M keeps T·⌊r/T⌋ decorrelated components, Iso-C flattens every spectrum (all singular values equal). Each
method is merged once (one τMT in memory at a time) and every 2-D entry of its τMT reduced to its singular values
and a few numbers that summarize their shape.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from ..merging import MergeMethod, TaskVectors, available_methods, merge
from ..merging.registry import method_class
from .common import block_index, layer_label
from .spectra import ENERGY_LEVELS, rank_for_energy

__all__ = [
    "check_shared_vector_methods",
    "effective_rank",
    "merged_spectra",
    "merged_spectra_markdown",
    "method_overview",
    "numerical_rank",
    "shared_vector_problem",
    "spectrum_summary",
    "summary_rows",
]


# ------------------------------------------------------------------------------------------------ which methods

def shared_vector_problem(cls: type[MergeMethod]) -> str | None:
    """Why a method has no shared τMT whose spectrum could be drawn (None when it has one), from its traits."""
    if cls.task_specific:
        return f"{cls.name} evaluates each task with its own vector: it has no shared τMT"
    if not cls.uses_finetuned:
        return f"{cls.name} is the pre-trained model itself: its τMT is zero"
    return None


def check_shared_vector_methods(names: Sequence[str]) -> None:
    """Raise one ValueError naming every method of ``names`` that is unknown or has no shared τMT (before any
    checkpoint is read), and listing the methods that have one."""
    problems = []
    for name in names:
        try:
            problem = shared_vector_problem(method_class(name))
        except ValueError:
            problem = f"unknown method {name!r}"
        if problem:
            problems.append(problem)
    if problems:
        shared = [m for m in available_methods() if shared_vector_problem(method_class(m)) is None]
        raise ValueError(f"analysis.methods: {'; '.join(problems)}. Methods with a shared τMT: {', '.join(shared)}")


# --------------------------------------------------------------------------------------------- one spectrum

def effective_rank(singular_values: torch.Tensor) -> float:
    """exp of the entropy of σ / Σσ (Roy & Vetterli, 2007): r for a flat spectrum, 1 for rank one, 0 for zero.

    Unlike a count of components above a threshold, it tells a slowly decaying spectrum from a flat one."""
    s = singular_values.double()
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(torch.exp(-(p * p.log()).sum()))


def numerical_rank(singular_values: torch.Tensor, shape: Sequence[int]) -> int:
    """Components above float32 round-off (σ > σ₁ · max(shape) · eps, NumPy's ``matrix_rank`` rule): TSV-M's
    τMT has T·⌊r/T⌋ of them, the rest of its spectrum is round-off."""
    if len(singular_values) == 0:
        return 0
    tolerance = float(singular_values[0]) * max(shape) * torch.finfo(torch.float32).eps
    return int((singular_values > tolerance).sum())


def spectrum_summary(singular_values: torch.Tensor, shape: Sequence[int]) -> dict[str, Any]:
    """The shape of one spectrum (σ₁ ≥ σ₂ ≥ ... ≥ σᵣ) in a few numbers. σ_max/σ_min is None when σ_min is 0;
    for a rank-deficient τMT it measures round-off, so the ratio to the smallest σ above round-off is given too."""
    rank = len(singular_values)
    s_max, s_min = float(singular_values[0]), float(singular_values[-1])
    kept = numerical_rank(singular_values, shape)
    erank = effective_rank(singular_values)
    components = {str(level): rank_for_energy(singular_values, level) for level in ENERGY_LEVELS}
    return {
        "rank": rank, "sigma_max": s_max, "sigma_min": s_min,
        "sigma_max_over_min": s_max / s_min if s_min > 0 else None,
        "sigma_max_over_min_nonzero": s_max / float(singular_values[kept - 1]) if kept else None,
        "numerical_rank": kept,
        "effective_rank": erank, "effective_rank_fraction": erank / rank,
        "components_for_energy": components,
        "fraction_for_energy": {level: n / rank for level, n in components.items()},
    }


# ------------------------------------------------------------------------------------------------- all methods

def merged_spectra(tasks: TaskVectors, methods: Mapping[str, MergeMethod], *, progress: bool = False,
                   calibrate: Callable[[MergeMethod], None] | None = None) -> dict[str, Any]:
    """Merge ``tasks`` with every method (name -> configured method) and take the spectrum of each 2-D entry of
    its τMT (α not applied: it scales a spectrum without changing its shape).

    Returns ``{"tasks", "methods": {name: {"run_name", "params"}}, "per_entry": {key: {"shape", "label",
    "block_index", "singular_values": {method: [σ1 ≥ ...]}, "summary": {method: spectrum_summary}}}}``, entries in
    state-dict order (entries no task changed are absent: every method's τMT is zero there). ``calibrate`` runs the
    calibration pass of each data-aware method (ESM, RegMean) before its merge.
    """
    problems = [p for p in (shared_vector_problem(type(m)) for m in methods.values()) if p]
    if problems:
        raise ValueError("; ".join(problems))
    per_entry: dict[str, dict[str, Any]] = {}
    for name, method in methods.items():
        if calibrate is not None:
            calibrate(method)
        task_vector = merge(method, tasks, progress=progress).task_vector or {}
        matrices = [(k, v) for k, v in task_vector.items() if v.ndim == 2]
        for key, tau in tqdm(matrices, desc=f"spectra ({name})", disable=not progress, unit="entry"):
            values = torch.linalg.svdvals(tau.to(tasks.device, torch.float32)).cpu()
            entry = per_entry.setdefault(key, {"shape": list(tau.shape), "label": layer_label(key),
                                               "block_index": block_index(key), "singular_values": {},
                                               "summary": {}})
            entry["singular_values"][name] = values.tolist()
            entry["summary"][name] = spectrum_summary(values, tau.shape)
        del task_vector, matrices
    order = {key: i for i, key in enumerate(tasks.keys)}
    return {
        "tasks": list(tasks.names),
        "methods": {name: {"run_name": m.run_name(), "params": _params(m)} for name, m in methods.items()},
        "per_entry": dict(sorted(per_entry.items(), key=lambda item: order.get(item[0], len(order)))),
    }


def _params(method: MergeMethod) -> dict[str, Any]:
    """The configured parameters (after :meth:`MergeMethod.for_benchmark`), recorded beside the spectra."""
    return {f.name: getattr(method, f.name) for f in dataclasses.fields(method)}


# --------------------------------------------------------------------------------------------------- tables

def summary_rows(spectra: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per (entry, method): the CSV of the summaries."""
    rows = []
    for key, entry in spectra["per_entry"].items():
        for method, s in entry["summary"].items():
            rows.append({
                "layer": key, "label": entry["label"], "shape": "x".join(map(str, entry["shape"])),
                "method": method, **{k: v for k, v in s.items() if not isinstance(v, dict)},
                **{f"components_for_{level}_energy": n for level, n in s["components_for_energy"].items()},
                **{f"fraction_for_{level}_energy": f for level, f in s["fraction_for_energy"].items()},
            })
    return rows


def method_overview(spectra: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per method, over its 2-D entries: means of the rank-relative numbers, medians of σ_max/σ_min (entries with
    σ_min = 0 left out) and of σ_max over the smallest σ above round-off."""
    overview = {}
    for method in spectra["methods"]:
        summaries = [e["summary"][method] for e in spectra["per_entry"].values() if method in e["summary"]]
        if not summaries:
            overview[method] = {"entries": 0}
            continue
        ratios = [s["sigma_max_over_min"] for s in summaries if s["sigma_max_over_min"] is not None]
        nonzero = [s["sigma_max_over_min_nonzero"] for s in summaries if s["sigma_max_over_min_nonzero"] is not None]
        overview[method] = {
            "entries": len(summaries),
            "mean_effective_rank_fraction": statistics.fmean(s["effective_rank_fraction"] for s in summaries),
            "mean_numerical_rank_fraction": statistics.fmean(s["numerical_rank"] / s["rank"] for s in summaries),
            **{f"mean_fraction_for_{level}_energy": statistics.fmean(s["fraction_for_energy"][level]
                                                                      for s in summaries)
               for level in summaries[0]["fraction_for_energy"]},
            "median_sigma_max_over_min": statistics.median(ratios) if ratios else None,
            "median_sigma_max_over_min_nonzero": statistics.median(nonzero) if nonzero else None,
        }
    return overview


def _number(value: float | None, none: str = "") -> str:
    """Three significant digits; ``none`` for a missing value (``∞`` for σ_max/σ_min when σ_min is 0)."""
    if value is None:
        return none
    return f"{value:.3g}" if math.isfinite(value) else str(value)


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def merged_spectra_markdown(spectra: Mapping[str, Any], keys: Sequence[str], labels: Mapping[str, str],
                            title: str) -> str:
    """Per method: the shape of its spectra averaged over the 2-D entries; then the same per entry of ``keys``
    (the figure's panels). Fractions are of each entry's rank r."""
    levels = [str(level) for level in ENERGY_LEVELS]
    head = ["effective rank / r (%)", "numerical rank / r (%)",
            *(f"components for {100 * float(level):g} % energy / r (%)" for level in levels)]
    lines = [f"### {title}", "",
             "Means over the 2-D entries of τMT (numerical rank: components above float32 round-off; nonzero σ: "
             "the smallest of those).", "",
             "| method | entries | " + " | ".join(head) + " | median σ_max/σ_min | median σ_max/σ_min (nonzero σ) |",
             "| --- | ---: | " + " | ".join("---:" for _ in head) + " | ---: | ---: |"]
    for method, o in method_overview(spectra).items():
        if not o["entries"]:
            lines.append(f"| {labels.get(method, method)} | 0 |" + " |" * (len(head) + 2))
            continue
        cells = [_pct(o["mean_effective_rank_fraction"]), _pct(o["mean_numerical_rank_fraction"]),
                 *(_pct(o[f"mean_fraction_for_{level}_energy"]) for level in levels),
                 _number(o["median_sigma_max_over_min"], "∞"), _number(o["median_sigma_max_over_min_nonzero"])]
        lines.append(f"| {labels.get(method, method)} | {o['entries']} | " + " | ".join(cells) + " |")
    columns = ["r", "σ_max", "σ_max/σ_min", "σ_max/σ_min (nonzero σ)", "effective rank", "numerical rank",
               *(f"{100 * float(level):g} % energy" for level in levels)]
    lines += ["", "Drawn layers (numbers of components out of r).", "",
              "| layer | method | " + " | ".join(columns) + " |",
              "| --- | --- | " + " | ".join("---:" for _ in columns) + " |"]
    for key in keys:
        entry = spectra["per_entry"][key]
        for method, s in entry["summary"].items():
            lines.append(f"| {entry['label']} | {labels.get(method, method)} | {s['rank']} | "
                         f"{_number(s['sigma_max'])} | {_number(s['sigma_max_over_min'], '∞')} | "
                         f"{_number(s['sigma_max_over_min_nonzero'])} | "
                         f"{s['effective_rank']:.1f} | {s['numerical_rank']} | "
                         + " | ".join(str(s["components_for_energy"][level]) for level in levels) + " |")
    return "\n".join(lines) + "\n"

"""Figures of the low-rank structure: singular-value spectra, energy kept, Procrustes error (Fig. 5), accuracy of
rank-truncated task vectors (Fig. 2 / 16)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .style import METHOD_LABELS, figure, method_color, save_figure

__all__ = ["plot_energy", "plot_merged_spectra", "plot_procrustes", "plot_spectra", "plot_truncation", "task_colors"]

#: Per method, by its position in a figure: line styles and markers that keep coinciding curves apart.
_LINE_STYLES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "^", "D", "v", "P")


def _format_plain(value: float, _pos: Any = None) -> str:
    return f"{value:g}"


def _plain_formatter() -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(_format_plain)


def task_colors(n: int) -> list[Any]:
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _grid(n: int, ncols: int = 3) -> tuple[int, int]:
    ncols = max(1, min(ncols, n))
    return math.ceil(n / ncols), ncols


def plot_spectra(spectra: Mapping[str, Any], keys: Sequence[str], path: str | Path, *, num_tasks: int,
                 title: str = "") -> Path:
    """σj / σ1 against j / r for every task, one panel per layer of ``keys`` (log scale); the dashed line is TSV's
    cut at 1/T."""
    per_entry = spectra["per_entry"]
    tasks = list(spectra["tasks"])
    colors = dict(zip(tasks, task_colors(len(tasks)), strict=True))
    nrows, ncols = _grid(len(keys))
    rows = []
    with figure(nrows, ncols, figsize=(4.3 * ncols, 3.5 * nrows + 0.8), squeeze=False,
                layout="constrained") as (fig, axes):
        for ax, key in zip(axes.flat, keys, strict=False):
            entry = per_entry[key]
            for task, values in entry["singular_values"].items():
                s = np.asarray(values, dtype=float)
                x = np.arange(1, len(s) + 1) / len(s)
                y = s / s[0] if s[0] > 0 else s
                ax.plot(x, np.where(y > 0, y, np.nan), color=colors[task], lw=1.6, label=task)
                rows += [{"layer": key, "task": task, "index": i + 1, "fraction": float(f), "sigma": float(v),
                          "sigma_relative": float(r)} for i, (f, v, r) in enumerate(zip(x, s, y, strict=True))]
            ax.axvline(1 / num_tasks, color="k", ls="--", lw=1.2, label="1/T")
            ax.set_yscale("log")
            ax.set_title(f"{entry['label']} {tuple(entry['shape'])}", fontsize=11)
            ax.set_xlabel("component index j / r")
            ax.set_ylabel("σⱼ / σ₁")
        for ax in list(axes.flat)[len(keys):]:
            ax.set_visible(False)
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 6))
        fig.suptitle(title or "Singular-value spectra of the task matrices")
    data = {"title": title, "num_tasks": num_tasks, "layers": list(keys),
            "per_entry": {k: per_entry[k] for k in keys}}
    return save_figure(fig, path, data, rows)


def plot_merged_spectra(spectra: Mapping[str, Any], keys: Sequence[str], path: str | Path, *,
                        normalize: bool = False, title: str = "") -> Path:
    """σⱼ of τMT (or σⱼ / σ₁ with ``normalize``) against the component index j, one panel per layer of ``keys``,
    one line per method (log scale), so that the methods' spectra (flat, truncated, decaying) sit side by side.

    Each panel's y axis spans the singular values above float32 round-off (an entry's ``numerical_rank`` in its
    summary); the zero singular values of a rank-deficient τMT (TSV-M's beyond T·⌊r/T⌋) drop off its bottom.
    Line styles and markers differ per method, so that coinciding spectra (Iso-C's and Iso-CTS' flat ones, with
    ``normalize``) stay visible."""
    from matplotlib.ticker import MaxNLocator

    per_entry = spectra["per_entry"]
    methods = list(spectra["methods"])
    nrows, ncols = _grid(len(keys))
    rows, legend = [], {}
    with figure(nrows, ncols, figsize=(4.3 * ncols, 3.5 * nrows + 0.8), squeeze=False,
                layout="constrained") as (fig, axes):
        for ax, key in zip(axes.flat, keys, strict=False):
            entry = per_entry[key]
            lowest, highest = np.inf, 0.0
            for index, method in enumerate(methods):
                if method not in entry["singular_values"]:
                    continue
                s = np.asarray(entry["singular_values"][method], dtype=float)
                y = s / s[0] if normalize and s[0] > 0 else s
                j = np.arange(1, len(s) + 1)
                label = METHOD_LABELS.get(method, method)
                (line,) = ax.plot(j, np.where(y > 0, y, np.nan), color=method_color(method, index), lw=1.6,
                                  ls=_LINE_STYLES[index % len(_LINE_STYLES)], label=label,
                                  marker=_MARKERS[index % len(_MARKERS)] if len(s) <= 40 else None, ms=3.5)
                legend.setdefault(label, line)
                kept = int(entry.get("summary", {}).get(method, {}).get("numerical_rank", np.count_nonzero(s > 0)))
                if kept:
                    lowest, highest = min(lowest, float(y[kept - 1])), max(highest, float(y[0]))
                rows += [{"layer": key, "method": method, "index": int(i), "sigma": float(v),
                          "sigma_relative": float(v / s[0]) if s[0] > 0 else 0.0} for i, v in zip(j, s, strict=True)]
            ax.set_yscale("log")
            if 0 < lowest < highest:
                ax.set_ylim(lowest / 1.5, highest * 1.5)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_title(f"{entry['label']} {tuple(entry['shape'])}", fontsize=11)
            ax.set_xlabel("component index j")
            ax.set_ylabel("σⱼ / σ₁" if normalize else "σⱼ")
        for ax in list(axes.flat)[len(keys):]:
            ax.set_visible(False)
        fig.legend(list(legend.values()), list(legend), loc="outside lower center", ncol=min(len(legend), 6))
        fig.suptitle(title or "Singular values of the merged task vector")
    data = {"title": title, "normalize": normalize, "methods": spectra["methods"], "layers": list(keys),
            "per_entry": {k: per_entry[k] for k in keys}}
    return save_figure(fig, path, data, rows)


def energy_at(values: Sequence[float], fractions: np.ndarray) -> np.ndarray:
    """Fraction of Σσ² kept by the top max(1, ⌊f·r⌋) components, for each fraction f (as the truncation analysis)."""
    s2 = np.square(np.asarray(values, dtype=float))
    total = s2.sum()
    cumulative = np.concatenate([[0.0], np.cumsum(s2) / total]) if total > 0 else np.ones(len(s2) + 1)
    k = np.floor(fractions * len(s2) + 1e-9).astype(int).clip(1, len(s2))
    return cumulative[k]


def plot_energy(spectra: Mapping[str, Any], path: str | Path, *, num_tasks: int, title: str = "") -> Path:
    """Energy kept (Σ top-k σ² / Σ σ²) against the fraction of components kept, mean over layers, per task."""
    per_entry = spectra["per_entry"]
    tasks = list(spectra["tasks"])
    max_rank = max((min(e["shape"]) for e in per_entry.values()), default=1)
    fractions = np.unique(np.concatenate([np.geomspace(1 / max_rank, 1, 80), [1 / num_tasks]]))
    rows, curves = [], {}
    with figure(figsize=(7, 4.6)) as (fig, ax):
        for task, color in zip(tasks, task_colors(len(tasks)), strict=True):
            layers = [energy_at(e["singular_values"][task], fractions) for e in per_entry.values()
                      if task in e["singular_values"]]
            if not layers:
                continue
            mean = np.mean(layers, axis=0)
            curves[task] = mean.tolist()
            ax.plot(fractions, mean, color=color, label=task)
            rows += [{"task": task, "fraction": float(f), "energy": float(v)}
                     for f, v in zip(fractions, mean, strict=True)]
        ax.axvline(1 / num_tasks, color="k", ls="--", lw=1.2, label=f"1/T = 1/{num_tasks}")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(_plain_formatter())
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("fraction of singular components kept")
        ax.set_ylabel(r"fraction of $\Vert\tau_i\Vert_F^2$ kept (mean over layers)")
        ax.set_title(title or "Energy of the task matrices in their top components")
        ax.legend(loc="lower right", ncol=2 if len(tasks) > 6 else 1)
    return save_figure(fig, path, {"title": title, "fractions": fractions.tolist(), "energy": curves}, rows)


def plot_procrustes(table: Mapping[str, Any], path: str | Path, *, title: str = "", log: bool = True) -> Path:
    """Violin plots over layers of ‖Û − U⊥‖F and ‖V̂ − V⊥‖F, full rank vs rank ⌊r/T⌋ per task (Fig. 5)."""
    per_entry = table["per_entry"]
    rows = [{"layer": key, "label": e["label"], "rank": rank, "factor": factor, "error": e[rank][factor],
             "relative_error": e[rank][f"{factor}_relative"]}
            for key, e in per_entry.items() for rank in ("full_rank", "low_rank") for factor in ("U", "V")]
    colors = {"full_rank": "#1f77b4", "low_rank": "#d62728"}
    names = {"full_rank": "full rank", "low_rank": "rank ⌊r/T⌋"}
    with figure(1, 2, figsize=(9, 4.6), sharey=True) as (fig, axes):
        for ax, factor in zip(axes, ("U", "V"), strict=True):
            groups = []
            for rank in ("full_rank", "low_rank"):
                values = np.array([e[rank][factor] for e in per_entry.values()], dtype=float)
                groups.append(np.log10(np.maximum(values, 1e-12)) if log else values)
            if all(len(g) > 0 for g in groups):
                parts = ax.violinplot(groups, positions=[1, 2], showmedians=True, showextrema=True)
                for body, rank in zip(parts["bodies"], ("full_rank", "low_rank"), strict=True):
                    body.set_facecolor(colors[rank])
                    body.set_edgecolor("k")
                    body.set_alpha(0.55)
                for part in ("cmedians", "cmins", "cmaxes", "cbars"):
                    parts[part].set_color("k")
                    parts[part].set_linewidth(1.2)
                rng = np.random.default_rng(0)
                for pos, (g, rank) in enumerate(zip(groups, ("full_rank", "low_rank"), strict=True), start=1):
                    ax.scatter(pos + rng.uniform(-0.06, 0.06, len(g)), g, s=10, color=colors[rank], alpha=0.8,
                               zorder=3)
            ax.set_xticks([1, 2], [names["full_rank"], names["low_rank"]])
            ax.set_title(rf"$\Vert\hat{{{factor}}} - {factor}_\perp\Vert_F$ per layer")
            ax.grid(axis="x", visible=False)
        if log:
            lo, hi = axes[0].get_ylim()
            ticks = _log_ticks(lo, hi)
            axes[0].set_yticks(np.log10(ticks), [f"{t:g}" for t in ticks])
            axes[0].set_ylim(lo, hi)
        axes[0].set_ylabel("Procrustes approximation error" + (" (log scale)" if log else ""))
        fig.suptitle(title or "Procrustes approximation error: full rank vs low rank")
    return save_figure(fig, path, {"title": title, "per_entry": per_entry, "log_scale": log}, rows)


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Tick values 1, 2, 5 × 10^k whose log10 lies in [lo, hi] (whole decades only when the range is wide)."""
    steps = (1, 2, 5) if hi - lo < 3 else (1,)
    ticks = [m * 10.0**e for e in range(math.floor(lo), math.ceil(hi) + 1) for m in steps]
    ticks = [t for t in ticks if lo <= math.log10(t) <= hi]
    return ticks or [10.0 ** round((lo + hi) / 2)]


def plot_truncation(curves: Mapping[str, Any], path: str | Path, *, title: str = "") -> Path:
    """Per task, top-1 of θ0 + rank-truncated τi against the fraction of components kept (Fig. 2 / 16), with the
    fine-tuned (θ0 + τi) and zero-shot accuracies as reference lines; last panel: mean normalized accuracy."""
    fractions = np.asarray(curves["fractions"], dtype=float)
    tasks = curves["tasks"]
    num_tasks = curves.get("num_tasks", len(tasks))
    nrows, ncols = _grid(len(tasks) + 1, 4)
    rows = []
    with figure(nrows, ncols, figsize=(3.9 * ncols, 3.3 * nrows + 0.8), squeeze=False,
                layout="constrained") as (fig, axes):
        flat = list(axes.flat)
        for ax, (task, c) in zip(flat, tasks.items(), strict=False):
            top1 = 100 * np.asarray(c["top1"], dtype=float)
            ax.plot(fractions, top1, "-o", color="#d62728", label="θ0 + truncated τᵢ")
            ax.axhline(100 * c["finetuned_top1"], color="k", ls="--", lw=1.4, label="fine-tuned (full rank)")
            if c.get("zeroshot_top1") is not None:
                ax.axhline(100 * c["zeroshot_top1"], color="#7f7f7f", ls=":", lw=1.6, label="zero-shot")
            ax.axvline(1 / num_tasks, color="#1f77b4", ls="-.", lw=1.0, label="1/T")
            refs = [100 * c["finetuned_top1"]] + ([100 * c["zeroshot_top1"]] if c.get("zeroshot_top1") is not None
                                                   else [])
            lo, hi = min(np.nanmin(top1), *refs), max(np.nanmax(top1), *refs)
            ax.set_ylim(max(0.0, lo - 5), min(100.0, hi + 5) if hi + 5 > lo else lo + 10)
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(_plain_formatter())
            ax.set_title(task)
            ax.set_xlabel("fraction of components kept")
            ax.set_ylabel("top-1 (%)")
            rows += [{"task": task, "fraction": float(f), "top1": a, "normalized_top1": n, "mean_rank": r,
                      "finetuned_top1": c["finetuned_top1"], "zeroshot_top1": c.get("zeroshot_top1"),
                      "published_finetuned_top1": c.get("published_finetuned_top1")}
                     for f, a, n, r in zip(fractions, c["top1"], c["normalized_top1"], c["mean_rank"], strict=True)]
        ax = flat[len(tasks)]
        ratios = [np.asarray(c["top1"], dtype=float) / c["finetuned_top1"] for c in tasks.values()
                  if c["finetuned_top1"] > 0]  # a task the fine-tuned model gets all wrong has no ratio
        relative = 100 * np.mean(ratios, axis=0) if ratios else np.full(len(fractions), np.nan)
        ax.plot(fractions, relative, "-o", color="#2ca02c", label="mean of top-1 / fine-tuned top-1")
        ax.axhline(100, color="k", ls="--", lw=1.4)
        ax.axvline(1 / num_tasks, color="#1f77b4", ls="-.", lw=1.0)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(_plain_formatter())
        ax.set_title("all tasks")
        ax.set_xlabel("fraction of components kept")
        ax.set_ylabel("% of fine-tuned top-1")
        for extra in flat[len(tasks) + 1:]:
            extra.set_visible(False)
        handles, labels = flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=len(labels))
        fig.suptitle(title or "Accuracy of rank-truncated task vectors")
    data = dict(curves)
    data["relative_to_finetuned_mean"] = relative.tolist()
    data["title"] = title
    return save_figure(fig, path, data, rows)

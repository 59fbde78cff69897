"""Figures of Singular Task Interference: STI across layers (Fig. 6 / 14), Gram heat-maps (Fig. 3),
STI vs accuracy (Fig. 8)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..merging.interference import block_overlap
from .style import METHOD_LABELS, figure, method_color, save_figure

__all__ = ["plot_gram_heatmap", "plot_sti_layers", "plot_sti_vs_accuracy"]

VARIANT_STYLE = {
    "full_rank_before": ("full rank", "#1f77b4", "-", "o"),
    "full_rank_after": ("full rank, orthogonalized", "#1f77b4", "--", "s"),
    "low_rank_before": ("rank ⌊r/T⌋ per task", "#d62728", "-", "^"),
    "low_rank_after": ("rank ⌊r/T⌋, orthogonalized (TSV-M)", "#d62728", "--", "v"),
}


def _block_order(per_block: Mapping[str, Any]) -> list[str]:
    def key(block: str) -> tuple[str, int]:
        prefix, _, index = block.rpartition(".")
        return (prefix, int(index) if index.isdigit() else -1)

    return sorted(per_block, key=key)


def plot_sti_layers(table: Mapping[str, Any], path: str | Path, *, title: str = "", yscale: str = "log") -> Path:
    """STI per transformer block (sum over its attention and MLP matrices), one line per variant.

    ``table`` is :func:`tsvmerge.analysis.interference.interference_table`'s output. Models without transformer
    blocks are drawn per entry.
    """
    per_block = table["per_block"]
    if per_block:
        names = _block_order(per_block)
        values = per_block
        ticks = [n.rpartition(".")[2] for n in names]
        towers = {n.rpartition(".")[0] for n in names}
        if len(towers) > 1:
            ticks = [n.split(".")[-3] + " " + n.rpartition(".")[2] for n in names]
        xlabel = "transformer block"
    else:
        names = list(table["per_entry"])
        values = table["per_entry"]
        ticks = [table["entries"][n]["label"] for n in names]
        xlabel = "layer"
    variants = [v for v in VARIANT_STYLE if names and v in values[names[0]]]
    rows = []
    with figure(figsize=(max(6.5, 0.45 * len(names) + 3), 4.6)) as (fig, ax):
        x = np.arange(len(names))
        for v in variants:
            label, color, style, marker = VARIANT_STYLE[v]
            y = np.array([values[n][v] for n in names], dtype=float)
            ax.plot(x, np.where(y > 0, y, np.nan) if yscale == "log" else y, style, color=color, marker=marker,
                    label=label)
            rows += [{"layer": n, "variant": v, "sti": float(val)} for n, val in zip(names, y, strict=True)]
        ax.set_xticks(x, ticks, rotation=0 if per_block and len(names) <= 24 else 60,
                      ha="center" if per_block and len(names) <= 24 else "right")
        ax.set_yscale(yscale)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("Singular Task Interference (Eq. 7)")
        ax.set_title(title or "Singular Task Interference per layer")
        ax.legend(loc="best")
    data = {"title": title, "per_block": per_block, "per_entry": table["per_entry"], "entries": table["entries"],
            "total": table["total"], "tasks": table.get("tasks")}
    return save_figure(fig, path, data, rows)


def plot_gram_heatmap(gram: Any, path: str | Path, *, title: str = "") -> Path:
    """|ÛᵀÛ| and |V̂ᵀV̂| of one layer (rows: before / after orthogonalization), task blocks outlined (Fig. 3).

    ``gram`` is a :class:`tsvmerge.analysis.interference.GramData`. The full matrices are saved beside the PNG
    as ``.npz``; the JSON / CSV hold the mean |G − I| and ‖G − I‖F of every pair of task blocks.
    """
    sizes, names = list(gram.block_sizes), list(gram.tasks)
    offsets = np.cumsum([0, *sizes])
    centers = (offsets[:-1] + offsets[1:]) / 2 - 0.5
    tick_size = max(6, 11 - len(names) // 3)
    stages = [s for s in ("before", "after") if s in gram.grams]
    rows, overlap = [], {}
    with figure(len(stages), 2, figsize=(10.5, 4.9 * len(stages) + 0.6), layout="constrained",
                squeeze=False) as (fig, axes):
        image = None
        for i, stage in enumerate(stages):
            overlap[stage] = {}
            for j, factor in enumerate(("U", "V")):
                ax = axes[i][j]
                matrix = gram.grams[stage][factor]
                image = ax.imshow(matrix.abs().numpy(), vmin=0, vmax=1, cmap="magma", interpolation="nearest")
                for o in offsets[1:-1]:
                    ax.axhline(o - 0.5, color="#00e5ff", lw=0.9)
                    ax.axvline(o - 0.5, color="#00e5ff", lw=0.9)
                ax.set_xticks(centers, names, rotation=45, ha="right", fontsize=tick_size)
                ax.set_yticks(centers, names, fontsize=tick_size)
                ax.grid(False)
                hat = "Û" if factor == "U" else "V̂"
                when = "before orthogonalization" if stage == "before" else "after orthogonalization (TSV-M)"
                ax.set_title(f"|{hat}ᵀ{hat}| {when}\nSTI = {gram.sti[stage]:.3g}", fontsize=12)
                table = block_overlap(matrix, sizes)
                overlap[stage][factor] = table
                for a, name_a in enumerate(names):
                    for b, name_b in enumerate(names):
                        rows.append({"stage": stage, "factor": factor, "task_i": name_a, "task_j": name_b,
                                     **table[a][b]})
        fig.colorbar(image, ax=axes, shrink=0.85, label="|cosine similarity| of singular vectors")
        rank = "rank ⌊r/T⌋ per task" if gram.rank == "low" else "full rank"
        fig.suptitle(title or f"{gram.key} ({rank})")
    png = save_figure(fig, path, {"layer": gram.key, "rank": gram.rank, "tasks": names, "block_sizes": sizes,
                                  "sti": gram.sti, "block_overlap": overlap}, rows)
    np.savez_compressed(png.with_suffix(".npz"), **{f"{stage}_{factor}": gram.grams[stage][factor].numpy()
                                                    for stage in stages for factor in ("U", "V")})
    return png


def plot_sti_vs_accuracy(points: Sequence[Mapping[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """Average normalized test accuracy against total STI, one series per method, points labelled by T (Fig. 8).

    Points without an accuracy (no result file) or without an STI are listed in the data files, not drawn.
    """
    complete = [p for p in points if p.get("sti") is not None and p.get("avg_normalized_top1") is not None]
    with figure(figsize=(6.8, 4.8)) as (fig, ax):
        methods = list(dict.fromkeys(p["method"] for p in complete))
        for i, method in enumerate(methods):
            series = sorted((p for p in complete if p["method"] == method), key=lambda p: p["num_tasks"])
            x = [p["sti"] for p in series]
            y = [100 * p["avg_normalized_top1"] for p in series]
            color = method_color(method, i)
            variant = VARIANT_STYLE.get(series[0]["variant"], (series[0]["variant"],))[0]
            ax.plot(x, y, "-o", color=color, label=f"{METHOD_LABELS.get(method, method)}: STI of {variant}")
            for p, xi, yi in zip(series, x, y, strict=True):
                ax.annotate(f"T={p['num_tasks']}", (xi, yi), textcoords="offset points", xytext=(6, 4), fontsize=10)
        values = [p["sti"] for p in complete]
        if complete:
            top = max(values)
            if top > 0 and min(values) > 1e-6 * top:
                ax.set_xscale("log")
                scale = "log scale"
            elif top > 0:  # values at round-off level (an orthogonalized variant) sit at 0, the rest on a log scale
                ax.set_xscale("symlog", linthresh=10 ** math.floor(math.log10(1e-3 * top)))
                ax.set_xlim(left=-0.1 * 10 ** math.floor(math.log10(1e-3 * top)))
                scale = "symmetric log scale"
            else:
                scale = "linear"
            low, high = ax.get_ylim()  # at least 2 points of accuracy: tiny differences must look tiny
            if high - low < 2.0:
                mid = (low + high) / 2
                ax.set_ylim(mid - 1.0, mid + 1.0)
            ax.legend(loc="best")
        else:
            scale = "log scale"
            ax.text(0.5, 0.5, "no result file with test accuracy found\n(run main.py for these methods first)",
                    ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(f"total Singular Task Interference ({scale})")
        ax.set_ylabel("avg. normalized accuracy (%)")
        ax.set_title(title or "Interference vs accuracy")
    return save_figure(fig, path, {"title": title, "points": list(points)}, list(points))

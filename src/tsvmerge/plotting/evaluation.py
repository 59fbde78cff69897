"""Figures of evaluated models: ablation (Table 4), α heat-map (Fig. 7), compression (Table 3), radar (Fig. 4)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .style import figure, method_color, save_figure

__all__ = ["plot_ablation", "plot_alpha_heatmap", "plot_compression", "plot_radar"]


def _bar_labels(ax: Any, bars: Any, values: Sequence[float | None]) -> None:
    for bar, value in zip(bars, values, strict=True):
        text = "n/a" if value is None else f"{value:.1f}"
        height = 0 if value is None else value
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, height), textcoords="offset points", xytext=(0, 3),
                    ha="center", va="bottom", fontsize=10)


def plot_ablation(rows: Sequence[Mapping[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """Average test top-1 and normalized top-1 (%) of each ablation row (Table 4 as bars)."""
    labels = [r["label"] for r in rows]
    absolute = [None if r["avg_top1"] is None else 100 * r["avg_top1"] for r in rows]
    normalized = [None if r["avg_normalized_top1"] is None else 100 * r["avg_normalized_top1"] for r in rows]
    x = np.arange(len(rows))
    with figure(figsize=(max(6.5, 1.9 * len(rows) + 1), 4.6)) as (fig, ax):
        width = 0.38
        b1 = ax.bar(x - width / 2, [v or 0 for v in absolute], width, label="absolute", color="#1f77b4")
        b2 = ax.bar(x + width / 2, [v or 0 for v in normalized], width, label="normalized", color="#ff7f0e")
        _bar_labels(ax, b1, absolute)
        _bar_labels(ax, b2, normalized)
        ax.set_xticks(x, [label.replace(" only", "\nonly").replace(" (", "\n(") for label in labels])
        ax.set_ylabel("avg. test accuracy (%)")
        top = max([v for v in absolute + normalized if v is not None], default=100)
        ax.set_ylim(0, max(100, top) * 1.12)
        ax.grid(axis="x", visible=False)
        ax.set_title(title or "Ablation")
        ax.legend(loc="upper left")
    return save_figure(fig, path, {"title": title, "rows": list(rows)}, list(rows))


def plot_alpha_heatmap(sweep: Mapping[str, Any], path: str | Path, *, title: str = "") -> Path:
    """Average normalized accuracy per α (columns) and task subset (rows), one panel per method; the best α of
    each row is outlined (Fig. 7)."""
    from .style import METHOD_LABELS

    methods = list(sweep["methods"].items())
    rows = []
    # Panels grow with the grid up to a readable size (a 30-point grid would otherwise be a banner).
    widths = [min(7.0, max(4.0, 0.42 * len(m["alphas"]) + 2.2)) for _, m in methods]
    nsub = max(len(m["subsets"]) for _, m in methods)
    with figure(1, len(methods), figsize=(sum(widths) + 1.2, max(3.4, 0.55 * nsub + 2.6)), squeeze=False,
                layout="constrained", gridspec_kw={"width_ratios": widths}) as (fig, axes):
        values_all = [100 * v for _, m in methods for s in m["subsets"] for v in s["avg_normalized_top1"]]
        vmin, vmax = (min(values_all), max(values_all)) if values_all else (0, 100)
        image = None
        for ax, (name, m) in zip(axes[0], methods, strict=True):
            alphas = m["alphas"]
            grid = np.array([[100 * v for v in s["avg_normalized_top1"]] for s in m["subsets"]])
            image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
            step = max(1, len(alphas) // 10)
            ax.set_xticks(range(0, len(alphas), step), [f"{a:.2g}" for a in alphas[::step]])
            same_rows = [s["label"] for s in m["subsets"]] == [s["label"] for s in methods[0][1]["subsets"]]
            first = ax is axes[0][0]
            ax.set_yticks(range(len(m["subsets"])), [s["label"] for s in m["subsets"]] if first or not same_rows
                          else [])
            ax.set_xlabel("α")
            ax.grid(False)
            annotate = len(alphas) <= 12
            for i, s in enumerate(m["subsets"]):
                best = alphas.index(s["best_alpha"])
                ax.add_patch(_outline(best, i))
                for j, a in enumerate(alphas):
                    rows.append({"method": name, "subset": s["label"], "alpha": a,
                                 "avg_normalized_top1": s["avg_normalized_top1"][j], "avg_top1": s["avg_top1"][j],
                                 "best": j == best})
                    if annotate:
                        ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", fontsize=9,
                                color="white" if grid[i, j] < (vmin + vmax) / 2 else "black")
            ax.set_title(METHOD_LABELS.get(name, name))
        fig.colorbar(image, ax=axes, label=f"avg. normalized {sweep.get('split', 'test')} accuracy (%)")
        fig.suptitle(title or "Accuracy across α (best α outlined)")
    return save_figure(fig, path, {"title": title, **sweep}, rows)


def _outline(x: int, y: int) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="red", lw=2.2)


def _byte_unit(largest: float) -> tuple[str, float]:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if largest >= size:
            return unit, size
    return "bytes", 1


def plot_compression(rows: Sequence[Mapping[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """Storage (shared part and per-task parts stacked) and average test accuracy of each row (Table 3)."""
    labels = [r["label"] for r in rows]
    x = np.arange(len(rows))
    unit, size = _byte_unit(max((r["total_bytes"] for r in rows), default=1))
    with figure(1, 2, figsize=(max(9.5, 3.2 * len(rows) + 2), 4.6)) as (fig, (ax_s, ax_a)):
        shared = np.array([r["shared_bytes"] / size for r in rows])
        tasks = np.array([r["per_task_bytes_total"] / size for r in rows])
        ax_s.bar(x, shared, color="#7f7f7f", label=r"shared ($\tau_{\mathrm{MT}}$)")
        bars = ax_s.bar(x, tasks, bottom=shared, color="#1f77b4", label="per task")
        for bar, total in zip(bars, shared + tasks, strict=True):
            ax_s.annotate(f"{total:.3g}", (bar.get_x() + bar.get_width() / 2, total), textcoords="offset points",
                          xytext=(0, 3), ha="center", va="bottom", fontsize=10)
        ax_s.set_xticks(x, labels)
        ax_s.set_ylabel(f"storage of all tasks ({unit})")
        ax_s.set_title("storage")
        ax_s.set_ylim(0, max(shared + tasks, default=1) * 1.15)
        ax_s.legend(loc="upper right")
        ax_s.grid(axis="x", visible=False)
        absolute = [None if r.get("avg_top1") is None else 100 * r["avg_top1"] for r in rows]
        normalized = [None if r.get("avg_normalized_top1") is None else 100 * r["avg_normalized_top1"] for r in rows]
        width = 0.38
        b1 = ax_a.bar(x - width / 2, [v or 0 for v in absolute], width, color="#1f77b4", label="absolute")
        b2 = ax_a.bar(x + width / 2, [v or 0 for v in normalized], width, color="#ff7f0e", label="normalized")
        _bar_labels(ax_a, b1, absolute)
        _bar_labels(ax_a, b2, normalized)
        ax_a.set_xticks(x, labels)
        ax_a.set_ylabel("avg. test accuracy (%)")
        ax_a.set_ylim(0, 128)
        ax_a.set_yticks([0, 20, 40, 60, 80, 100])
        ax_a.set_title("accuracy (task known at test time)")
        ax_a.legend(loc="upper right", ncol=2)
        ax_a.grid(axis="x", visible=False)
        fig.suptitle(title or "Compression: TSV-C vs TALL masks")
    return save_figure(fig, path, {"title": title, "unit": unit, "rows": list(rows)}, list(rows))


def plot_radar(series: Mapping[str, tuple[str, Sequence[float | None]]], datasets: Sequence[str], path: str | Path,
               *, title: str = "", metric: str = "top1") -> Path:
    """One polygon per method over the datasets (Fig. 4). ``series``: {label: (method name, values)}; a missing
    value leaves a gap."""
    angles = np.linspace(0, 2 * np.pi, len(datasets), endpoint=False)
    rows = []
    with figure(figsize=(8.2, 6.4), subplot_kw={"projection": "polar"}) as (fig, ax):
        for i, (label, (method, values)) in enumerate(series.items()):
            y = np.array([np.nan if v is None else 100 * v for v in values], dtype=float)
            closed_x, closed_y = np.append(angles, angles[0]), np.append(y, y[0])
            style = "--" if method == "finetuned" else "-"
            color = method_color(method, i)
            ax.plot(closed_x, closed_y, style, color=color, lw=1.8, label=label, marker="o", markersize=3.5)
            if method != "finetuned":
                ax.fill(closed_x, np.nan_to_num(closed_y), color=color, alpha=0.06)
            rows += [{"label": label, "method": method, "dataset": d, metric: v}
                     for d, v in zip(datasets, values, strict=True)]
        ax.set_theta_offset(np.pi / 2)  # first dataset at the top, clockwise
        ax.set_theta_direction(-1)
        ax.set_xticks(angles, datasets, fontsize=10)
        ax.tick_params(axis="x", pad=10)
        ax.set_ylim(0, 100)
        ax.set_yticks([20, 40, 60, 80, 100], ["20", "40", "60", "80", "100"], fontsize=8, color="#555555")
        ax.set_rlabel_position(180 / len(datasets))  # between the first two axes
        ax.legend(loc="center left", bbox_to_anchor=(1.12, 0.5), fontsize=10)
        name = "top-1 (%)" if metric == "top1" else "normalized top-1 (%)"
        ax.set_title(f"{title}\n{name}" if title else name, pad=18)
    return save_figure(fig, path, {"title": title, "metric": metric, "datasets": list(datasets),
                                   "series": {k: {"method": m, "values": list(v)} for k, (m, v) in series.items()}},
                       rows)

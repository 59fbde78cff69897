"""Shared figure style and saving: matplotlib with the Agg backend, readable fonts, 200 dpi PNGs.

Every figure is written with :func:`save_figure`, which also writes the numbers it shows beside the PNG:
``<stem>.json`` (the data as given) and ``<stem>.csv`` (one row per plotted value), so a figure can be re-drawn or
tabulated without re-running the analysis.
"""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display needed; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ..utils.files import atomic_write, write_json  # noqa: E402
from ..merging.registry import available_methods, display_rank, method_class  # noqa: E402
from ..merging.registry import method_color as declared_color  # noqa: E402

__all__ = ["DPI", "METHOD_LABELS", "STYLE", "figure", "method_color", "save_figure", "write_csv"]

DPI = 200

#: rcParams of every figure: sizes readable in a two-column paper at the figure's own size.
STYLE: dict[str, Any] = {
    "font.size": 12,
    "axes.titlesize": 13,
    "axes.labelsize": 12,
    "xtick.labelsize": 11,
    "ytick.labelsize": 11,
    "legend.fontsize": 10,
    "legend.framealpha": 0.9,
    "figure.titlesize": 14,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linestyle": "--",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 2.0,
    "lines.markersize": 6,
    "savefig.dpi": DPI,
    "savefig.bbox": "tight",
    "image.cmap": "viridis",
}


class _MethodLabels(Mapping[str, str]):
    """Display labels of the registered methods (their ``label`` trait), iterated in the row order of the paper's
    tables; read from the registry on each use, so that a method registered later (a plug-in) counts."""

    def __getitem__(self, method: str) -> str:
        try:
            label = method_class(method).label
        except ValueError:
            raise KeyError(method) from None
        if not label:
            raise KeyError(method)
        return label

    def __iter__(self) -> Iterator[str]:
        names = [n for n in available_methods() if method_class(n).label]
        return iter(sorted(names, key=lambda n: (display_rank(n), n)))

    def __len__(self) -> int:
        return sum(1 for _ in self)


#: Display names of the methods (their ``label`` trait), in the row order of the paper's tables.
METHOD_LABELS: Mapping[str, str] = _MethodLabels()

#: Colour of the fine-tuned models' row (not a merge method: no trait to declare it on).
_FINETUNED_COLOR = "#000000"
_FALLBACK = plt.get_cmap("tab20").colors


def method_color(method: str, index: int = 0) -> Any:
    """The colour of ``method`` (its ``color`` trait; black for ``finetuned``), or a palette colour by ``index``."""
    color = _FINETUNED_COLOR if method == "finetuned" else declared_color(method)
    return color if color is not None else _FALLBACK[index % len(_FALLBACK)]


@contextlib.contextmanager
def figure(*args: Any, **kwargs: Any) -> Iterator[tuple[Figure, Any]]:
    """``plt.subplots(*args, **kwargs)`` under the shared style; the figure is closed on exit."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(*args, **kwargs)
        try:
            yield fig, axes
        finally:
            plt.close(fig)


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]], fieldnames: Sequence[str] | None = None) -> Path:
    """Write ``rows`` (dicts) as CSV atomically; columns are ``fieldnames`` or the union of keys in order of appearance.

    ``None`` is written as an empty cell (missing values stay empty, never zero).
    """
    if fieldnames is None:
        seen: dict[str, None] = {}
        for row in rows:
            seen.update(dict.fromkeys(row))
        fieldnames = list(seen)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fieldnames), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    text = buffer.getvalue()
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def save_figure(fig: Figure, path: str | Path, data: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> Path:
    """Save ``fig`` as a 200 dpi PNG at ``path`` (tight layout) and the numbers beside it (.json, .csv)."""
    png = Path(path).with_suffix(".png")
    with plt.rc_context(STYLE):
        if fig.get_layout_engine() is None:
            fig.tight_layout()

        def write(tmp: Path) -> None:
            fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")

        atomic_write(png, write)
    write_json(png.with_suffix(".json"), data)
    write_csv(png.with_suffix(".csv"), rows)
    return png

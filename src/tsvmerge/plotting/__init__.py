"""Publication figures (matplotlib, Agg backend): one function per figure, a shared style, 200 dpi PNGs with the
plotted numbers saved beside them as JSON and CSV."""

from .evaluation import plot_ablation, plot_alpha_heatmap, plot_compression, plot_radar
from .interference import plot_gram_heatmap, plot_sti_layers, plot_sti_vs_accuracy
from .lowrank import plot_energy, plot_merged_spectra, plot_procrustes, plot_spectra, plot_truncation
from .style import save_figure

__all__ = [
    "plot_ablation",
    "plot_alpha_heatmap",
    "plot_compression",
    "plot_energy",
    "plot_gram_heatmap",
    "plot_merged_spectra",
    "plot_procrustes",
    "plot_radar",
    "plot_spectra",
    "plot_sti_layers",
    "plot_sti_vs_accuracy",
    "plot_truncation",
    "save_figure",
]

"""The analyses' parameters: one dataclass per analysis, the schema of ``config/analysis/<name>.yaml``.

Key names and types are checked by Hydra against the schema generated from these dataclasses
(:func:`tsvmerge.config.store.analysis_schema`); the allowed values are checked here, when a dataclass is built.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ANALYSIS_PARAMS",
    "analysis_schemas",
    "AblationParams",
    "AlphaHeatmapParams",
    "CompressionParams",
    "MergedSpectraParams",
    "ProcrustesParams",
    "SpectraParams",
    "StiAccuracyParams",
    "StiParams",
    "TruncationParams",
]


def _ablation_methods() -> list[str]:
    """Table 4: the methods of the ablation of TSV-M's two components, in its row order (their ``ablation`` trait)."""
    from ..merging.registry import ablation_rows

    return list(ablation_rows())


def _ablation_ends() -> dict[str, str]:
    """Task Arithmetic and TSV-M: the ablation's rows with neither and with both of TSV-M's components, in row
    order, each with the STI variant its merge corresponds to (Fig. 8)."""
    from ..merging.registry import ablation_rows

    return {name: row.sti_variant for name, row in ablation_rows().items()
            if row.low_rank == row.interference_reduction}


def _spectrum_methods() -> list[str]:
    """The methods whose merged τMT spectra are drawn by default (their ``spectrum_compared`` trait)."""
    from ..merging.registry import methods_where

    return methods_where(lambda cls: cls.spectrum_compared)


def _choice(value: Any, key: str, valid: Sequence[str]) -> None:
    if value not in valid:
        raise ValueError(f"analysis.{key}={value!r} is not valid; choose one of: {', '.join(valid)}")


@dataclass
class StiParams:
    full_rank: bool = True
    heatmap: bool = True
    layer: str | None = None
    heatmap_rank: str = "low"
    yscale: str = "log"
    chunk_size: int = 2048
    out_dir: str | None = None

    def __post_init__(self) -> None:
        _choice(self.heatmap_rank, "heatmap_rank", ("low", "full"))
        _choice(self.yscale, "yscale", ("log", "linear"))
        if self.chunk_size < 1:
            raise ValueError(f"analysis.chunk_size must be at least 1, got {self.chunk_size}")


@dataclass
class StiAccuracyParams:
    task_sets: Any = field(default_factory=lambda: [8, 14, 20])
    methods: dict[str, str] = field(default_factory=_ablation_ends)
    run_missing: bool = False
    chunk_size: int = 2048
    out_dir: str | None = None

    def __post_init__(self) -> None:
        from .alpha_heatmap import resolve_subsets
        from .interference import VARIANTS

        if not isinstance(self.methods, dict):
            raise ValueError(f"analysis.methods must map methods to STI variants, got {self.methods!r}")
        for method, variant in self.methods.items():
            _choice(variant, f"methods.{method}", VARIANTS)
        resolve_subsets(self.task_sets)


@dataclass
class SpectraParams:
    layers: list[str] | None = None
    max_panels: int = 6
    out_dir: str | None = None

    def __post_init__(self) -> None:
        if self.max_panels < 1:
            raise ValueError(f"analysis.max_panels must be at least 1, got {self.max_panels}")


@dataclass
class MergedSpectraParams:
    methods: list[str] = field(default_factory=_spectrum_methods)
    layers: list[str] | None = None
    max_panels: int = 6
    normalize: bool = False
    out_dir: str | None = None

    def __post_init__(self) -> None:
        from .merged_spectra import check_shared_vector_methods

        if not isinstance(self.methods, list) or not self.methods or not all(isinstance(m, str) for m in self.methods):
            raise ValueError(f"analysis.methods must be a non-empty list of method names, got {self.methods!r}")
        repeated = sorted({m for m in self.methods if self.methods.count(m) > 1})
        if repeated:
            raise ValueError(f"analysis.methods lists {', '.join(repeated)} more than once")
        check_shared_vector_methods(self.methods)
        _check_layers(self.layers)
        if self.max_panels < 1:
            raise ValueError(f"analysis.max_panels must be at least 1, got {self.max_panels}")


def _check_layers(layers: Any) -> None:
    """``layers`` is null or a non-empty list of entry keys / regular expressions that compile."""
    if layers is None:
        return
    if not isinstance(layers, list) or not layers or not all(isinstance(p, str) for p in layers):
        raise ValueError(f"analysis.layers must be null or a non-empty list of entry keys or regular expressions, "
                         f"got {layers!r}")
    for pattern in layers:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"analysis.layers: {pattern!r} is not a regular expression ({exc})") from None


@dataclass
class ProcrustesParams:
    log_scale: bool = True
    out_dir: str | None = None


@dataclass
class TruncationParams:
    fractions: list[float] = field(default_factory=lambda: [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0])
    split: str = "test"
    include_zeroshot: bool = True
    out_dir: str | None = None

    def __post_init__(self) -> None:
        _choice(self.split, "split", ("test", "val"))
        if not isinstance(self.fractions, list) or not self.fractions or any(
                isinstance(f, bool) or not isinstance(f, int | float) or not 0 < f <= 1 for f in self.fractions):
            raise ValueError(f"analysis.fractions must be non-empty, each in (0, 1]; got {self.fractions}")


@dataclass
class AblationParams:
    methods: list[str] = field(default_factory=_ablation_methods)
    recompute: bool = False
    out_dir: str | None = None


@dataclass
class AlphaHeatmapParams:
    #: Fig. 7: TSV-M, then Task Arithmetic (the ablation's two ends, the one with both components first).
    methods: list[str] = field(default_factory=lambda: list(reversed(_ablation_ends())))
    subsets: Any = field(default_factory=lambda: [4, 8, 14, 20])
    alphas: list[float] | None = None
    split: str = "test"
    out_dir: str | None = None

    def __post_init__(self) -> None:
        from .alpha_heatmap import resolve_subsets

        _choice(self.split, "split", ("test", "val"))
        resolve_subsets(self.subsets)


@dataclass
class CompressionParams:
    evaluate: bool = True
    recompute: bool = False
    svd: str = "exact"
    out_dir: str | None = None

    def __post_init__(self) -> None:
        from ..merging.svd import SVD_MODES

        _choice(self.svd, "svd", SVD_MODES)


#: analysis name -> its parameter dataclass
ANALYSIS_PARAMS: dict[str, type] = {
    "sti": StiParams,
    "sti_accuracy": StiAccuracyParams,
    "spectra": SpectraParams,
    "procrustes": ProcrustesParams,
    "truncation": TruncationParams,
    "ablation": AblationParams,
    "alpha_heatmap": AlphaHeatmapParams,
    "compression": CompressionParams,
    "merged_spectra": MergedSpectraParams,
}


def analysis_schemas() -> list[tuple[str, str, type]]:
    """``(group, name, schema)`` of every analysis, for :class:`~tsvmerge.config.ConfigSource`."""
    from ..config.store import analysis_schema

    return [("analysis", name, analysis_schema(name, params)) for name, params in ANALYSIS_PARAMS.items()]

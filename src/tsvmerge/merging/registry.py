"""The merge-method registry: a method is found by the name used in ``config/method/<name>.yaml``.

A method is a small dataclass whose fields are its parameters (the config keys, e.g. ``k``,
``use_ties``) and which implements two hooks: ``prepare`` computes whole-model statistics in a
first streaming pass when the method needs them (top-k% thresholds, TIES' majority sign, saved
TALL masks), and ``merge_entry`` maps one entry's task tensors to its merged value. The math
itself lives in the pure tensor functions of ``tsv``, ``sparsify`` and ``interference``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from torch import Tensor

from .calibration import CalibrationError, CalibrationSpec, InputStatistic
from .entry_rules import EntryRules
from .task_vectors import TaskEntry, TaskVectors
from .tsv import LowRankFactors


@dataclass
class EntryMerge:
    """What a method produces for one entry.

    ``task_vector`` is the shared τMT entry; ``per_task`` holds one compressed task vector per task
    (TSV-C; ``None`` for an unchanged task); ``masks`` is a uint8 [T, *shape] tensor whose value
    ``> j`` is task t's mask for the method's j-th mask choice (TALL's λ values, say).
    """

    task_vector: Tensor | None = None
    per_task: list[Tensor | LowRankFactors | None] | None = None
    masks: Tensor | None = None
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MaskFiles:
    """How one configuration of a method uses saved TALL-mask files (published format, one mask per task).

    ``reads``: the merge needs a saved file (``file``, or found by the evaluation when none is named);
    ``writes``: the evaluation saves the masks it selects per task on validation; ``variant``: the part of the
    published file name that tells how the masks were built (``""`` or ``"_use_ties_<agg>"``).
    """

    reads: bool
    writes: bool
    variant: str = ""
    #: The file to read, when the configuration names one (else the evaluation finds the saved file).
    file: str | None = None
    #: The method whose runs save such files (named in the message when a file is missing).
    made_by: str = ""
    #: Parameters the masks were built with, recorded in the file and compared when it is read.
    built_with: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AblationRow:
    """A method's row in the ablation of TSV-M's two components (Table 4): which of them it applies."""

    #: Position of the row in the ablation table (and in ``analysis=ablation``'s default method list).
    order: int
    #: The row's label in the ablation table.
    label: str
    #: Each task matrix truncated to its top ⌊r/T⌋ singular components.
    low_rank: bool
    #: The task singular vectors decorrelated (Procrustes).
    interference_reduction: bool

    @property
    def sti_variant(self) -> str:
        """The concatenation of task singular vectors whose interference this merge corresponds to (Fig. 8): full or
        low rank, before or after the interference reduction."""
        rank = "low_rank" if self.low_rank else "full_rank"
        return f"{rank}_{'after' if self.interference_reduction else 'before'}"


@dataclass
class MergeMethod:
    """Base class of every merge method; subclasses are dataclasses of their parameters.

    What the rest of the code needs to know about a method is declared here as traits, so that the evaluation,
    the configuration, the entry points, the analyses and the figures never test a method's name.
    """

    name: ClassVar[str]
    #: Display label in tables, figure legends and ``tsvmerge methods`` ("" for none: the name is shown).
    label: ClassVar[str] = ""
    #: Where the method was published: authors, title, venue and year ("" for none).
    reference: ClassVar[str] = ""
    #: Colour of the method in every figure (hex); None: a palette colour by position.
    color: ClassVar[str | None] = None
    #: Row of the method in the paper-style tables (``report.py``) and label lists, ascending; None: after the
    #: ordered methods, by name.
    display_order: ClassVar[int | None] = None
    #: Row of the method in the demo's results table (``demo.py``), ascending; None: the demo does not run it. The
    #: demo runs these methods in this order, except that a method reading saved masks runs after the one saving them.
    demo_row: ClassVar[int | None] = None
    #: Parameters the demo passes to the method (``key=value``, main.py's ``method.<key>=value``).
    demo_settings: ClassVar[tuple[str, ...]] = ()
    #: The method's row in the ablation of TSV-M's components (Table 4; its two ends, Task Arithmetic and TSV-M, are
    #: also Fig. 7's and Fig. 8's default methods); None: not part of it.
    ablation: ClassVar[AblationRow | None] = None
    #: Compared in the storage / accuracy table of task-specific compression (Table 3, ``analysis=compression``),
    #: in :attr:`display_order`.
    storage_compared: ClassVar[bool] = False
    #: Drawn by default in the figure of merged τMT spectra (``analysis=merged_spectra``), in :attr:`display_order`.
    spectrum_compared: ClassVar[bool] = False
    #: α grid upper bound used on validation (grid linspace(0, max, n)[1:]); None means α is fixed.
    alpha_grid_max: ClassVar[float | None] = None
    #: How α is chosen on validation: ``grid`` (linspace(0, alpha_grid_max, n)[1:]) or ``golden`` (the
    #: golden-section search on [0, alpha_grid_max] of SPEC_ESM E7: 14 evaluations).
    alpha_search: ClassVar[str] = "grid"
    #: A data-aware method's needs (ESM, RegMean): the statistic of its linear maps' inputs and its default
    #: samples per task (:mod:`tsvmerge.merging.calibration`); None: the method is data-free.
    calibration: ClassVar[CalibrationSpec | None] = None
    #: α used when the grid is not searched (zeroshot: 0; TSV-C, masks, average: 1).
    default_alpha: ClassVar[float] = 1.0
    #: Methods whose tasks are evaluated with their own vector (TSV-C, TALL masks, magnitude masks); with mask
    #: choices (:meth:`mask_labels`), each task's choice is selected on its validation split.
    task_specific: ClassVar[bool] = False
    #: False for a method that is the pre-trained model itself (zero-shot): no fine-tuned checkpoint is read.
    uses_finetuned: ClassVar[bool] = True
    #: Methods that ask :class:`~tsvmerge.merging.entry_rules.EntryRules` which matrices go through their SVD (so
    #: ``svd_keys`` / ``average_keys`` change what they compute); the others refuse those overrides.
    uses_entry_rules: ClassVar[bool] = False

    def alpha_sweep_patience(self) -> int | None:
        """Early stopping of the validation α sweep: stop after this many consecutive α values whose mean absolute
        top-1 is not strictly above the best so far (Iso-C / Iso-CTS as published); None sweeps the whole grid."""
        return None

    def for_benchmark(self, model: str | None, num_tasks: int) -> MergeMethod:
        """This configuration with the defaults that depend on the model and number of tasks filled in (CART's
        published λ and rank ratio); ``model`` is None when unknown (a plain checkpoint merge). Default: itself."""
        return self

    def mask_labels(self) -> tuple[Any, ...]:
        """Labels of the mask choices of mask-producing methods (e.g. TALL's λ values); () for others."""
        return ()

    def run_name(self) -> str:
        """The method's part of result-file and run-folder names (``ties_k20_mean``): name plus the parameters
        that tell runs apart."""
        return self.name

    def mask_files(self) -> MaskFiles | None:
        """How this configuration reads or writes saved TALL-mask files (None: it does not)."""
        return None

    def with_mask_file(self, path: str) -> MergeMethod:
        """The same configuration reading its masks from ``path`` (methods whose :meth:`mask_files` reads)."""
        raise ValueError(f"method {self.name!r} reads no mask file")

    def prepare(self, tasks: TaskVectors, *, progress: bool = False, workers: int | None = None) -> None:
        """First pass over the checkpoints for whole-model statistics (default: none needed)."""

    def calibration_keys(self, available: Mapping[str, tuple[int, ...]], rules: EntryRules) -> list[str]:
        """The linear maps whose inputs a data-aware method needs, among ``available`` (weight key → shape: the maps
        whose inputs the calibration pass can capture in this model); [] for a data-free method."""
        return []

    def begin_calibration(self, tasks: TaskVectors, keys: Sequence[str]) -> None:
        """Called once before the statistics of ``keys`` (from :meth:`calibration_keys`) arrive, task by task."""
        raise CalibrationError(f"method {self.name!r} uses no calibration data")

    def absorb(self, task: int, key: str, statistic: InputStatistic) -> None:
        """One task's statistic of one map's input (:class:`~tsvmerge.merging.calibration.InputStatistic`); the
        method folds it into what its merge needs, so that no more than that is kept."""
        raise CalibrationError(f"method {self.name!r} uses no calibration data")

    def alpha_scaled(self, key: str) -> bool:
        """Whether α multiplies this entry of τMT in θ0 + α·τMT (ESM scales only part of the entries, SPEC_ESM E7;
        the others are added with coefficient 1). Default: every entry."""
        return True

    def rescaled_keys(self, keys: Sequence[str]) -> list[str]:
        """Entries whose merged values are rescaled together once all of them are merged (ESM's inter-layer
        rescaling, SPEC_ESM E6); the engine merges them first and holds them. Default: none."""
        return []

    def rescale(self, norms: Mapping[str, float]) -> dict[str, float]:
        """Factor of each of :meth:`rescaled_keys`' merged entries, given their Frobenius norms before rescaling."""
        return {}

    def merge_entry(self, entry: TaskEntry) -> EntryMerge:
        raise NotImplementedError

    def merges_factors(self) -> bool:
        """Whether this configuration merges LoRA updates exactly from their factors (:meth:`merge_factors`), with
        a low-rank result; otherwise every update is formed as a dense ΔW, one entry at a time. Default: no."""
        return False

    def merge_factors(self, entry: TaskEntry) -> LowRankFactors:
        """τMT of an entry every changing task of which is a LoRA update (``entry.factored``), as factors: equal to
        :meth:`merge_entry` on the dense updates. Only for methods whose :meth:`merges_factors` is true."""
        raise NotImplementedError(f"{self.name} merges dense task vectors only")

    def elementwise_on(self, entry: TaskEntry) -> bool:
        """Whether :meth:`merge_entry` acts value by value on ``entry`` (given :meth:`prepare`'s statistics), so
        that a large entry may be merged in blocks of rows (an LLM's vocabulary-sized embeddings). Default: no."""
        return False

    def finalize(self, tasks: TaskVectors) -> dict[str, Any]:
        """Whole-model statistics reported after the merge (storage, interference...)."""
        return {}


M = TypeVar("M", bound=type[MergeMethod])
_METHODS: dict[str, type[MergeMethod]] = {}


#: Traits that describe one method (what users see of it, the tables it is a row of): a class registered under its
#: own name does not inherit them from the method it subclasses.
_OWN_TRAITS = ("label", "reference", "color", "display_order", "demo_row", "demo_settings", "ablation",
               "storage_compared", "spectrum_compared")


def register(cls: M) -> M:
    """Class decorator adding a method to the registry under ``cls.name``."""
    if cls.name in _METHODS:
        raise ValueError(f"merge method {cls.name!r} is registered twice")
    for trait in _OWN_TRAITS:
        if trait not in vars(cls):
            setattr(cls, trait, getattr(MergeMethod, trait))
    _METHODS[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    """Remove a method from the registry (methods registered for a while, e.g. by tests or plug-ins)."""
    _METHODS.pop(name, None)


def available_methods() -> list[str]:
    return sorted(_METHODS)


def method_class(name: str) -> type[MergeMethod]:
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown merge method {name!r}; available: {', '.join(available_methods())}") from None


def method_label(name: str) -> str:
    """Display label of method ``name``; the name itself for an unregistered method or one without a label."""
    cls = _METHODS.get(name)
    return (cls.label if cls is not None else "") or name


def method_color(name: str) -> str | None:
    """Colour of method ``name`` in figures; None for an unregistered method or one without a colour."""
    cls = _METHODS.get(name)
    return None if cls is None else cls.color


def display_rank(name: str) -> float:
    """Sort key of method ``name`` in the paper-style tables: its :attr:`~MergeMethod.display_order`, infinity for an
    unregistered or unordered method (sorted after the others, by name, by the caller)."""
    cls = _METHODS.get(name)
    return math.inf if cls is None or cls.display_order is None else cls.display_order


def methods_where(trait: Callable[[type[MergeMethod]], Any]) -> list[str]:
    """Registered methods for which ``trait(cls)`` is true, in :func:`display_rank` order (then by name)."""
    return sorted((n for n, cls in _METHODS.items() if trait(cls)), key=lambda n: (display_rank(n), n))


def ablation_rows() -> dict[str, AblationRow]:
    """The registered methods of the ablation of TSV-M's components (Table 4) and their rows, in row order."""
    rows = {n: cls.ablation for n, cls in _METHODS.items() if cls.ablation is not None}
    return dict(sorted(rows.items(), key=lambda item: (item[1].order, item[0])))


def method_parameters(name: str) -> dict[str, Any]:
    """Parameter names of a method with their defaults."""
    return {f.name: f.default for f in dataclasses.fields(method_class(name))}


def build_method(name: str, params: Mapping[str, Any] | None = None) -> MergeMethod:
    """Instantiate a registered method, checking parameter names and coercing string values."""
    cls = method_class(name)
    params = dict(params or {})
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        valid = ", ".join(sorted(known)) or "(none)"
        raise ValueError(f"method {name!r} has no parameter {', '.join(unknown)}; its parameters: {valid}")
    coerced = {key: coerce(value, hints[key], key) for key, value in params.items()}
    return cls(**coerced)


_TRUE, _FALSE = {"true", "yes", "1", "on"}, {"false", "no", "0", "off"}


def coerce(value: Any, annotation: Any, key: str = "value") -> Any:
    """Turn a command-line string (``--set k=20``) into the parameter's declared type."""
    if not isinstance(value, str):
        return value
    options = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    if type(None) in options and value.lower() in {"none", "null", ""}:
        return None
    literal_values = [v for option in options if typing.get_origin(option) is typing.Literal
                      for v in typing.get_args(option)]
    if literal_values:
        if value not in literal_values:
            raise ValueError(f"{key}={value!r} is not one of {', '.join(map(str, literal_values))}")
        return value
    for option in options:
        converter: Callable[[str], Any] | None = {bool: _to_bool, int: int, float: float, str: str}.get(option)
        if converter is None:
            continue
        try:
            return converter(value)
        except ValueError:
            continue
    raise ValueError(f"cannot read {key}={value!r} as {annotation}")


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _to_bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(value)

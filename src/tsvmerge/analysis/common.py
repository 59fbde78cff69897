"""What every analysis shares: the run's validated settings, the checkpoints, evaluation sessions, output files.

An analysis is configured like ``main.py`` (model, tasks, locations, device: ``config/config.yaml``) plus its own
``config/analysis/<name>.yaml``. From main.py's validated settings this module opens the task vectors and the
evaluation sessions; the command itself (and its ``Workspace``, which also runs main.py's recipe for the merges an
analysis compares) is :mod:`tsvmerge.recipes.analyze`.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..checkpoints.peft_adapter import open_task_source
from ..checkpoints.state_dict import open_state_dict
from ..config import ConfigError
from ..evaluation.run_settings import RunSettings
from ..data import is_benchmark_prefix
from ..merging import MergeMethod, TaskVectors
from ..merging.entry_rules import EntryRules, rules_for
from ..merging.interference import transformer_block
from ..merging.task_vectors import TaskEntry
from ..merging.tsv import uses_svd
from ..utils.device import resolve_device

__all__ = [
    "EvalSession",
    "block_index",
    "layer_label",
    "matrix_entries",
    "open_task_vectors",
    "tasks_tag",
]

log = logging.getLogger(__name__)

def tasks_tag(datasets: Sequence[str]) -> str:
    """``8tasks`` for the first 8 tasks of a benchmark, else the task list (``MNIST-Cars``; long lists hashed)."""
    if is_benchmark_prefix(datasets):
        return f"{len(datasets)}tasks"
    joined = "-".join(datasets)
    return joined if len(joined) <= 60 else "custom" + hashlib.sha1(joined.encode()).hexdigest()[:8]


_INDEX = re.compile(r"\.(\d+)$")


def block_index(key: str) -> int | None:
    """Index of the transformer block of a state-dict entry (``...resblocks.3.attn...`` -> 3), if any."""
    block = transformer_block(key)
    match = _INDEX.search(block) if block else None
    return int(match.group(1)) if match else None


def layer_label(key: str) -> str:
    """A short, readable name of an entry: ``model.visual.transformer.resblocks.3.attn.in_proj_weight`` ->
    ``block 3 attn.in_proj``; ``model.visual.proj`` -> ``visual.proj``."""
    index = block_index(key)
    if index is None:
        return key.removeprefix("model.")
    rest = key[len(transformer_block(key) or "") + 1:]
    rest = rest.removesuffix(".weight").removesuffix("_weight")
    return f"block {index} {rest}"


def matrix_entries(tasks: TaskVectors, *, include_text_projection: bool = False, progress: bool = False,
                   description: str | None = None, keys: Sequence[str] | None = None) -> Iterator[TaskEntry]:
    """The 2-D entries TSV decomposes (``text_projection`` only if asked) that at least one task changed."""
    wanted = set(keys) if keys is not None else None
    for entry in tasks.entries(description, progress=progress):
        if wanted is not None and entry.key not in wanted:
            continue
        if uses_svd(entry.key, entry.shape, include_text_projection=include_text_projection) and entry.changed:
            yield entry


def open_task_vectors(settings: RunSettings, datasets: Sequence[str] | None = None) -> TaskVectors:
    """θ0 and the fine-tuned checkpoints of ``datasets`` (default: the run's tasks), memory-mapped, lazily diffed.

    Missing files stop the run with one message listing all of them (the ``main.py`` preflight).
    """
    from ..evaluation.preflight import Preflight

    datasets = list(settings.datasets if datasets is None else datasets)
    check = Preflight(f"analysis on {settings.model.name} ({len(datasets)} tasks)")
    zeroshot = check.zeroshot(settings.model_location, settings.model.name, datasets)
    finetuned = check.finetuned(settings.model_location, settings.model.name, datasets)
    check.raise_if_missing()
    pretrained = open_state_dict(zeroshot)
    return TaskVectors(pretrained, [open_task_source(p, pretrained) for p in finetuned], names=datasets,
                       device=resolve_device(settings.device), rules=run_entry_rules(settings, pretrained))


def run_entry_rules(settings: RunSettings, pretrained: Mapping[str, Any]) -> EntryRules:
    """The entry rules of the run: the checkpoints' family with ``method.svd_keys`` / ``method.average_keys``."""
    return rules_for(pretrained, svd_keys=settings.svd_keys, average_keys=settings.average_keys)


@dataclass
class EvalSession:
    """One image encoder (built once from θ0) whose weights are rewritten in place, the splits and heads of some
    tasks, and the normalized-accuracy denominators: what the truncation and α analyses evaluate with."""

    settings: RunSettings
    datasets: list[str]
    split: str
    evaluator: Any
    weights: Any
    data: Any
    ft_accuracies: dict[str, float]
    tasks: TaskVectors | None
    #: The evaluation preprocessing (PIL side and on-device normalization), also what a calibration pass uses.
    preprocess: Any = None

    @classmethod
    def open(cls, settings: RunSettings, datasets: Sequence[str], split: str = "test",
             *, finetuned: bool = True) -> EvalSession:
        """Check every input first (one error listing all missing files), then build the model and the data."""
        from ..evaluation.alpha_search import InPlaceWeights
        from ..evaluation.evaluate import Evaluator, Runtime
        from ..evaluation.eval_data import build_eval_data
        from ..evaluation.preflight import Preflight
        from ..models.encoder import build_image_encoder
        from ..models.preprocess import split_preprocess

        if split not in ("test", "val"):
            raise ConfigError(f"split must be test or val, got {split!r}")
        datasets = list(datasets)
        spec, loc = settings.model, settings.model_location
        check = Preflight(f"analysis on {spec.name} ({len(datasets)} tasks)")
        zeroshot = check.zeroshot(loc, spec.name, datasets)
        finetuned_paths = check.finetuned(loc, spec.name, datasets) if finetuned else []
        check.heads(spec, loc, datasets)
        names = [f"{d}Val" if split == "val" else d for d in datasets]
        accuracies = check.accuracies(settings.ft_accuracies, names)
        check.data(settings.data_location, datasets)
        check.raise_if_missing()
        assert accuracies is not None

        runtime = Runtime.create(settings.device, settings.precision, settings.channels_last)  # type: ignore[arg-type]
        theta0 = open_state_dict(zeroshot)
        encoder, preprocess = build_image_encoder(spec, theta0, zeroshot)
        prep = split_preprocess(preprocess)
        data = build_eval_data(spec, datasets, prep.pil, data_location=settings.data_location,
                               model_location=loc, batch_size=settings.batch_size,
                               num_workers=settings.num_workers, eval_cache=settings.eval_cache,
                               cache_dir=settings.cache_dir, runtime=runtime, shared_weights=theta0,
                               progress=settings.progress, splits=(split,))
        evaluator = Evaluator(encoder, runtime, prep.normalize, settings.progress)
        weights = InPlaceWeights(evaluator.encoder)
        tasks = None
        if finetuned:
            tasks = TaskVectors(theta0, [open_task_source(p, theta0) for p in finetuned_paths], names=datasets,
                                device=runtime.device, rules=run_entry_rules(settings, theta0))
        return cls(settings, datasets, split, evaluator, weights, data, accuracies, tasks, prep)

    def _split(self, dataset: str) -> Any:
        return (self.data.val if self.split == "val" else self.data.test)[dataset]

    def cache(self, dataset: str) -> None:
        """Keep ``dataset``'s preprocessed images in memory from its next pass on (``eval_cache=memory``), so that
        evaluating it many times (fractions, α values) preprocesses its images once; ``disk`` caches stay as
        they are."""
        split = self._split(dataset)
        if self.settings.eval_cache == "memory":
            split.policy = "memory"

    def release(self, dataset: str) -> None:
        """Drop ``dataset``'s cached images."""
        self._split(dataset).release()

    def split_name(self, dataset: str) -> str:
        return f"{dataset}Val" if self.split == "val" else dataset

    def top1(self, dataset: str, label: str = "") -> float:
        """Top-1 of the encoder's current weights on ``dataset``'s split."""
        return self.evaluator.top1(self.data.heads[dataset], self._split(dataset),
                                   f"{self.split_name(dataset)} {label}".strip())

    def normalized(self, dataset: str, top1: float) -> float:
        return top1 / self.ft_accuracies[self.split_name(dataset)]

    def set_weights(self, vectors: Mapping[str, torch.Tensor] | Iterator[tuple[str, torch.Tensor]],
                    alpha: float = 1.0, unscaled: frozenset[str] = frozenset()) -> None:
        self.weights.set(vectors, alpha, unscaled=unscaled)


def calibrate_if_needed(method: MergeMethod, tasks: TaskVectors, settings: RunSettings, datasets: Sequence[str],
                        encoder: torch.nn.Module | None = None, preprocess: Any = None) -> None:
    """Run a data-aware method's calibration pass (ESM, RegMean) as main.py does: each task's samples drawn from its
    own splits (``calibration.samples`` / ``calibration.seed``); nothing for a data-free method. Without
    ``encoder`` one is built from θ0 for the pass."""
    if method.calibration is None:
        return
    from ..calibration.clip import calibrate_from_datasets
    from ..models.encoder import build_image_encoder
    from ..models.preprocess import split_preprocess

    if encoder is None or preprocess is None:
        encoder, transform = build_image_encoder(settings.model, tasks.pretrained)
        preprocess = split_preprocess(transform)
    calibrate_from_datasets(method, tasks, encoder, list(datasets), preprocess.pil, preprocess.normalize,
                            data_location=settings.data_location, samples=settings.calibration_samples,
                            seed=settings.calibration_seed, progress=settings.progress)

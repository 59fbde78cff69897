"""What every analysis shares: the run's validated settings, the checkpoints, evaluation sessions, output files.

An analysis is configured like ``main.py`` (model, tasks, locations, device: ``config/config.yaml``) plus its own
``config/analysis/<name>.yaml``. :class:`Workspace` holds the validated main part and derives from it the task
vectors, per-method run settings (to reuse ``main.py``'s recipe and its result files) and the output folder
``<results_dir>/analysis/<model>/<analysis>/``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ..checkpoints.state_dict import open_state_dict
from ..config import ConfigError, ConfigSource, compose_config
from ..evaluation.run_settings import RunSettings, settings_from_config
from ..data import benchmark_tasks, is_benchmark_prefix
from ..merging import TaskVectors
from ..merging.entry_rules import EntryRules, rules_for
from ..merging.interference import transformer_block
from ..merging.task_vectors import TaskEntry
from ..merging.tsv import uses_svd
from ..utils.device import resolve_device

__all__ = [
    "EvalSession",
    "Workspace",
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
    return TaskVectors(pretrained, [open_state_dict(p) for p in finetuned], names=datasets,
                       device=resolve_device(settings.device), rules=run_entry_rules(settings, pretrained))


def run_entry_rules(settings: RunSettings, pretrained: Mapping[str, Any]) -> EntryRules:
    """The entry rules of the run: the checkpoints' family with ``method.svd_keys`` / ``method.average_keys``."""
    return rules_for(pretrained, svd_keys=settings.svd_keys, average_keys=settings.average_keys)


class Workspace:
    """The validated ``main.py`` part of an analysis configuration, and what derives from it.

    ``cfg`` is the composed configuration (``analysis`` and ``hydra`` sections are ignored); ``source`` is where
    the entry point's YAML files are: the method configs of other runs (the ablation's methods, say) are composed
    from it by Hydra, exactly as ``main.py method=<name>`` would.
    """

    def __init__(self, cfg: DictConfig | Mapping[str, Any], source: ConfigSource) -> None:
        container = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
        plain = OmegaConf.to_container(container, resolve=False, enum_to_str=True)
        assert isinstance(plain, dict)
        plain.pop("analysis", None)
        plain.pop("hydra", None)
        self._raw: dict[str, Any] = plain
        self.source = source
        self.settings = settings_from_config(OmegaConf.create(plain))

    @property
    def datasets(self) -> list[str]:
        return list(self.settings.datasets)

    @property
    def model_name(self) -> str:
        return self.settings.model.name

    def output_dir(self, analysis: str, out_dir: str | Path | None = None) -> Path:
        """``<results_dir>/analysis/<model>/<analysis>/`` (or ``out_dir``), created."""
        path = Path(out_dir) if out_dir else self.settings.results_dir / "analysis" / self.model_name / analysis
        path.mkdir(parents=True, exist_ok=True)
        return path

    def method_section(self, method: str) -> dict[str, Any]:
        """``config/method/<method>.yaml`` as Hydra composes it (``method=<method>``)."""
        section = compose_config(self.source, "config", [f"method={method}"])["method"]
        return OmegaConf.to_container(section, resolve=False, enum_to_str=True)  # type: ignore[return-value]

    def _raw_for(self, method: str | None, datasets: Sequence[str] | None, overrides: Mapping[str, Any]) -> dict:
        raw = json.loads(json.dumps(self._raw))  # deep copy, interpolations kept
        if method is not None:
            raw["method"] = self.method_section(method)
        if datasets is not None:
            datasets = list(datasets)
            if tuple(datasets) == benchmark_tasks(self.settings.model.benchmark)[: len(datasets)]:
                raw["num_tasks"], raw["DATASETS"] = len(datasets), None
            else:
                raw["DATASETS"] = datasets
        raw.update(overrides)
        return raw

    def run_settings(self, method: str | None = None, datasets: Sequence[str] | None = None,
                     **overrides: Any) -> RunSettings:
        """``main.py``'s settings for ``method`` (its ``config/method/<method>.yaml``) on ``datasets``.

        A dataset list equal to the first T benchmark tasks is given as ``num_tasks=T`` so that result files get
        the benchmark name (``<model>_<T>tasks_<method>_..._valbest.json``), exactly as ``main.py num_tasks=T``.
        """
        return settings_from_config(OmegaConf.create(self._raw_for(method, datasets, overrides)))

    def merge_result(self, method: str, datasets: Sequence[str] | None = None, *, recompute: bool = False,
                     **overrides: Any) -> tuple[dict[str, Any], Path, bool]:
        """The result file of ``python main.py method=<method>`` on ``datasets``: read if it exists (unless
        ``recompute``), else produced by running ``main.py``'s recipe. Returns ``(payload, path, ran)``.

        Runs write the usual result file (``<results_dir>/<save_subfolder>/...json``), so ``report.py`` sees them.
        """
        from ..evaluation.merge_eval import run_merge_evaluation, settings_result_path

        raw = self._raw_for(method, datasets, overrides)
        settings = settings_from_config(OmegaConf.create(raw))
        path = settings_result_path(settings)
        if path.is_file() and not recompute:
            log.info("reusing %s", path)
            return json.loads(path.read_text()), path, False
        resolved = OmegaConf.to_container(OmegaConf.create(raw), resolve=True)
        outcome = run_merge_evaluation(settings, None, resolved)  # type: ignore[arg-type]
        print(outcome.table)
        return outcome.payload, outcome.path, True


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

    @classmethod
    def open(cls, settings: RunSettings, datasets: Sequence[str], split: str = "test",
             *, finetuned: bool = True) -> EvalSession:
        """Check every input first (one error listing all missing files), then build the model and the data."""
        from ..evaluation.alpha_search import InPlaceWeights
        from ..evaluation.evaluate import Evaluator, Runtime
        from ..evaluation.merge_eval import build_eval_data
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
            tasks = TaskVectors(theta0, [open_state_dict(p) for p in finetuned_paths], names=datasets,
                                device=runtime.device, rules=run_entry_rules(settings, theta0))
        return cls(settings, datasets, split, evaluator, weights, data, accuracies, tasks)

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
                    alpha: float = 1.0) -> None:
        self.weights.set(vectors, alpha)

"""The published fine-tuning protocol: hyper-parameters, epochs per dataset and the default task list.

These are the settings the published checkpoints (``<Dataset>Val/nonlinear_finetuned.pt``) were produced with: the
image encoder is trained and the zero-shot head frozen; AdamW (lr 1e-5, weight decay 0.1), cross-entropy (optional
label smoothing), cosine schedule with 500 warm-up steps, gradient clipping at norm 1, batch 128 (ViT-L-14: 64 with 2
accumulation steps), on the training part of ``<Dataset>Val``, for the number of epochs of :data:`EPOCHS`.

Models that are not part of the benchmark (e.g. a synthetic demo model) override the default task list with
:func:`register_default_tasks` and the epochs of their own datasets with :func:`register_epochs`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType

__all__ = [
    "EPOCHS",
    "Hyperparameters",
    "default_epochs",
    "default_hyperparameters",
    "default_tasks",
    "register_default_tasks",
    "register_epochs",
]

#: Epochs per dataset in the published fine-tuning script (about 2000 optimizer steps of batch 128 each).
EPOCHS: Mapping[str, int] = MappingProxyType({
    "Cars": 35, "DTD": 76, "EuroSAT": 12, "GTSRB": 11, "MNIST": 5, "RESISC45": 15, "SUN397": 14, "SVHN": 4,
    "CIFAR10": 6, "CIFAR100": 6, "STL10": 60, "Food101": 4, "Flowers102": 147, "FER2013": 10, "PCAM": 1,
    "OxfordIIITPet": 82, "RenderedSST2": 39, "EMNIST": 2, "FashionMNIST": 5, "KMNIST": 5,
})

#: Models fine-tuned with a smaller batch and gradient accumulation (same effective batch of 128).
_ACCUMULATING_MODELS: Mapping[str, tuple[int, int]] = MappingProxyType({"ViT-L-14": (64, 2)})


@dataclass(frozen=True)
class Hyperparameters:
    """Optimization settings of one fine-tuning run.

    ``batch_size`` is the *global* batch of one forward pass, summed over all ranks (each rank gets
    ``batch_size / world_size`` images), so that a run optimizes the same objective whatever the number of
    processes; ``num_grad_accumulation`` forward passes make one optimizer step (effective batch
    ``batch_size * num_grad_accumulation``).
    """

    lr: float = 1e-5
    weight_decay: float = 0.1
    batch_size: int = 128
    num_grad_accumulation: int = 1
    warmup_steps: int = 500
    label_smoothing: float = 0.0
    max_grad_norm: float = 1.0

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size * self.num_grad_accumulation

    def validate(self, world_size: int = 1) -> None:
        problems = []
        if not self.lr > 0:
            problems.append(f"--lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            problems.append(f"--wd must be >= 0, got {self.weight_decay}")
        if self.batch_size < 1:
            problems.append(f"--batch-size must be >= 1, got {self.batch_size}")
        elif self.batch_size % world_size:
            problems.append(f"--batch-size={self.batch_size} (the global batch) must be a multiple of the number of "
                            f"processes ({world_size}): each rank gets batch_size / world_size images")
        if self.num_grad_accumulation < 1:
            problems.append(f"--num-grad-accumulation must be >= 1, got {self.num_grad_accumulation}")
        if self.warmup_steps < 0:
            problems.append(f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.label_smoothing < 1.0:
            problems.append(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if not self.max_grad_norm > 0:
            problems.append(f"--max-grad-norm must be positive, got {self.max_grad_norm}")
        if problems:
            raise ValueError("; ".join(problems))


def default_hyperparameters(model: str, arch: str | None = None, **overrides: object) -> Hyperparameters:
    """The published settings for ``model`` (its config name; ``arch`` its open_clip architecture), with
    ``overrides`` (None values ignored) applied."""
    base = Hyperparameters()
    for name in (model, arch):
        if name in _ACCUMULATING_MODELS:
            batch, accumulation = _ACCUMULATING_MODELS[name]
            base = replace(base, batch_size=batch, num_grad_accumulation=accumulation)
            break
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


_TASK_LISTS: dict[str, Callable[[], Sequence[str]]] = {}
_EPOCHS_BY_MODEL: dict[str, dict[str, int]] = {}


def register_default_tasks(model: str) -> Callable[[Callable[[], Sequence[str]]], Callable[[], Sequence[str]]]:
    """Decorator: ``fn() -> task names`` is the default task list of ``model`` (instead of the 20 benchmarks)."""

    def decorate(fn: Callable[[], Sequence[str]]) -> Callable[[], Sequence[str]]:
        _TASK_LISTS[model] = fn
        return fn

    return decorate


def register_epochs(model: str, epochs: Mapping[str, int]) -> None:
    """Default epochs of ``model``'s own datasets (consulted before :data:`EPOCHS`)."""
    _EPOCHS_BY_MODEL.setdefault(model, {}).update({str(k): int(v) for k, v in epochs.items()})


def default_tasks(model: str) -> list[str]:
    """The tasks fine-tuned when none are given: the model's registered list, else the 20 benchmark datasets."""
    if model in _TASK_LISTS:
        return list(_TASK_LISTS[model]())
    from ..data import BENCHMARK_DATASETS

    return list(BENCHMARK_DATASETS)


def default_epochs(dataset: str, model: str | None = None) -> int:
    """Epochs of the published protocol for ``dataset`` (with or without the ``Val`` suffix)."""
    base = dataset[: -len("Val")] if dataset.endswith("Val") else dataset
    own = _EPOCHS_BY_MODEL.get(model or "", {})
    if base in own:
        return own[base]
    if base in EPOCHS:
        return EPOCHS[base]
    raise KeyError(f"no default number of epochs for dataset {dataset!r}; pass --epochs")

"""The published fine-tuning protocol: hyper-parameters, epochs per dataset and the default task list.

These are the settings the published checkpoints (``<Dataset>Val/nonlinear_finetuned.pt``) were produced with: the
image encoder is trained and the zero-shot head frozen; AdamW (lr 1e-5, weight decay 0.1), cross-entropy (optional
label smoothing), cosine schedule with 500 warm-up steps, gradient clipping at norm 1, batch 128 (ViT-L-14: 64 with 2
accumulation steps), on the training part of ``<Dataset>Val``, for the number of epochs of :data:`EPOCHS`.

Models trained differently (the tiny demo CLIP) override these settings and the epochs of their own datasets in the
``finetuning:`` section of their model config; their default task list is their ``benchmark:``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from types import MappingProxyType
from typing import Any

__all__ = [
    "EPOCHS",
    "Hyperparameters",
    "default_epochs",
    "default_hyperparameters",
    "default_tasks",
    "check_protocol_overrides",
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
        """Raise ValueError listing every problem; ``world_size`` is the number of processes sharing the batch."""
        problems = []
        if not self.lr > 0:
            problems.append(f"--lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            problems.append(f"--wd must be >= 0, got {self.weight_decay}")
        if world_size < 1:
            problems.append(f"--world-size must be >= 1, got {world_size}")
        if self.batch_size < 1:
            problems.append(f"--batch-size must be >= 1, got {self.batch_size}")
        elif world_size >= 1 and self.batch_size % world_size:
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


def default_hyperparameters(model: str, arch: str | None = None, protocol: Mapping[str, Any] | None = None,
                            **overrides: object) -> Hyperparameters:
    """The published settings for ``model`` (its config name; ``arch`` its open_clip architecture), then the
    model config's own ``protocol`` (``finetuning:`` of ``config/model/<name>.yaml``), then ``overrides`` (None
    values ignored: the command line)."""
    base = Hyperparameters()
    for name in (model, arch):
        if name in _ACCUMULATING_MODELS:
            batch, accumulation = _ACCUMULATING_MODELS[name]
            base = replace(base, batch_size=batch, num_grad_accumulation=accumulation)
            break
    own = {k: v for k, v in (protocol or {}).items() if k != "epochs"}
    base = replace(base, **own)
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


_HYPERPARAMETER_TYPES: Mapping[str, type] = MappingProxyType(
    {f.name: (int if f.type in ("int", int) else float) for f in fields(Hyperparameters)})


def check_protocol_overrides(protocol: Mapping[str, Any]) -> list[str]:
    """Problems of a model config's ``finetuning:`` section (unknown keys, non-numbers, bad epochs)."""
    problems = []
    valid = [*_HYPERPARAMETER_TYPES, "epochs"]
    for key, value in protocol.items():
        if key == "epochs":
            if not isinstance(value, Mapping) or not all(
                    isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in value.values()):
                problems.append(f"epochs must map dataset names to positive integers, got {value!r}")
        elif key not in _HYPERPARAMETER_TYPES:
            problems.append(f"unknown key {key!r}; valid keys: {', '.join(valid)}")
        elif isinstance(value, bool) or not isinstance(value, int | float) or (
                _HYPERPARAMETER_TYPES[key] is int and not isinstance(value, int)):
            problems.append(f"{key} must be a{'n integer' if _HYPERPARAMETER_TYPES[key] is int else ' number'}, "
                            f"got {value!r}")
    return problems


def default_tasks(benchmark: str = "paper") -> list[str]:
    """The tasks fine-tuned when none are given: every task of the model's benchmark (the 20 datasets)."""
    from ..data import benchmark_tasks

    return list(benchmark_tasks(benchmark))


def default_epochs(dataset: str, model_epochs: Mapping[str, int] | None = None) -> int:
    """Epochs for ``dataset`` (with or without the ``Val`` suffix): the model config's own ``epochs`` first, then
    the published protocol."""
    base = dataset[: -len("Val")] if dataset.endswith("Val") else dataset
    if model_epochs and base in model_epochs:
        return int(model_epochs[base])
    if base in EPOCHS:
        return EPOCHS[base]
    raise KeyError(f"no default number of epochs for dataset {dataset!r}; pass --epochs")

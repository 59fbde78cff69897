"""The calibration pass: task by task, load θi into one model, run the task's samples through it with the input
hooks on, and hand the method one statistic per linear map (:class:`~tsvmerge.merging.calibration.InputStatistic`).

Statistic ``rows`` (ESM): all samples go through in one batch and each map's input rows reach the method while the
forward pass runs, so no more than one map's activations is ever kept. Statistic ``gram`` (RegMean): each forward
call's XᵀX (float32), summed in float64 over the batches, divided by the row count once the task is done. The
forward pass runs in float32 with TF32 off (SPEC_ESM E8, SPEC_REGMEAN R6) and without autograd; the model is given
back with θ0's weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..merging import MergeMethod, TaskVectors
from ..merging.calibration import CalibrationError, InputStatistic
from .capture import InputCapture, linear_inputs

__all__ = ["Batch", "CalibrationRecord", "calibrate", "load_weights", "no_tf32"]


@dataclass
class Batch:
    """One forward pass: the model's inputs (passed to ``forward``) and, for padded token batches, which tokens
    are real (a bool mask over the flattened batch × length tokens)."""

    inputs: Any
    row_mask: Tensor | None = None


@dataclass
class CalibrationRecord:
    """What the calibration used, for the result file: samples per task, seed, split, source, the maps, the time."""

    samples: dict[str, int]
    seed: int | None
    split: str
    source: str
    statistic: str
    keys: int
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"samples_per_task": self.samples, "seed": self.seed, "split": self.split, "source": self.source,
                "statistic": self.statistic, "linear_maps": self.keys, "seconds": round(self.seconds, 3)}


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """TF32 off for matmuls and cuDNN convolutions (PyTorch lets cuDNN use it by default on recent GPUs)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@torch.no_grad()
def load_weights(module: nn.Module, weights: Mapping[str, Tensor]) -> None:
    """Copy every entry of ``weights`` that ``module`` has into its own tensors (θi as stored)."""
    for key, target in module.state_dict(keep_vars=True).items():
        if key in weights:
            target.copy_(weights[key])


def calibrate(method: MergeMethod, tasks: TaskVectors, module: nn.Module,
              batches: Callable[[int], Sequence[Batch]], forward: Callable[[nn.Module, Any], Any], *,
              progress: bool = False) -> list[str]:
    """Run ``method``'s calibration: for each task t, θt loaded into ``module``, ``batches(t)`` through
    ``forward(module, inputs)``, the statistics handed to ``method.absorb``; returns the calibrated keys.

    ``module``'s state-dict keys are those of the checkpoints (``tasks``); it ends with θ0's weights.
    """
    spec = method.calibration
    if spec is None:
        raise CalibrationError(f"method {method.name!r} is data-free: it takes no calibration samples")
    available = {key: shape for key, shape in linear_inputs(module).items() if key in tasks.keys}
    keys = method.calibration_keys(available, tasks.rules)
    if not keys:
        raise CalibrationError(f"{method.name}: the model has no linear map whose inputs it uses")
    # A map no task changes keeps θ0's weight whatever the method: nothing to calibrate (LoRA adapters leave most
    # maps alone).
    keys = [key for key in keys if tasks.entry(key).changed]
    if not keys:
        raise CalibrationError(f"{method.name}: no task changes a linear map whose inputs it uses")
    method.begin_calibration(tasks, keys)
    module.eval()
    bar = tqdm(range(tasks.num_tasks), desc=f"calibration ({method.name})", disable=not progress, unit="task")
    try:
        # no_grad: the pass only reads activations; with autograd on, every block's activations would stay alive
        # until the end of the forward pass (1.35 GiB of ViT-B-32's for 32 images)
        with no_tf32(), torch.no_grad():
            for task in bar:
                load_weights(module, tasks.finetuned[task])
                task_batches = batches(task)
                if not task_batches:
                    raise CalibrationError(f"{method.name}: no calibration samples for task {tasks.names[task]!r}")
                if spec.statistic == "rows":
                    _rows_pass(method, task, module, keys, task_batches, forward)
                else:
                    _gram_pass(method, task, module, keys, task_batches, forward)
    finally:
        load_weights(module, tasks.pretrained)
    return keys


def _rows_pass(method: MergeMethod, task: int, module: nn.Module, keys: Sequence[str], batches: Sequence[Batch],
               forward: Callable[[nn.Module, Any], Any]) -> None:
    """All of the task's samples in one forward pass; each map's rows go to the method as the pass reaches it."""
    if len(batches) != 1:
        raise CalibrationError(f"{method.name} takes all of a task's calibration samples in one batch")
    seen: set[str] = set()

    def sink(key: str, rows: Tensor) -> None:
        if key in seen:
            raise CalibrationError(f"{method.name}: {key!r} is used twice in one forward pass")
        seen.add(key)
        if rows.shape[0] == 0:
            raise CalibrationError(f"{method.name}: no calibration rows reach {key!r}")
        method.absorb(task, key, InputStatistic(count=rows.shape[0], rows=rows.float()))

    with InputCapture(module, keys, sink) as capture:
        capture.row_mask = batches[0].row_mask
        forward(module, batches[0].inputs)
    missing = sorted(set(keys) - seen)
    if missing:
        raise CalibrationError(f"{method.name}: the forward pass never reached {', '.join(missing[:3])}")


def _gram_pass(method: MergeMethod, task: int, module: nn.Module, keys: Sequence[str], batches: Sequence[Batch],
               forward: Callable[[nn.Module, Any], Any]) -> None:
    """XᵀX and the row count summed over the task's batches in float64; the mean handed over at the end."""
    sums: dict[str, Tensor] = {}
    counts: dict[str, int] = {}

    def sink(key: str, rows: Tensor) -> None:
        # Each call's XᵀX in float32 (a few thousand rows: ~1e-6 relative), the sum over calls in float64; a float64
        # product would cost several times more (4w × 4w per block for the MLP's second map).
        rows = rows.to(torch.float32)
        gram = (rows.mT @ rows).to(torch.float64)
        if key in sums:
            sums[key] += gram
        else:
            sums[key] = gram
        counts[key] = counts.get(key, 0) + rows.shape[0]

    with InputCapture(module, keys, sink) as capture:
        for batch in batches:
            capture.row_mask = batch.row_mask
            forward(module, batch.inputs)
    for key in keys:
        if not counts.get(key):
            raise CalibrationError(f"{method.name}: no calibration rows reach {key!r}")
        gram = sums.pop(key).div_(counts[key]).cpu()
        method.absorb(task, key, InputStatistic(count=counts[key], gram=gram))


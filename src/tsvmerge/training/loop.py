"""One task's fine-tuning loop: the image encoder trained under DDP, the zero-shot head frozen.

Per optimizer step: ``num_grad_accumulation`` forward/backward passes of ``batch_size / world_size`` images on each
rank (all but the last inside DDP's ``no_sync``, so gradients are all-reduced once per step), the loss being the mean
cross-entropy over the step's images; then clipping at ``max_grad_norm``, AdamW, and the cosine-with-warm-up
learning rate (a ``LambdaLR``). Every rank reads its shard of the data through a ``DistributedSampler`` (its epoch set
every epoch). As the global batches do not depend on the number of ranks (the sampler's permutation is shared and
ranks take interleaved slices of it), N ranks compute what one process with the same global batch computes.

On CUDA the forward passes run under autocast (``bf16`` by default, ``fp16`` with a gradient scaler, ``fp32``
disables it; ``bf16`` falls back to ``fp16`` on GPUs without native bfloat16); CPU runs float32. A step the gradient
scaler skips (inf / nan gradients) does not advance the learning-rate schedule.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from ..utils.device import autocast_precision
from .distributed import DistContext
from ..models.finetuning_protocol import Hyperparameters

__all__ = [
    "Classifier",
    "TrainOutcome",
    "TrainSettings",
    "cosine_with_warmup",
    "lr_factor",
    "make_loader",
    "optimizer_step",
    "steps_per_epoch",
    "train",
    "trainable_parameters",
]

log = logging.getLogger(__name__)

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate multiplier of optimizer step ``step`` (0-based), as the published ``cosine_lr``:
    linear warm-up ``(step + 1) / warmup_steps``, then ``0.5 * (1 + cos(pi * (step - warmup) / (total - warmup)))``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / span))


def cosine_with_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int,
                       total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` with :func:`lr_factor`: the k-th ``optimizer.step()`` (0-based) uses ``base_lr * lr_factor(k)``
    when ``scheduler.step()`` follows every ``optimizer.step()``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup_steps, total_steps))


class Classifier(torch.nn.Module):
    """Image encoder followed by a (frozen) classification head: the module DDP wraps."""

    def __init__(self, encoder: torch.nn.Module, head: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.encoder(images))


def trainable_parameters(encoder: torch.nn.Module) -> tuple[list[torch.nn.Parameter], bool]:
    """Mark the image tower's parameters trainable, everything else frozen; return them and whether some
    parameters of the trained set may stay unused (then DDP must look for unused parameters).

    The text-side leftovers of the published layout (``model.token_embedding.weight``, ``model.ln_final.*``,
    ``model.text_projection``, ``model.logit_scale``...) never see a gradient from ``encode_image``: they stay exactly
    as in the zero-shot checkpoint (as in the published checkpoints). Models without a ``model.visual`` tower
    train every parameter.
    """
    named = dict(encoder.named_parameters())
    visual = [name for name in named if name.startswith("model.visual.")]
    chosen = set(visual) if visual else set(named)
    for name, param in named.items():
        param.requires_grad_(name in chosen)
    return [named[name] for name in named if name in chosen], not visual


def steps_per_epoch(batches_per_epoch: int, num_grad_accumulation: int) -> int:
    """Optimizer steps per epoch: a last, shorter accumulation group also makes a step."""
    return -(-batches_per_epoch // num_grad_accumulation)


def make_loader(dataset: Dataset, ctx: DistContext, batch_size: int, seed: int, num_workers: int,
                shuffle: bool = True) -> tuple[DataLoader, DistributedSampler]:
    """This rank's loader: ``batch_size`` (global) / world_size images per batch from its DistributedSampler shard."""
    if batch_size % ctx.world_size:
        raise ValueError(f"the global batch size {batch_size} is not a multiple of the world size {ctx.world_size}")
    sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=shuffle, seed=seed,
                                 drop_last=False)
    generator = torch.Generator().manual_seed(seed * 1000 + ctx.rank)  # data-augmentation streams of workers
    loader = DataLoader(dataset, batch_size=batch_size // ctx.world_size, sampler=sampler, num_workers=num_workers,
                        pin_memory=ctx.device.type == "cuda", drop_last=False, generator=generator,
                        persistent_workers=False)
    return loader, sampler


@dataclass
class TrainSettings:
    hyperparameters: Hyperparameters
    epochs: int
    seed: int = 0
    max_steps: int | None = None
    precision: str = "bf16"
    num_workers: int = 0
    checkpoint_every: int = 0
    log_every: int = 10
    progress: bool = True
    description: str = "fine-tuning"


@dataclass
class TrainOutcome:
    steps: int
    planned_steps: int
    epochs_started: int
    samples: int  # images this rank processed
    seconds: float
    loss: float  # mean training loss (all ranks) over the last logging interval
    accuracy: float  # training top-1 (all ranks) over the last logging interval
    lr: float
    history: list[dict[str, float]] = field(default_factory=list)
    skipped_steps: int = 0  # steps the fp16 gradient scaler skipped (inf / nan gradients)


class _Meter:
    """Loss and correct predictions summed on the device (no synchronization per step) between two logging
    points, then reduced over the ranks."""

    def __init__(self, device: torch.device) -> None:
        self.values = torch.zeros(2, dtype=torch.float64, device=device)
        self.count = 0
        self.started = time.perf_counter()

    def add(self, loss: Tensor, logits: Tensor, labels: Tensor) -> None:
        n = labels.numel()
        self.values += torch.stack([loss.detach().double() * n, (logits.argmax(1) == labels).sum().double()])
        self.count += n

    def reduce(self, ctx: DistContext) -> tuple[float, float, float, float]:
        loss_sum, correct, count = ctx.all_reduce_sum([*self.values.tolist(), self.count]).tolist()
        seconds = time.perf_counter() - self.started
        self.values.zero_()
        self.count = 0
        self.started = time.perf_counter()
        count = max(count, 1.0)
        return loss_sum / count, correct / count, count, seconds


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if device.type == "cuda" and precision in _AMP_DTYPES:
        return torch.autocast("cuda", dtype=_AMP_DTYPES[precision])
    return contextlib.nullcontext()


def optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   scheduler: torch.optim.lr_scheduler.LRScheduler, params: list[torch.nn.Parameter],
                   max_grad_norm: float) -> bool:
    """Clip, step and advance the schedule; return whether the optimizer really stepped.

    The gradient scaler skips the optimizer step when the (unscaled) gradients hold inf / nan and then lowers its
    scale: the schedule only advances when the scale did not drop, so that skipped steps do not consume it.
    """
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    stepped = scaler.get_scale() >= scale
    if stepped:
        scheduler.step()
    return stepped


def _groups(loader: DataLoader, accumulation: int) -> Iterator[tuple[int, Any]]:
    """(number of micro-batches of the accumulation group the batch belongs to, batch)."""
    total = len(loader)
    for i, batch in enumerate(loader):
        group_start = (i // accumulation) * accumulation
        yield min(accumulation, total - group_start), batch


def train(ctx: DistContext, classifier: Classifier, params: list[torch.nn.Parameter], train_set: Dataset,
          settings: TrainSettings, *, find_unused_parameters: bool = False,
          save_checkpoint: Callable[[int], None] | None = None,
          log_metrics: Callable[[dict[str, float], int], None] | None = None) -> TrainOutcome:
    """Fine-tune ``classifier.encoder`` (its ``params``) on ``train_set``; the head must be frozen.

    ``save_checkpoint(step)`` is called on rank 0 every ``settings.checkpoint_every`` optimizer steps,
    ``log_metrics(metrics, step)`` on rank 0 at every logging point.
    """
    hp = settings.hyperparameters
    device = ctx.device
    precision = autocast_precision(device, settings.precision, announce=ctx.is_main)
    classifier = classifier.to(device)
    classifier.train()
    model: torch.nn.Module = classifier
    if ctx.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            classifier, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=find_unused_parameters, broadcast_buffers=False)  # no BatchNorm: constant buffers

    loader, sampler = make_loader(train_set, ctx, hp.batch_size, settings.seed, settings.num_workers)
    if len(loader) == 0:
        raise ValueError(f"{settings.description}: the training set is empty")
    per_epoch = steps_per_epoch(len(loader), hp.num_grad_accumulation)
    total_steps = per_epoch * settings.epochs
    planned = min(total_steps, settings.max_steps) if settings.max_steps else total_steps

    optimizer = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
    scheduler = cosine_with_warmup(optimizer, hp.warmup_steps, total_steps)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and precision == "fp16")
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=hp.label_smoothing)
    meter = _Meter(device)
    history: list[dict[str, float]] = []
    last: dict[str, float] = {"loss": math.nan, "accuracy": math.nan}

    bar = tqdm(total=planned, desc=settings.description, unit="step", disable=not (ctx.is_main and settings.progress),
               dynamic_ncols=True)
    started = time.perf_counter()
    step = samples = skipped = 0
    epoch = -1
    done = False
    try:
        for epoch in range(settings.epochs):
            sampler.set_epoch(epoch)
            micro = 0  # micro-batches of the current accumulation group so far
            for group_size, (images, labels) in _groups(loader, hp.num_grad_accumulation):
                images = images.to(device, non_blocking=True)
                labels = torch.as_tensor(labels).to(device, non_blocking=True)
                micro += 1
                last_of_group = micro == group_size
                sync = contextlib.nullcontext() if last_of_group or not ctx.distributed else model.no_sync()
                with sync:
                    with _autocast(device, precision):
                        logits = model(images)
                    loss = loss_fn(logits.float(), labels)
                    scaler.scale(loss / group_size).backward()
                meter.add(loss, logits, labels)
                samples += labels.numel()
                if not last_of_group:
                    continue
                micro = 0
                lr = optimizer.param_groups[0]["lr"]
                if not optimizer_step(optimizer, scaler, scheduler, params, hp.max_grad_norm):
                    skipped += 1
                step += 1
                bar.update(1)
                if settings.checkpoint_every and step % settings.checkpoint_every == 0 and ctx.is_main:
                    if save_checkpoint is not None:
                        save_checkpoint(step)
                finished = step >= planned
                if step % max(1, settings.log_every) == 0 or finished:
                    mean_loss, accuracy, count, seconds = meter.reduce(ctx)
                    last = {"loss": mean_loss, "accuracy": accuracy}
                    metrics = {"epoch": epoch + 1, "loss": mean_loss, "accuracy": accuracy, "lr": lr,
                               "images_per_s": count / max(seconds, 1e-9)}
                    history.append({"step": step, **metrics})
                    if ctx.is_main:
                        bar.set_postfix(loss=f"{mean_loss:.4f}", acc=f"{accuracy:.3f}",
                                        img_s=f"{metrics['images_per_s']:.0f}", lr=f"{lr:.2e}")
                        if log_metrics is not None:
                            log_metrics(metrics, step)
                if finished:
                    done = True
                    break
            if done:
                break
    finally:
        bar.close()
    return TrainOutcome(step, planned, epoch + 1, samples, time.perf_counter() - started, last["loss"],
                        last["accuracy"], optimizer.param_groups[0]["lr"], history, skipped)

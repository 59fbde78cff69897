"""Contrastive pre-training of the demo's tiny CLIP on captioned images.

The real setting starts from a CLIP that has seen a broad distribution of images and captions, so that (i) zero-shot
heads built from its text tower are better than chance on every task and (ii) all fine-tuned models share one
pre-trained starting point whose features are already useful. The demo reproduces both with a short CLIP run on
captioned synthetic scenes (``pool="scenes"``, the default: :mod:`tsvmerge.data.datasets.synthetic_scenes`), which
combine the tasks' concepts over every task's visual domain but are never the tasks' own images or prompts, so that
zero-shot is far from fine-tuned, as for a real CLIP. ``pool="tasks"`` pre-trains on the tasks' own ``pretrain``
split (disjoint from their train / val / test splits) captioned with their prompt templates: zero-shot then starts
close to fine-tuned, and merging has little to show.

Captions repeat within a batch, so the InfoNCE targets are soft: an image's positives are every pair with the same
caption (tasks pool: the same task and class) in the batch, and vice versa, instead of CLIP's diagonal, which would
push apart identical captions.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from ..checkpoints.state_dict import save_state_dict
from ..data import classnames, templates
from ..data.datasets.synthetic import load_split
from ..data.datasets.synthetic_scenes import load_scenes
from ..models.factory import ModelSpec, create_clip, get_tokenizer
from ..models.preprocess import split_preprocess

__all__ = ["PRETRAIN_POOLS", "PretrainSettings", "PretrainOutcome", "caption_bank", "pretrain_clip", "soft_clip_loss"]

log = logging.getLogger(__name__)


#: The images the demo CLIP can be pre-trained on (``PretrainSettings.pool``).
PRETRAIN_POOLS = ("scenes", "tasks")


@dataclass(frozen=True)
class PretrainSettings:
    """A short CLIP run: AdamW, cosine schedule with linear warm-up, batches mixing every domain."""

    steps: int = 1200
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 30
    seed: int = 0
    #: "scenes": captioned synthetic scenes, a distribution separate from the tasks' images
    #: (tsvmerge.data.datasets.synthetic_scenes: zero-shot far from fine-tuned, as for a real CLIP); "tasks": the
    #: tasks' own ``pretrain`` split captioned with their prompt templates (zero-shot close to fine-tuned: no
    #: headroom for merging to show anything).
    pool: str = "scenes"
    scenes: int = 8000


@dataclass(frozen=True)
class PretrainOutcome:
    path: Path
    steps: int
    final_loss: float
    seconds: float


def caption_bank(tasks: Sequence[str]) -> tuple[list[str], list[list[int]]]:
    """Every caption of every (task, class): ``captions`` and, per global class id, the indices of its captions.

    Global class ids enumerate the classes of ``tasks`` in order (task 0's classes first).
    """
    captions: list[str] = []
    per_class: list[list[int]] = []
    for task in tasks:
        for name in classnames(task):
            per_class.append([])
            for template in templates(task):
                per_class[-1].append(len(captions))
                captions.append(template.format(name))
    return captions, per_class


def soft_clip_loss(image_features: Tensor, text_features: Tensor, classes: Tensor, logit_scale: Tensor) -> Tensor:
    """Symmetric InfoNCE where every pair of the same class is a positive (targets uniform over them)."""
    logits = logit_scale.exp() * image_features @ text_features.T
    same = (classes[:, None] == classes[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def _pretraining_pool(data_location: Path, tasks: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """All ``pretrain`` images (uint8 NHWC) with their global class ids."""
    images, classes, offset = [], [], 0
    for task in tasks:
        x, y = load_split(data_location, task, "pretrain")
        images.append(x)
        classes.append(np.asarray(y, dtype=np.int64) + offset)
        offset += len(classnames(task))
    return np.concatenate(images), np.concatenate(classes)


def _scenes_pool(data_location: Path, count: int, seed: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Scenes, their distinct captions, and per scene the index of its caption (its "class" for the soft loss)."""
    images, captions = load_scenes(data_location, count, seed)
    bank = sorted(set(captions))
    index = {c: i for i, c in enumerate(bank)}
    return images, bank, np.asarray([index[c] for c in captions], dtype=np.int64)


def _to_model_input(images: np.ndarray, normalize: Callable[[Tensor, torch.device], Tensor]) -> Tensor:
    """uint8 NHWC at the model's resolution -> normalized float NCHW (the eval preprocess after its PIL steps)."""
    return normalize(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.device("cpu"))


def pretrain_clip(spec: ModelSpec, data_location: str | Path, out: str | Path, tasks: Sequence[str],
                  settings: PretrainSettings = PretrainSettings(), progress: bool = True) -> PretrainOutcome:
    """Train ``spec``'s CLIP (both towers, from random initialization) and save its full open_clip state dict to
    ``out`` (``.safetensors`` or ``.pt``): the file ``model.pretrained`` points at."""
    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    generator = np.random.default_rng(settings.seed)
    model, preprocess = create_clip(spec)
    model.train()
    tokenizer = get_tokenizer(spec, model)
    normalize = split_preprocess(preprocess).normalize
    if settings.pool == "scenes":
        images, captions, classes = _scenes_pool(Path(data_location), settings.scenes, settings.seed)
        per_class = [[i] for i in range(len(captions))]
    elif settings.pool == "tasks":
        images, classes = _pretraining_pool(Path(data_location), tasks)
        captions, per_class = caption_bank(tasks)
    else:
        raise ValueError(f"pretraining pool {settings.pool!r}: one of {', '.join(PRETRAIN_POOLS)}")
    tokens = tokenizer(captions)

    # fused: one kernel for all parameters instead of a Python loop over them (about 5 % of a step on a CPU)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay,
                                  fused=True)

    def factor(step: int) -> float:
        if step < settings.warmup_steps:
            return (step + 1) / settings.warmup_steps
        span = max(1, settings.steps - settings.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * (step - settings.warmup_steps) / span))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    loss_value = float("nan")
    bar = tqdm(range(settings.steps), desc="pre-training the demo CLIP", unit="step", disable=not progress)
    for _ in bar:
        batch = generator.choice(len(images), size=settings.batch_size, replace=False)
        batch_classes = classes[batch]
        caption_ids = [per_class[c][generator.integers(len(per_class[c]))] for c in batch_classes]
        image_features = model.encode_image(_to_model_input(images[batch], normalize), normalize=True)
        text_features = model.encode_text(tokens[caption_ids], normalize=True)
        loss = soft_clip_loss(image_features, text_features, torch.from_numpy(batch_classes), model.logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        with torch.no_grad():  # CLIP's clamp of the temperature (logit scale at most 100)
            model.logit_scale.clamp_(0, math.log(100))
        loss_value = loss.item()
        bar.set_postfix(loss=f"{loss_value:.3f}")
    model.eval()
    path = Path(out)
    save_state_dict({k: v.detach().contiguous() for k, v in model.state_dict().items()}, path)
    seconds = time.perf_counter() - started
    log.info("pre-trained %s for %d steps in %.1f s (final loss %.3f): %s", spec.name, settings.steps, seconds,
             loss_value, path)
    return PretrainOutcome(path, settings.steps, loss_value, seconds)

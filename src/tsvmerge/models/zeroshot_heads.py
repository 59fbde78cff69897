"""Zero-shot classification heads: loaded from ``head_<Dataset>Val.pt`` or built with the CLIP text tower.

Building follows SPEC §4: for each class, every template sentence (for each of the class's synonyms) is encoded by
the text tower and L2-normalized; the class embedding is their mean, L2-normalized again; the [C, D] stack is
multiplied by exp(logit_scale); the bias is zero and ``normalize`` is True.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..checkpoints.paths import head_path
from .factory import ModelSpec, create_clip, get_tokenizer
from .heads import ClassificationHead, load_classification_head, save_classification_head

__all__ = ["build_zeroshot_head", "load_or_build_heads", "missing_heads"]

log = logging.getLogger(__name__)


@torch.no_grad()
def build_zeroshot_head(clip: torch.nn.Module, tokenizer: Callable[[list[str]], Tensor],
                        class_synonyms: Sequence[Sequence[str]], templates: Sequence[str],
                        device: torch.device | str = "cpu", progress: bool = False,
                        description: str = "zero-shot head") -> ClassificationHead:
    """The head of SPEC §4 from class names (one list of synonyms per class) and ``'{}'`` prompt templates."""
    clip = clip.eval().to(device)
    rows = []
    for synonyms in tqdm(class_synonyms, desc=description, disable=not progress, leave=False, unit="class"):
        texts = [template.replace("{}", name) for name in synonyms for template in templates]
        embeddings = clip.encode_text(tokenizer(texts).to(device)).float()
        embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)
        mean = embeddings.mean(dim=0)
        rows.append(mean / mean.norm())
    weights = torch.stack(rows) * clip.logit_scale.detach().float().exp()
    return ClassificationHead(True, weights.cpu())


def missing_heads(model_location: str | Path, model: str, datasets: Sequence[str]) -> list[Path]:
    """Head files of ``datasets`` that do not exist."""
    return [p for p in (head_path(model_location, model, d) for d in datasets) if not p.is_file()]


def load_or_build_heads(
    spec: ModelSpec,
    model_location: str | Path,
    datasets: Sequence[str],
    synonyms: Callable[[str], Sequence[Sequence[str]]],
    templates: Callable[[str], Sequence[str]],
    shared_weights: Mapping[str, Tensor] | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> dict[str, ClassificationHead]:
    """One head per dataset (base names), read from its file, or built and saved there when absent.

    Building needs the text tower: the model is created with ``spec.pretrained``'s weights, then every entry of
    ``shared_weights`` (the zero-shot checkpoint: text embeddings, ``ln_final``, ``text_projection``,
    ``logit_scale``...) is copied over it, so that the heads match the checkpoint's model.
    """
    heads: dict[str, ClassificationHead] = {}
    to_build = []
    for dataset in datasets:
        path = head_path(model_location, spec.name, dataset)
        if path.is_file():
            heads[dataset] = load_classification_head(path)
        else:
            to_build.append(dataset)
    if not to_build:
        return heads
    log.info("building zero-shot heads for %s from %s's text tower", ", ".join(to_build), spec.pretrained)
    clip, _ = create_clip(spec, load_pretrained=True)
    if shared_weights is not None:
        own = clip.state_dict()
        with torch.no_grad():
            for key, value in shared_weights.items():
                name = key.removeprefix("model.")
                if name in own and tuple(own[name].shape) == tuple(value.shape):
                    own[name].copy_(value)
    tokenizer = get_tokenizer(spec, clip)
    for dataset in to_build:
        head = build_zeroshot_head(clip, tokenizer, synonyms(dataset), templates(dataset), device, progress,
                                   description=f"head {dataset}")
        path = head_path(model_location, spec.name, dataset)
        save_classification_head(head, path)
        log.info("saved zero-shot head %s", path)
        heads[dataset] = head
    del clip
    return heads

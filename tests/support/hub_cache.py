"""A local copy of the hub repository ``nik-dim/tall_masks`` in huggingface_hub's own cache layout, with tiny files in
the published formats, so that the download command runs without any network.

``<cache>/models--nik-dim--tall_masks/{blobs/<sha256>, refs/main, snapshots/<commit>/<path> -> ../../blobs/<sha256>}``
holds, per model folder (ViT-B-16 spelled ``VIT-B-16`` under ``single_task/``, as on the hub):
``single_task/<model>/<Task>Val/nonlinear_{finetuned,zeroshot}.pt`` (state dicts with ``model.visual.*`` keys),
``single_task/<model>/head_<Task>Val.pt`` (pickled heads) and ``tall_masks/<model>/TALL_mask_<T>task.npy`` (the
published ``np.save`` of packed masks, with their TIES variant), for T = 8.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
import torch

from tsvmerge.data.registry import BENCHMARK_DATASETS
from tsvmerge.models.heads import ClassificationHead

REPO_FOLDER = "models--nik-dim--tall_masks"
COMMIT = "fedcba9876543210fedcba9876543210fedcba98"
#: model name -> its folder spelling under single_task/ and tall_masks/ in the fixture.
FOLDERS = {"ViT-B-32": ("ViT-B-32", "ViT-B-32"), "ViT-B-16": ("VIT-B-16", "ViT-B-16")}
MASK_TASKS = 8
NUM_ENTRIES = 6  # entries of the tiny state dicts, flattened


def _state_dict(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"model.visual.proj": torch.randn(3, 2, generator=g), "model.logit_scale": torch.zeros(())}


def _torch_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _masks_bytes(tasks: list[str]) -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    np.save(buffer, {t: np.packbits(rng.random(NUM_ENTRIES) > 0.5) for t in tasks}, allow_pickle=True)
    return buffer.getvalue()


def hub_files() -> dict[str, bytes]:
    """Every file of the fixture repository: path in the repository -> content."""
    files: dict[str, bytes] = {}
    zeroshot = _torch_bytes(_state_dict(0))
    for model, (single, masks) in FOLDERS.items():
        for i, task in enumerate(BENCHMARK_DATASETS, start=1):
            files[f"single_task/{single}/{task}Val/nonlinear_finetuned.pt"] = _torch_bytes(_state_dict(i))
            files[f"single_task/{single}/{task}Val/nonlinear_zeroshot.pt"] = zeroshot
            head = ClassificationHead(True, torch.full((3, 2), float(i)))
            files[f"single_task/{single}/head_{task}Val.pt"] = _torch_bytes(head)
        mask = _masks_bytes(list(BENCHMARK_DATASETS[:MASK_TASKS]))
        files[f"tall_masks/{masks}/TALL_mask_{MASK_TASKS}task.npy"] = mask
        files[f"tall_masks/{masks}/TALL_mask_{MASK_TASKS}task_use_ties_sum.npy"] = mask
        files[f"tall_masks/{masks}/TALL_mask_14task.npy"] = _masks_bytes(list(BENCHMARK_DATASETS[:14]))
    return files


def make_hub_cache(cache: Path, files: dict[str, bytes] | None = None) -> Path:
    """Write ``files`` (default :func:`hub_files`) as huggingface_hub caches them; returns the snapshot folder."""
    repo = cache / REPO_FOLDER
    snapshot = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    for path, content in (hub_files() if files is None else files).items():
        blob = repo / "blobs" / hashlib.sha256(content).hexdigest()
        blob.write_bytes(content)
        link = snapshot / path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


def blob_of(snapshot: Path, path: str) -> Path:
    """The blob a snapshot file links to."""
    return Path(os.path.realpath(snapshot / path))

"""``eval_single_task.py``'s recipe: top-1 of the zero-shot or each task's fine-tuned encoder on its own task.

Every dataset is evaluated on its test split (``<Dataset>``) and validation split (``<Dataset>Val``); the numbers go
to ``<results_dir>/single_task/<model>/nonlinear_ft_accuracies.json`` (fine-tuned; the file ``main.py`` divides by)
or ``zeroshot_accuracies.json`` (zero-shot), merged into the file's existing entries and rewritten atomically after
each dataset.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..checkpoints.paths import single_task_accuracy_path
from ..checkpoints.state_dict import LazyStateDict, open_state_dict
from ..models.encoder import build_image_encoder, load_encoder_weights
from ..models.factory import ModelSpec
from ..models.preprocess import split_preprocess
from ..utils.file_lock import locked
from .evaluate import Evaluator, Runtime
from .merge_eval import build_eval_data
from .preflight import Preflight
from ..utils.files import write_json

__all__ = ["FINETUNING_MODES", "SingleTaskOutcome", "accuracy_file", "record_accuracies", "run_single_task"]

log = logging.getLogger(__name__)

FinetuningMode = Literal["none", "standard"]
FINETUNING_MODES: tuple[str, ...] = ("none", "standard")


@dataclass
class SingleTaskOutcome:
    accuracies: dict[str, float]
    path: Path
    table: str


def accuracy_file(results_dir: str | Path, model: str, mode: FinetuningMode) -> Path:
    """``nonlinear_ft_accuracies.json`` (standard) or ``zeroshot_accuracies.json`` (none)."""
    path = single_task_accuracy_path(results_dir, model)
    return path if mode == "standard" else path.with_name("zeroshot_accuracies.json")


def _read_existing(path: Path) -> dict[str, float]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        log.warning("%s is not valid JSON; it will be replaced", path)
        return {}
    return {k: float(v) for k, v in data.items() if isinstance(v, int | float)} if isinstance(data, dict) else {}


def record_accuracies(path: str | Path, accuracies: dict[str, float]) -> Path:
    """Merge ``accuracies`` (``{"MNIST": top1, "MNISTVal": top1}``) into the accuracy file at ``path``, keeping its
    other entries; the file is rewritten atomically, under a lock so that concurrent jobs (one per task on a
    cluster) never drop each other's entries."""
    path = Path(path)
    with locked(path):
        return write_json(path, {**_read_existing(path), **accuracies})


def _open_all(paths: Sequence[Path]) -> list[LazyStateDict | None]:
    """Open every checkpoint before evaluating any, so that a truncated or corrupt file late in the list stops the
    run before it records an accuracy. Memory-mapped ones are kept open for later (cheap); files that had to be read
    into memory (legacy formats) are not kept (None), to be read again when their turn comes."""
    opened: list[LazyStateDict | None] = []
    for checkpoint in paths:
        state = open_state_dict(checkpoint)
        opened.append(state if state.file_backed else None)
    return opened


def run_single_task(spec: ModelSpec, mode: FinetuningMode, datasets: Sequence[str], *, model_location: Path,
                    data_location: Path, results_dir: Path, batch_size: int = 128, device: str = "auto",
                    precision: str = "bf16", channels_last: bool = True, num_workers: int | None = None,
                    eval_cache: str = "memory", cache_dir: Path = Path("cache/eval"),
                    progress: bool = True) -> SingleTaskOutcome:
    if mode not in FINETUNING_MODES:
        raise ValueError(f"finetuning mode {mode!r}; valid: {', '.join(FINETUNING_MODES)}")
    datasets = list(datasets)
    check = Preflight(f"eval_single_task ({mode}) on {spec.name}")
    zeroshot = check.zeroshot(model_location, spec.name, datasets) if mode == "none" else None
    if zeroshot is not None and not zeroshot.is_file() and spec.pretrained:
        check.checkpoints.remove(zeroshot)  # the pre-trained weights themselves serve as θ0
        log.info("%s not found: using model.pretrained=%s as the zero-shot encoder", zeroshot, spec.pretrained)
        zeroshot = None
    finetuned = check.finetuned(model_location, spec.name, datasets) if mode == "standard" else []
    check.heads(spec, model_location, datasets)
    check.data(data_location, datasets)
    path = accuracy_file(results_dir, spec.name, mode)
    check.writable(path.parent, "results folder")
    check.raise_if_missing()
    checkpoints = finetuned or ([zeroshot] if zeroshot is not None else [])
    opened = _open_all(checkpoints)

    def weights(i: int) -> LazyStateDict:
        return opened[i] or open_state_dict(checkpoints[i])

    started = time.perf_counter()
    runtime = Runtime.create(device, precision, channels_last)  # type: ignore[arg-type]
    first = weights(0) if checkpoints else None
    encoder, preprocess = build_image_encoder(spec, first, finetuned[0] if finetuned else zeroshot or "")
    prep = split_preprocess(preprocess)
    data = build_eval_data(spec, datasets, prep.pil, data_location=data_location, model_location=model_location,
                           batch_size=batch_size, num_workers=num_workers,
                           eval_cache="none" if eval_cache == "memory" else eval_cache,  # each split is read once
                           cache_dir=cache_dir, runtime=runtime, shared_weights=first, progress=progress)
    evaluator = Evaluator(encoder, runtime, prep.normalize, progress)
    accuracies: dict[str, float] = {}
    rows = []
    for i, d in enumerate(datasets):
        if mode == "standard" and i > 0:
            load_encoder_weights(evaluator.encoder, weights(i), finetuned[i], spec.name)
            opened[i] = None  # its tensors are in the encoder now
        test = evaluator.top1(data.heads[d], data.test[d], f"{d} test")
        val = evaluator.top1(data.heads[d], data.val[d], f"{d}Val")
        accuracies[d], accuracies[f"{d}Val"] = test, val
        record_accuracies(path, {d: test, f"{d}Val": val})
        rows.append(f"{d:16s} {100 * test:8.2f} {100 * val:9.2f}")
        log.info("%s: test %.4f, val %.4f", d, test, val)
    header = f"{'dataset':16s} {'top1':>8s} {'val top1':>9s}"
    table = "\n".join([f"{spec.name} | {'fine-tuned' if mode == 'standard' else 'zero-shot'} | "
                       f"{time.perf_counter() - started:.0f} s", header, "-" * len(header), *rows])
    return SingleTaskOutcome(accuracies, path, table)



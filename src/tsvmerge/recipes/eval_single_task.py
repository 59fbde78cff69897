"""``eval_single_task.py``: top-1 of the zero-shot or each task's fine-tuned encoder on its own task.

Every dataset is evaluated on its test split (``<Dataset>``) and validation split (``<Dataset>Val``); the numbers go
to ``<results_dir>/single_task/<model>/nonlinear_ft_accuracies.json`` (fine-tuned; the file ``main.py`` divides by)
or ``zeroshot_accuracies.json`` (zero-shot), merged into the file's existing entries and rewritten atomically after
each dataset (:mod:`tsvmerge.evaluation.accuracy_files`).

Reads top to bottom:

1. the command line: :func:`build_parser`, whose flags each set one key of ``config/eval_single_task.yaml``;
2. the settings: :class:`SingleTaskSettings`, read from the composed configuration by :func:`single_task_settings`,
   which raises one :class:`~tsvmerge.config.ConfigError` listing every problem;
3. :func:`run`: check every input on disk (checkpoints, heads, datasets, the results folder) - one error listing all
   gaps; open every checkpoint before evaluating any; build the image encoder and each dataset and head once
   (:mod:`tsvmerge.evaluation.eval_data`); then, per dataset, load its fine-tuned weights (``standard``), evaluate
   the test and validation splits and record both in the accuracy file; return the accuracies and a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ..checkpoints.state_dict import LazyStateDict, open_state_dict
from ..config import ConfigError, Problems, to_container
from ..config.flags import Flag, add_flags, group_flag
from ..config.schema import EvalSingleTaskSchema
from ..config.settings import check_device, check_minimums, dataset_names
from ..data import task_list
from ..evaluation.accuracy_files import FINETUNING_MODES, FinetuningMode, accuracy_file, record_accuracies
from ..evaluation.eval_data import build_eval_data
from ..evaluation.evaluate import Evaluator, Runtime
from ..evaluation.preflight import Preflight
from ..models.encoder import build_image_encoder, load_encoder_weights
from ..models.factory import ModelSpec
from ..models.model_config import model_spec
from ..models.preprocess import split_preprocess

__all__ = ["DESCRIPTION", "SingleTaskOutcome", "SingleTaskSettings", "build_parser", "run", "single_task_settings"]

log = logging.getLogger(__name__)

#: The first line of ``eval_single_task.py --help``.
DESCRIPTION = ("Evaluate the zero-shot or the fine-tuned image encoder of each task on its own test and validation "
               "splits.")


# 1. The command line.

def build_parser() -> argparse.ArgumentParser:
    """``eval_single_task.py``'s flags (the published spellings), ``--config-dir`` and plain ``key=value``
    overrides of ``config/eval_single_task.yaml``."""
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    add_flags(parser, EvalSingleTaskSchema, [
        group_flag("model", ("--model",), "model config name: config/model/<name>.yaml (default ViT-B-32)"),
        Flag("finetuning_mode", ("--finetuning-mode",)),
        Flag("datasets", ("--datasets", "--train-dataset"), "list",
             "datasets to evaluate, comma-separated or repeated (default: every task of the model's benchmark)"),
        Flag("num_tasks", ("--num-tasks",)), Flag("model_location", ("--model-location",)),
        Flag("data_location", ("--data-location",)), Flag("results_dir", ("--results-dir",)),
        Flag("batch_size", ("--batch-size",)), Flag("device", ("--device",)), Flag("precision", ("--precision",)),
        Flag("channels_last", ("--no-channels-last",), "false", "no channels-last memory format on CUDA"),
        Flag("num_workers", ("--num-workers",)), Flag("eval_cache", ("--eval-cache",)),
        Flag("cache_dir", ("--cache-dir",)), Flag("pretrained", ("--pretrained",)),
        Flag("progress", ("--no-progress",), "false", "no progress bars"),
    ])
    parser.add_argument("--config-dir", type=Path, action="append", default=[],
                        help="extra folder searched first for config files, e.g. model/<name>.yaml (as Hydra's)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides of config/eval_single_task.yaml")
    return parser


# 2. The settings.

@dataclass(frozen=True)
class SingleTaskSettings:
    """What one ``eval_single_task.py`` run evaluates, and how."""

    spec: ModelSpec
    mode: FinetuningMode
    datasets: tuple[str, ...]
    model_location: Path
    data_location: Path
    results_dir: Path
    batch_size: int = 128
    device: str = "auto"
    precision: str = "bf16"
    channels_last: bool = True
    num_workers: int | None = None
    eval_cache: str = "memory"
    cache_dir: Path = Path("cache/eval")
    progress: bool = True


def single_task_settings(cfg: DictConfig) -> SingleTaskSettings:
    """Validate the composed configuration (``config/eval_single_task.yaml``); raise one ConfigError listing every
    problem."""
    values: dict[str, Any] = to_container(cfg)
    problems = Problems()
    spec = model_spec(values["model"], problems)
    check_minimums(values, EvalSingleTaskSchema, problems)
    check_device(str(values["device"]), problems)
    names = dataset_names(values["datasets"])
    if names is not None and values["num_tasks"] is not None:
        problems.append("give either datasets (--datasets / --train-dataset) or num_tasks (--num-tasks), not both")
    datasets: list[str] = []
    if spec is not None and not problems:
        try:
            datasets = task_list(num_tasks=values["num_tasks"], datasets=names, benchmark=spec.benchmark)
        except ValueError as exc:
            problems.append(f"datasets: {exc}")
    problems.raise_if_any("invalid eval_single_task configuration")
    assert spec is not None
    if values["pretrained"]:
        spec = dataclasses.replace(spec, pretrained=values["pretrained"])
    if not datasets:
        raise ConfigError("no dataset to evaluate")
    return SingleTaskSettings(
        spec=spec, mode=values["finetuning_mode"], datasets=tuple(datasets),
        model_location=Path(values["model_location"]), data_location=Path(values["data_location"]),
        results_dir=Path(values["results_dir"]), batch_size=values["batch_size"], device=str(values["device"]),
        precision=values["precision"], channels_last=values["channels_last"], num_workers=values["num_workers"],
        eval_cache=values["eval_cache"], cache_dir=Path(values["cache_dir"]), progress=values["progress"])


# 3. The run.

@dataclass
class SingleTaskOutcome:
    accuracies: dict[str, float]
    path: Path
    table: str


def _open_all(paths: Sequence[Path]) -> list[LazyStateDict | None]:
    """Open every checkpoint before evaluating any, so that a truncated or corrupt file late in the list stops the
    run before it records an accuracy. Memory-mapped ones are kept open for later (cheap); files that had to be read
    into memory (legacy formats) are not kept (None), to be read again when their turn comes."""
    opened: list[LazyStateDict | None] = []
    for checkpoint in paths:
        state = open_state_dict(checkpoint)
        opened.append(state if state.file_backed else None)
    return opened


def run(settings: SingleTaskSettings) -> SingleTaskOutcome:
    """The whole ``eval_single_task.py`` run: every dataset's test and validation top-1, recorded as it goes."""
    spec, mode, progress = settings.spec, settings.mode, settings.progress
    model_location, data_location = settings.model_location, settings.data_location
    if mode not in FINETUNING_MODES:
        raise ValueError(f"finetuning mode {mode!r}; valid: {', '.join(FINETUNING_MODES)}")
    datasets = list(settings.datasets)
    check = Preflight(f"eval_single_task ({mode}) on {spec.name}")
    zeroshot = check.zeroshot(model_location, spec.name, datasets) if mode == "none" else None
    if zeroshot is not None and not zeroshot.is_file() and spec.pretrained:
        check.checkpoints.remove(zeroshot)  # the pre-trained weights themselves serve as θ0
        log.info("%s not found: using model.pretrained=%s as the zero-shot encoder", zeroshot, spec.pretrained)
        zeroshot = None
    finetuned = check.finetuned(model_location, spec.name, datasets) if mode == "standard" else []
    check.heads(spec, model_location, datasets)
    check.data(data_location, datasets)
    path = accuracy_file(settings.results_dir, spec.name, mode)
    check.writable(path.parent, "results folder")
    check.raise_if_missing()
    checkpoints = finetuned or ([zeroshot] if zeroshot is not None else [])
    opened = _open_all(checkpoints)

    def weights(i: int) -> LazyStateDict:
        return opened[i] or open_state_dict(checkpoints[i])

    started = time.perf_counter()
    runtime = Runtime.create(settings.device, settings.precision, settings.channels_last)  # type: ignore[arg-type]
    first = weights(0) if checkpoints else None
    encoder, preprocess = build_image_encoder(spec, first, finetuned[0] if finetuned else zeroshot or "")
    prep = split_preprocess(preprocess)
    data = build_eval_data(spec, datasets, prep.pil, data_location=data_location, model_location=model_location,
                           batch_size=settings.batch_size, num_workers=settings.num_workers,
                           eval_cache="none" if settings.eval_cache == "memory" else settings.eval_cache,  # read once
                           cache_dir=settings.cache_dir, runtime=runtime, shared_weights=first, progress=progress)
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

"""``main.py``'s recipe: merge the fine-tuned checkpoints with one method and evaluate it (SPEC §4).

Reads top to bottom:

1. check every input on disk (checkpoints, heads, masks, accuracy file, datasets) - one error listing all gaps;
2. open the checkpoints once (memory-mapped) and build the image encoder from the zero-shot checkpoint;
3. build each dataset and head once;
4. merge (the streaming engine of :mod:`tsvmerge.merging`);
5. α sweep on the validation splits, the model rewritten in place for each α (or, for task-specific methods,
   each task's own vector per mask choice λ), then the test splits at the chosen α / λ;
6. write the result JSON atomically (plus a copy in the Hydra run directory) and print a table.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import __version__
from ..checkpoints.paths import tall_mask_paths
from ..checkpoints.state_dict import open_state_dict
from ..checkpoints.tall_mask_files import check_mask_file, read_mask_record, save_tall_masks
from ..config import ConfigError
from .run_settings import RunSettings
from ..data import class_synonyms, get_dataset, templates
from ..data.registry import default_num_workers
from ..data.task_dataset import TaskDataset
from ..merging import MaskFiles, MergeMethod, TaskVectors, build_method, flat_task_masks, merge
from ..merging.entry_rules import check_rules_match, rules_for
from ..models.encoder import build_image_encoder
from ..models.factory import ModelSpec
from ..models.preprocess import split_preprocess
from ..models.zeroshot_heads import load_or_build_heads
from ..utils.errors import UserError
from .alpha_search import EarlyStopping, InPlaceWeights, alpha_grid, alpha_label
from .evaluate import CachePolicy, EvalSplit, Evaluator, Runtime
from .metrics import first_best, metrics_section
from .preflight import Preflight
from ..utils.files import write_json
from .results import RESULT_SCHEMA, format_table, result_path, result_suffix
from .tracking import Tracker, log_merge_result

__all__ = ["EvalData", "MergeEvalOutcome", "RunInputs", "build_eval_data", "check_run_inputs", "run_merge_evaluation",
           "settings_result_path"]

log = logging.getLogger(__name__)


@dataclass
class MergeEvalOutcome:
    payload: dict[str, Any]
    path: Path
    copies: list[Path]
    table: str


@dataclass
class EvalData:
    """Per dataset (base name): validation and test splits and the zero-shot head."""

    val: dict[str, EvalSplit]
    test: dict[str, EvalSplit]
    heads: dict[str, torch.nn.Module]


def _policies(eval_cache: str) -> tuple[CachePolicy, CachePolicy]:
    """(validation, test) cache policies: validation splits are evaluated once per α, test splits once."""
    return {"memory": ("memory", "stream"), "disk": ("disk", "disk"), "none": ("stream", "stream")}[eval_cache]


def _synonyms(name: str, task: TaskDataset) -> list[list[str]]:
    try:
        return class_synonyms(name)
    except LookupError:  # class names that come from the dataset's files
        return [[c] for c in task.classnames]


def build_eval_data(spec: ModelSpec, datasets: list[str], preprocess: Any, *, data_location: Path,
                    model_location: Path, batch_size: int, num_workers: int | None, eval_cache: str,
                    cache_dir: Path, runtime: Runtime, shared_weights: Mapping[str, torch.Tensor] | None,
                    progress: bool, splits: tuple[str, ...] = ("val", "test")) -> EvalData:
    """Datasets (each built once), their evaluation splits and the heads (loaded, or built and saved)."""
    workers = default_num_workers() if num_workers is None else num_workers
    val_policy, test_policy = _policies(eval_cache)
    pin = runtime.on_cuda
    val, test, tasks = {}, {}, {}
    for d in datasets:
        if "val" in splits:
            task = get_dataset(f"{d}Val", preprocess, data_location, batch_size=batch_size, num_workers=workers)
            val[d] = EvalSplit(f"{d}Val", task, val_policy, cache_dir, batch_size, workers, pin)
        if "test" in splits:
            tasks[d] = get_dataset(d, preprocess, data_location, batch_size=batch_size, num_workers=workers)
            test[d] = EvalSplit(d, tasks[d], test_policy, cache_dir, batch_size, workers, pin)
    heads = load_or_build_heads(
        spec, model_location, datasets,
        synonyms=lambda d: _synonyms(d, tasks[d] if d in tasks else val[d].task),
        templates=templates, shared_weights=shared_weights, device=runtime.device, progress=progress,
    )
    return EvalData(val, test, {d: h.to(runtime.device).eval() for d, h in heads.items()})


@dataclass
class RunInputs:
    """Every input of a run as found on disk; ``check`` holds what is missing or unusable (nothing raised yet)."""

    check: Preflight
    zeroshot: Path
    finetuned: list[Path]
    missing_heads: list[str]
    accuracies: dict[str, float] | None
    mask_file: Path | None


def check_run_inputs(settings: RunSettings, method: MergeMethod | None = None) -> RunInputs:
    """Look at every input of a run (paths only: no checkpoint is read, no model built). main.py raises the
    problems found; ``tsvmerge doctor`` reports them with the commands that fetch what is missing."""
    if method is None:
        method = build_method(settings.method, settings.method_params)
    spec, loc, datasets = settings.model, settings.model_location, settings.datasets
    check = Preflight(f"{settings.method} on {spec.name} ({settings.num_tasks} tasks)")
    zeroshot = check.zeroshot(loc, spec.name, datasets)
    finetuned = check.finetuned(loc, spec.name, datasets) if method.uses_finetuned else []
    mask_file = _mask_file(settings, method, check)
    missing_heads = check.heads(spec, loc, datasets)
    accuracies = check.accuracies(settings.ft_accuracies, [f"{d}Val" for d in datasets] + list(datasets))
    check.data(settings.data_location, datasets)
    check.writable(settings_result_path(settings, method).parent, "results_dir")
    return RunInputs(check, zeroshot, finetuned, missing_heads, accuracies, mask_file)


def _preflight(settings: RunSettings, method: MergeMethod) -> tuple[Path, list[Path], dict[str, float], Path | None]:
    inputs = check_run_inputs(settings, method)
    inputs.check.raise_if_missing()
    assert inputs.accuracies is not None
    return inputs.zeroshot, inputs.finetuned, inputs.accuracies, inputs.mask_file


def _mask_file_candidates(settings: RunSettings, files: MaskFiles) -> list[Path]:
    """The saved TALL-mask files of this run's setting, the one to write first (``tall_mask_paths``)."""
    tasks = None if settings.benchmark_prefix else settings.datasets
    return tall_mask_paths(settings.model_location, settings.model.name, settings.num_tasks,
                           bool(files.variant), files.variant.removeprefix("_use_ties_"), tasks)


def mask_file_path(settings: RunSettings, files: MaskFiles) -> Path:
    """Where this run's TALL masks are saved (and read from, unless ``mask_file`` names a file)."""
    return _mask_file_candidates(settings, files)[0]


def _mask_file(settings: RunSettings, method: MergeMethod, check: Preflight) -> Path | None:
    """The TALL-mask file this run reads or writes (None: it uses none), checked against the run's tasks: a file
    for other tasks is never read, nor overwritten."""
    files = method.mask_files()
    if files is None:
        return None
    names = list(settings.datasets)
    if files.reads:
        if files.file:
            path = Path(files.file)
            if not path.is_file():
                check.other.append(f"method.mask_file={str(path)!r} does not exist")
                return path
        else:
            found = next((p for p in _mask_file_candidates(settings, files) if p.is_file()), None)
            if found is None:
                check.other.append(_missing_masks_message(settings, method, files))
                return None
            path = found
        try:
            check_mask_file(path, names, files.built_with)
        except (ValueError, OSError) as exc:
            check.other.append(str(exc))
        return path
    path = mask_file_path(settings, files)
    if path.is_file():
        try:
            check_mask_file(path, names, files.built_with)
            record = read_mask_record(path)
            if record is not None and list(record["tasks"]) != names:
                raise ValueError(f"{path} holds TALL masks for {record['tasks']}, this run merges {names}")
        except (ValueError, OSError) as exc:
            check.other.append(f"{exc}; this run would overwrite it: move it away, or run with other tasks")
    check.writable(path.parent, "the TALL-mask folder")
    return None


def _missing_masks_message(settings: RunSettings, method: MergeMethod, files: MaskFiles) -> str:
    looked = mask_file_path(settings, files)
    tasks = (f"num_tasks={settings.num_tasks}" if settings.benchmark_prefix
             else f"DATASETS=[{','.join(settings.datasets)}]")
    ties = "".join(f" method.{k}={str(v).lower() if isinstance(v, bool) else v}"
                   for k, v in files.built_with.items() if k != "use_ties" or v)
    message = (f"saved TALL masks {looked} not found: {settings.method} reads the masks of a {files.made_by} run; "
               f"run `python main.py model={settings.model.name} method={files.made_by} {tasks}{ties}` first")
    from ..download.checkpoints import BENCHMARK_SIZES, PUBLISHED_MODELS, fetch_command

    if settings.model.name in PUBLISHED_MODELS and settings.benchmark_prefix and settings.num_tasks in BENCHMARK_SIZES:
        command = fetch_command(settings.model.name, settings.datasets, True, settings.model_location, masks=True)
        message += f" (or fetch the published masks: `{command}`)"
    return message


def settings_result_path(settings: RunSettings, method: MergeMethod | None = None) -> Path:
    """The result file a run with ``settings`` writes (SPEC §4 naming; ``method`` defaults to the configured one)."""
    if method is None:
        method = build_method(settings.method, settings.method_params)
    alpha_fixed = settings.specify_lambda if method.alpha_grid_max is not None else None
    suffix = settings.result_suffix or result_suffix(settings.datasets, settings.benchmark_prefix, alpha_fixed)
    return result_path(settings.results_dir, settings.save_subfolder, settings.model.name, len(settings.datasets),
                       settings.method_full_name, suffix)


def run_merge_evaluation(settings: RunSettings, run_dir: Path | None = None,
                         config: Mapping[str, Any] | None = None) -> MergeEvalOutcome:
    """The whole ``main.py`` run; returns the payload written to the result file."""
    started = time.perf_counter()
    timing: dict[str, float] = {}
    spec, datasets, progress = settings.model, settings.datasets, settings.progress
    method = build_method(settings.method, settings.method_params)
    path = settings_result_path(settings, method)
    zeroshot_path, finetuned_paths, ft_acc, mask_file = _preflight(settings, method)
    if mask_file is not None:
        method = method.with_mask_file(str(mask_file))
    params = {f.name: getattr(method, f.name) for f in dataclasses.fields(method)}
    if settings.specify_lambda is not None and method.alpha_grid_max is None:
        log.warning("specify_lambda applies to methods with an α grid; %s uses α=%g", settings.method,
                    method.default_alpha)
    runtime = Runtime.create(settings.device, settings.precision, settings.channels_last)  # type: ignore[arg-type]
    log.info("%s on %s, %d tasks, device %s", settings.method, spec.name, len(datasets), runtime.describe())
    run_name = f"{spec.name}_{len(datasets)}tasks_{settings.method_full_name}"
    tracker = Tracker(settings.wandb, config, run_name)

    try:
        # Checkpoints are opened once, memory-mapped; θ0 serves the encoder, the heads and the merge.
        theta0 = open_state_dict(zeroshot_path)
        encoder, preprocess = build_image_encoder(spec, theta0, zeroshot_path)
        prep = split_preprocess(preprocess)
        data = build_eval_data(spec, datasets, prep.pil, data_location=settings.data_location,
                               model_location=settings.model_location, batch_size=settings.batch_size,
                               num_workers=settings.num_workers, eval_cache=settings.eval_cache,
                               cache_dir=settings.cache_dir, runtime=runtime, shared_weights=theta0, progress=progress)
        evaluator = Evaluator(encoder, runtime, prep.normalize, progress)
        weights = InPlaceWeights(evaluator.encoder)  # after the move to the device: these are the live tensors
        timing["setup_s"] = time.perf_counter() - started

        tick = time.perf_counter()
        tasks = None
        if not method.uses_finetuned:
            result = None
        else:
            finetuned = [open_state_dict(p) for p in finetuned_paths]
            rules = rules_for(theta0, svd_keys=settings.svd_keys, average_keys=settings.average_keys)
            try:
                check_rules_match(rules, {key: theta0.shape(key) for key in theta0},
                                  ("method.svd_keys", "method.average_keys"))
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            tasks = TaskVectors(theta0, finetuned, names=datasets, device=runtime.device, rules=rules)
            result = merge(method.for_benchmark(spec.name, len(datasets)), tasks, progress=progress)
        timing["merge_s"] = time.perf_counter() - tick

        extra: dict[str, Any] = {}
        tick = time.perf_counter()
        if result is not None and method.task_specific:
            outcome = _task_specific(settings, method, result, tasks, data, evaluator, weights, ft_acc, tracker,
                                     mask_file, extra)
        else:
            outcome = _shared_vector(settings, method, result, data, evaluator, weights, ft_acc, tracker, extra)
        alpha, alphas, val_sections, val_best, test, choices = outcome
        timing["evaluation_s"] = time.perf_counter() - tick
        timing["total_s"] = time.perf_counter() - started

        payload: dict[str, Any] = {
            "schema": RESULT_SCHEMA,
            "model": spec.name,
            "method": settings.method,
            "method_full_name": settings.method_full_name,
            "method_params": params,
            "entry_rules": {"svd_keys": settings.svd_keys, "average_keys": settings.average_keys},
            "num_tasks": len(datasets),
            "datasets": datasets,
            "alpha": alpha,
            "alpha_grid": alphas,
            "task_choices": choices,
            "selection": ("per task: best validation top-1 over the mask choices" if choices is not None
                          else "alpha maximizing val avg_normalized_top1 (first maximum)"),
            "test": test,
            "val": val_sections,
            "val_best": val_best,
            **extra,
            "ft_accuracies_file": str(settings.ft_accuracies),
            "merge_stats": {} if result is None else result.stats,
            "runtime": {"device": runtime.describe(), **timing},
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "tsvmerge_version": __version__,
            "config": dict(config or {}),
        }
        write_json(path, payload)
        copies = []
        if run_dir is not None and Path(run_dir).resolve() != path.parent.resolve():
            copies.append(write_json(Path(run_dir) / path.name, payload))
        log_merge_result(tracker, payload, str(path))
    finally:
        tracker.finish()
    table = format_table(test, datasets, val_best, choices,
                         title=f"{spec.name} | {settings.method_full_name} | {len(datasets)} tasks | α={alpha:g}")
    return MergeEvalOutcome(payload, path, copies, table)


def _evaluate_all(evaluator: Evaluator, data: EvalData, datasets: list[str], split: str,
                  label: str) -> dict[str, float]:
    splits = data.val if split == "val" else data.test
    return {splits[d].name: evaluator.top1(data.heads[d], splits[d], f"{splits[d].name} {label}") for d in datasets}


def _shared_vector(settings, method, result, data, evaluator, weights, ft_acc, tracker, extra):
    """One τMT for every task: α grid on validation (early stopping when the method declares it), test at the
    best α."""
    datasets = settings.datasets
    if result is None:  # zeroshot: θ0 itself
        alphas, tau = [float(method.default_alpha)], {}
    else:
        alphas = alpha_grid(method, settings.n_eval_points, settings.specify_lambda)
        tau = {k: v.to(evaluator.runtime.device) for k, v in (result.task_vector or {}).items()}
    stopping = EarlyStopping(method.alpha_sweep_patience() if len(alphas) > 1 else None)
    val_sections: dict[str, dict[str, float]] = {}
    for step, alpha in enumerate(tqdm(alphas, desc="α sweep (val)", disable=not settings.progress, unit="α")):
        weights.set(tau, alpha)
        accs = _evaluate_all(evaluator, data, datasets, "val", f"α={alpha:g}")
        section = metrics_section(accs, ft_acc)
        val_sections[alpha_label(alpha)] = section
        tracker.log({"alpha": alpha, **{f"val/{k}": v for k, v in section.items()}}, step=step)
        log.info("val α=%g: avg top1 %.4f, avg normalized %.4f", alpha, section["avg_top1"],
                 section["avg_normalized_top1"])
        if stopping.update(section["avg_top1"]):
            log.info("α sweep stopped after α=%g: %d values without a better validation mean top-1", alpha,
                     stopping.patience)
            break
    if stopping.patience is not None:
        extra["alpha_early_stopping"] = {"patience": stopping.patience, "stopped_at": alphas[len(val_sections) - 1]
                                         if len(val_sections) < len(alphas) else None}
    alphas = alphas[:len(val_sections)]
    best = first_best([s["avg_normalized_top1"] for s in val_sections.values()])
    alpha = alphas[best]
    for split in data.val.values():
        split.release()
    weights.set(tau, alpha)
    test = metrics_section(_evaluate_all(evaluator, data, datasets, "test", f"test α={alpha:g}"), ft_acc)
    val_best = dict(val_sections[alpha_label(alpha)])
    return alpha, alphas, val_sections, val_best, test, None


def _task_specific(settings, method, result, tasks, data, evaluator, weights, ft_acc, tracker, mask_file, extra):
    """Each task with its own vector (TSV-C, TALL / magnitude masks): per-task choice of λ on validation."""
    datasets = settings.datasets
    alpha = float(method.default_alpha)
    labels = list(result.mask_labels) or [alpha]
    keys = [alpha_label(x) if isinstance(x, float | int) else str(x) for x in labels]
    per_choice: dict[str, dict[str, float]] = {key: {} for key in keys}
    chosen: list[int] = []
    bar = tqdm(list(enumerate(datasets)), desc="tasks (val)", disable=not settings.progress, unit="task")
    for t, d in bar:
        scores = []
        for c, key in enumerate(keys):
            weights.set(result.task_specific_vector(t, c), alpha)
            acc = evaluator.top1(data.heads[d], data.val[d], f"{d}Val {key}")
            per_choice[key][f"{d}Val"] = acc
            scores.append(acc)
        chosen.append(first_best(scores))
        data.val[d].release()
        tracker.log({f"val/{d}Val:{key}": per_choice[key][f"{d}Val"] for key in keys})
    val_sections = {key: metrics_section(accs, ft_acc) for key, accs in per_choice.items()}
    val_best = metrics_section({f"{d}Val": per_choice[keys[c]][f"{d}Val"] for d, c in zip(datasets, chosen)},
                               ft_acc)
    choices = {d: labels[c] for d, c in zip(datasets, chosen)}
    files = method.mask_files()
    if files is not None and files.writes:
        path = mask_file_path(settings, files)
        save_tall_masks(path, flat_task_masks(result, tasks, chosen), built_with=files.built_with)
        log.info("saved the chosen TALL masks to %s", path)
        extra["tall_mask_file"] = str(path)
        extra["tall_mask_saved"] = True
    elif files is not None:
        extra["tall_mask_file"] = str(mask_file)
        extra["tall_mask_saved"] = False
    test_accs = {}
    for t, d in enumerate(tqdm(datasets, desc="tasks (test)", disable=not settings.progress, unit="task")):
        weights.set(result.task_specific_vector(t, chosen[t]), alpha)
        test_accs[d] = evaluator.top1(data.heads[d], data.test[d], f"{d} {keys[chosen[t]]}")
    weights.reset()
    test = metrics_section(test_accs, ft_acc)
    return alpha, [alpha], val_sections, val_best, test, choices


def check_run_config(cfg: Any) -> RunSettings:
    """Everything main.py checks before Hydra starts a job: the configuration, and that the result folder can be
    written (so that a run never fails after the merge)."""
    from .run_settings import settings_from_config
    from .preflight import output_folder_problem

    settings = settings_from_config(cfg)
    folder = settings.results_dir / settings.save_subfolder
    problem = output_folder_problem(folder)
    if problem:
        raise ConfigError(f"results_dir={str(settings.results_dir)!r}: {problem}; choose a writable results_dir")
    return settings


def run_from_hydra(cfg: Any) -> float:
    """Body of ``main.py`` under Hydra: validate, run, print the table; user errors exit with status 2 and one
    message (raised as SystemExit, which Hydra passes through)."""
    import sys

    from hydra.core.hydra_config import HydraConfig

    from ..config import to_container

    try:
        settings = check_run_config(cfg)
        run_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None
        outcome = run_merge_evaluation(settings, run_dir, to_container(cfg))
    except UserError as exc:
        print(f"main.py: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(outcome.table)
    print(f"results: {outcome.path}" + "".join(f"\n  copy: {p}" for p in outcome.copies))
    return float(outcome.payload["test"]["avg_normalized_top1"])

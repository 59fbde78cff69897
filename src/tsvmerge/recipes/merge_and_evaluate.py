"""``main.py``: merge the fine-tuned checkpoints with one method and evaluate the merged model (SPEC §4).

Reads top to bottom:

1. the settings: :func:`check_run_config` reads the composed configuration into a
   :class:`~tsvmerge.evaluation.run_settings.RunSettings` and checks that the result folder can be written;
2. check every input on disk (checkpoints, heads, masks, accuracy file, datasets) - one error listing all gaps
   (:mod:`tsvmerge.evaluation.run_inputs`);
3. open the checkpoints once (memory-mapped) and build the image encoder from the zero-shot checkpoint;
4. build each dataset and head once (:mod:`tsvmerge.evaluation.eval_data`);
5. data-aware methods (ESM, RegMean): each task's fine-tuned encoder run on a few samples of its own
   (:mod:`tsvmerge.calibration`); then merge (the streaming engine of :mod:`tsvmerge.merging`);
6. α sweep (or ESM's golden-section search) on the validation splits, the model rewritten in place for each α
   (or, for task-specific methods, each task's own vector per mask choice λ), then the test splits at the chosen
   α / λ;
7. write the result JSON atomically (plus a copy in the Hydra run directory) and print a table.

:func:`run_from_hydra` is what ``main.py`` runs under Hydra; :func:`run` is the run itself, also used by the analyses
that need a merged model's accuracy.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .. import __version__
from ..checkpoints.peft_adapter import open_task_source
from ..checkpoints.state_dict import open_state_dict
from ..checkpoints.tall_mask_files import save_tall_masks
from ..config import ConfigError, to_container
from ..calibration.clip import calibrate_from_datasets
from ..calibration.passes import CalibrationRecord
from ..evaluation.alpha_search import (
    EarlyStopping,
    InPlaceWeights,
    alpha_grid,
    alpha_label,
    golden_section_search,
)
from ..evaluation.data_regime import data_regime
from ..evaluation.eval_data import EvalData, build_eval_data
from ..evaluation.evaluate import Evaluator, Runtime
from ..evaluation.metrics import first_best, metrics_section
from ..evaluation.preflight import output_folder_problem
from ..evaluation.results import ResultFile, format_table
from ..evaluation.run_inputs import mask_file_path, preflight, settings_result_path
from ..evaluation.run_settings import RunSettings, settings_from_config
from ..evaluation.tracking import Tracker, log_merge_result
from ..merging import MergeMethod, MergeResult, TaskVectors, build_method, flat_task_masks, merge
from ..merging.entry_rules import check_rules_match, rules_for
from ..models.encoder import build_image_encoder
from ..models.preprocess import split_preprocess
from ..utils.errors import UserError
from ..utils.files import write_json

__all__ = ["MergeEvalOutcome", "check_run_config", "run", "run_from_hydra"]

log = logging.getLogger(__name__)


@dataclass
class MergeEvalOutcome:
    payload: dict[str, Any]
    path: Path
    copies: list[Path]
    table: str



def run(settings: RunSettings, run_dir: Path | None = None,
        config: Mapping[str, Any] | None = None) -> MergeEvalOutcome:
    """The whole ``main.py`` run; returns the payload written to the result file."""
    started = time.perf_counter()
    timing: dict[str, float] = {}
    spec, datasets, progress = settings.model, settings.datasets, settings.progress
    method = build_method(settings.method, settings.method_params)
    path = settings_result_path(settings, method)
    zeroshot_path, finetuned_paths, ft_acc, mask_file = preflight(settings, method)
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
        calibration: CalibrationRecord | None = None
        if not method.uses_finetuned:
            result = None
        else:
            finetuned = [open_task_source(p, theta0) for p in finetuned_paths]  # checkpoints or LoRA adapters
            rules = rules_for(theta0, svd_keys=settings.svd_keys, average_keys=settings.average_keys)
            try:
                check_rules_match(rules, {key: theta0.shape(key) for key in theta0},
                                  ("method.svd_keys", "method.average_keys"))
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            tasks = TaskVectors(theta0, finetuned, names=datasets, device=runtime.device, rules=rules)
            method = method.for_benchmark(spec.name, len(datasets))
            if method.calibration is not None:
                calibration = calibrate_from_datasets(
                    method, tasks, evaluator.encoder, datasets, prep.pil, prep.normalize,
                    data_location=settings.data_location, samples=settings.calibration_samples,
                    seed=settings.calibration_seed, progress=progress)
                timing["calibration_s"] = calibration.seconds
            result = merge(method, tasks, progress=progress)
        timing["merge_s"] = time.perf_counter() - tick

        tick = time.perf_counter()
        bench = EvalBench(evaluator, weights, data, datasets, ft_acc, tracker, progress)
        if result is not None and method.task_specific:
            choice = _choose_per_task(bench, method, result)
            masks = _mask_file_record(settings, method, result, tasks, choice.chosen, mask_file)
            selection = _test_per_task(bench, result, choice, float(method.default_alpha), masks)
        elif result is not None and method.alpha_search == "golden" and settings.specify_lambda is None:
            selection = _search_alpha(bench, method, result)
        else:
            alphas = ([float(method.default_alpha)] if result is None
                      else alpha_grid(method, settings.n_eval_points, settings.specify_lambda))
            selection = _select_alpha(bench, method, result, alphas)
        alpha = selection.alpha
        timing["evaluation_s"] = time.perf_counter() - tick
        timing["total_s"] = time.perf_counter() - started
        samples = None if calibration is None else max(calibration.samples.values())
        regime = data_regime(samples, len(selection.alpha_grid),
                             len(selection.val) if selection.task_choices is not None else 0)

        payload = ResultFile(
            model=spec.name,
            method=settings.method,
            method_full_name=settings.method_full_name,
            method_params=params,
            entry_rules={"svd_keys": settings.svd_keys, "average_keys": settings.average_keys},
            datasets=datasets,
            alpha=alpha,
            alpha_grid=selection.alpha_grid,
            task_choices=selection.task_choices,
            selection=selection.rule,
            data_regime=regime,
            calibration=None if calibration is None else calibration.to_json(),
            test=selection.test,
            val=selection.val,
            val_best=selection.val_best,
            **selection.extra,
            ft_accuracies_file=str(settings.ft_accuracies),
            merge_stats={} if result is None else result.stats,
            runtime={"device": runtime.describe(), **timing},
            created_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            tsvmerge_version=__version__,
            config=dict(config or {}),
        ).to_json()
        write_json(path, payload)
        copies = []
        if run_dir is not None and Path(run_dir).resolve() != path.parent.resolve():
            copies.append(write_json(Path(run_dir) / path.name, payload))
        log_merge_result(tracker, payload, str(path))
    finally:
        tracker.finish()
    table = format_table(selection.test, datasets, selection.val_best, selection.task_choices,
                         title=f"{spec.name} | {settings.method_full_name} | {len(datasets)} tasks | α={alpha:g}",
                         data_regime=regime)
    return MergeEvalOutcome(payload, path, copies, table)


# ------------------------------------------------------------------------------- what the validation selects

@dataclass
class EvalBench:
    """What the merged model is evaluated with: the encoder whose weights are rewritten in place, each task's
    splits and head, the single-task accuracies that normalized accuracy divides by, and the run's tracker."""

    evaluator: Evaluator
    weights: InPlaceWeights
    data: EvalData
    datasets: list[str]
    ft_accuracies: dict[str, float]
    tracker: Tracker
    progress: bool

    def top1_all(self, split: str, label: str) -> dict[str, float]:
        """Top-1 of the current weights on every task's ``split`` (``val`` or ``test``)."""
        splits = self.data.val if split == "val" else self.data.test
        return {splits[d].name: self.evaluator.top1(self.data.heads[d], splits[d], f"{splits[d].name} {label}")
                for d in self.datasets}


@dataclass
class Selection:
    """What the validation splits chose (one α, or one mask choice per task), and the metrics at that choice.
    ``extra``: the result-file keys of the selection's own (early stopping, the TALL-mask file)."""

    alpha: float
    alpha_grid: list[float]
    val: dict[str, dict[str, float]]
    val_best: dict[str, float]
    test: dict[str, float]
    task_choices: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: How the choice was made, in the result file's words.
    rule: str = "alpha maximizing val avg_normalized_top1 (first maximum)"


@dataclass
class PerTaskChoice:
    """Each task's choice among the method's masks (index into ``labels``), from its own validation split."""

    labels: list[Any]
    keys: list[str]
    chosen: list[int]
    val: dict[str, dict[str, float]]
    val_best: dict[str, float]


def _select_alpha(bench: EvalBench, method: MergeMethod, result: MergeResult | None,
                  alphas: list[float]) -> Selection:
    """One τMT for every task: the α grid on validation (early stopping when the method declares it), test at the
    best α. ``result`` None: the zero-shot model θ0 itself."""
    tau = _device_task_vector(bench, result)
    unscaled = _unscaled(method, tau)
    stopping = EarlyStopping(method.alpha_sweep_patience() if len(alphas) > 1 else None)
    val_sections: dict[str, dict[str, float]] = {}
    for step, alpha in enumerate(tqdm(alphas, desc="α sweep (val)", disable=not bench.progress, unit="α")):
        bench.weights.set(tau, alpha, unscaled=unscaled)
        section = metrics_section(bench.top1_all("val", f"α={alpha:g}"), bench.ft_accuracies)
        val_sections[alpha_label(alpha)] = section
        bench.tracker.log({"alpha": alpha, **{f"val/{k}": v for k, v in section.items()}}, step=step)
        log.info("val α=%g: avg top1 %.4f, avg normalized %.4f", alpha, section["avg_top1"],
                 section["avg_normalized_top1"])
        if stopping.update(section["avg_top1"]):
            log.info("α sweep stopped after α=%g: %d values without a better validation mean top-1", alpha,
                     stopping.patience)
            break
    extra: dict[str, Any] = {}
    if stopping.patience is not None:
        extra["alpha_early_stopping"] = {"patience": stopping.patience, "stopped_at": alphas[len(val_sections) - 1]
                                         if len(val_sections) < len(alphas) else None}
    alphas = alphas[:len(val_sections)]
    alpha = alphas[first_best([s["avg_normalized_top1"] for s in val_sections.values()])]
    for split in bench.data.val.values():
        split.release()
    bench.weights.set(tau, alpha, unscaled=unscaled)
    test = metrics_section(bench.top1_all("test", f"test α={alpha:g}"), bench.ft_accuracies)
    return Selection(alpha, alphas, val_sections, dict(val_sections[alpha_label(alpha)]), test, None, extra)


def _device_task_vector(bench: EvalBench, result: MergeResult | None) -> dict[str, Any]:
    if result is None:
        return {}
    return {k: v.to(bench.evaluator.runtime.device) for k, v in (result.task_vector or {}).items()}


def _unscaled(method: MergeMethod, tau: Mapping[str, Any]) -> frozenset[str]:
    """Entries of τMT that α does not multiply (ESM scales only its decomposed maps)."""
    return frozenset(key for key in tau if not method.alpha_scaled(key))


def _search_alpha(bench: EvalBench, method: MergeMethod, result: MergeResult) -> Selection:
    """ESM's golden-section search on [0, alpha_grid_max] (SPEC_ESM E7): the bracket follows the validation mean
    absolute top-1, α is the first maximum of the mean normalized top-1 among the 14 values evaluated."""
    tau = _device_task_vector(bench, result)
    unscaled = _unscaled(method, tau)
    val_sections: dict[str, dict[str, float]] = {}
    bar = tqdm(total=14, desc="α search (val)", disable=not bench.progress, unit="α")

    def evaluate(alpha: float) -> tuple[float, float]:
        bench.weights.set(tau, alpha, unscaled=unscaled)
        section = metrics_section(bench.top1_all("val", f"α={alpha:.4f}"), bench.ft_accuracies)
        bench.tracker.log({"alpha": alpha, **{f"val/{k}": v for k, v in section.items()}}, step=len(val_sections))
        val_sections[alpha_label(alpha)] = section
        log.info("val α=%.6f: avg top1 %.4f, avg normalized %.4f", alpha, section["avg_top1"],
                 section["avg_normalized_top1"])
        bar.update()
        return section["avg_top1"], section["avg_normalized_top1"]

    search = golden_section_search(evaluate, 0.0, float(method.alpha_grid_max or 2.0))
    bar.close()
    for split in bench.data.val.values():
        split.release()
    alpha = search.chosen
    bench.weights.set(tau, alpha, unscaled=unscaled)
    test = metrics_section(bench.top1_all("test", f"test α={alpha:.4f}"), bench.ft_accuracies)
    return Selection(alpha, search.points, val_sections, dict(val_sections[alpha_label(alpha)]), test, None,
                     rule="golden-section search on [0, 2] following val avg_top1; alpha maximizing val "
                          "avg_normalized_top1 among the evaluated (first maximum)")


def _choose_per_task(bench: EvalBench, method: MergeMethod, result: MergeResult) -> PerTaskChoice:
    """Each task with its own vector (TSV-C, TALL / magnitude masks): the mask choice λ with the best top-1 on the
    task's own validation split."""
    alpha = float(method.default_alpha)
    labels = list(result.mask_labels) or [alpha]
    keys = [alpha_label(x) if isinstance(x, float | int) else str(x) for x in labels]
    per_choice: dict[str, dict[str, float]] = {key: {} for key in keys}
    chosen: list[int] = []
    bar = tqdm(list(enumerate(bench.datasets)), desc="tasks (val)", disable=not bench.progress, unit="task")
    for t, d in bar:
        scores = []
        for c, key in enumerate(keys):
            bench.weights.set(result.task_specific_vector(t, c), alpha)
            acc = bench.evaluator.top1(bench.data.heads[d], bench.data.val[d], f"{d}Val {key}")
            per_choice[key][f"{d}Val"] = acc
            scores.append(acc)
        chosen.append(first_best(scores))
        bench.data.val[d].release()
        bench.tracker.log({f"val/{d}Val:{key}": per_choice[key][f"{d}Val"] for key in keys})
    val_sections = {key: metrics_section(accs, bench.ft_accuracies) for key, accs in per_choice.items()}
    val_best = metrics_section({f"{d}Val": per_choice[keys[c]][f"{d}Val"] for d, c in zip(bench.datasets, chosen)},
                               bench.ft_accuracies)
    return PerTaskChoice(labels, keys, chosen, val_sections, val_best)


def _mask_file_record(settings: RunSettings, method: MergeMethod, result: MergeResult, tasks: TaskVectors | None,
                      chosen: list[int], mask_file: Path | None) -> dict[str, Any]:
    """The TALL-mask file of a method that uses one: the chosen masks saved (methods that build them) or the file
    read; its result-file keys."""
    files = method.mask_files()
    if files is not None and files.writes:
        path = mask_file_path(settings, files)
        save_tall_masks(path, flat_task_masks(result, tasks, chosen), built_with=files.built_with)
        log.info("saved the chosen TALL masks to %s", path)
        return {"tall_mask_file": str(path), "tall_mask_saved": True}
    if files is not None:
        return {"tall_mask_file": str(mask_file), "tall_mask_saved": False}
    return {}


def _test_per_task(bench: EvalBench, result: MergeResult, choice: PerTaskChoice, alpha: float,
                   extra: dict[str, Any]) -> Selection:
    """Each task's test split with its own vector at its chosen mask."""
    test_accs = {}
    for t, d in enumerate(tqdm(bench.datasets, desc="tasks (test)", disable=not bench.progress, unit="task")):
        bench.weights.set(result.task_specific_vector(t, choice.chosen[t]), alpha)
        test_accs[d] = bench.evaluator.top1(bench.data.heads[d], bench.data.test[d],
                                            f"{d} {choice.keys[choice.chosen[t]]}")
    bench.weights.reset()
    choices = {d: choice.labels[c] for d, c in zip(bench.datasets, choice.chosen)}
    return Selection(alpha, [alpha], choice.val, choice.val_best, metrics_section(test_accs, bench.ft_accuracies),
                     choices, extra, rule="per task: best validation top-1 over the mask choices")


# ------------------------------------------------------------------------------------------------ command line

def check_run_config(cfg: Any) -> RunSettings:
    """Everything main.py checks before Hydra starts a job: the configuration, and that the result folder can be
    written (so that a run never fails after the merge)."""
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

    try:
        settings = check_run_config(cfg)
        run_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None
        outcome = run(settings, run_dir, to_container(cfg))
    except UserError as exc:
        print(f"main.py: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(outcome.table)
    print(f"results: {outcome.path}" + "".join(f"\n  copy: {p}" for p in outcome.copies))
    return float(outcome.payload["test"]["avg_normalized_top1"])

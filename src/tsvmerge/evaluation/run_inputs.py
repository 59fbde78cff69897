"""Every input of a merge run, found on disk before any work: the checkpoints, the heads, the single-task accuracies,
the datasets and the TALL-mask file; and the result file the run writes.

``main.py`` raises what is missing as one error; ``tsvmerge doctor`` reports it with the commands that fetch it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..checkpoints.paths import tall_mask_paths
from ..checkpoints.tall_mask_files import check_mask_file, read_mask_record
from ..merging import MaskFiles, MergeMethod, build_method
from .preflight import Preflight
from .results import result_path, result_suffix
from .run_settings import RunSettings

__all__ = ["RunInputs", "check_run_inputs", "mask_file_path", "preflight", "settings_result_path"]


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


def preflight(settings: RunSettings, method: MergeMethod) -> tuple[Path, list[Path], dict[str, float], Path | None]:
    """The run's inputs (zero-shot and fine-tuned checkpoints, accuracies, mask file); raises what is missing."""
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

"""``demo.py``: the embedded demo, end to end: synthetic tasks -> pre-trained tiny CLIP -> fine-tuning -> single-task accuracies
-> every merge method -> table and chart (``python demo.py``, ``make demo``).

Steps 3-6 run the recipes of the project's entry points (``finetune.py``, ``eval_single_task.py``, ``main.py``,
``analyze.py``, ``report.py``) in this process, each configured exactly as that entry point would be: its YAML file
composed by Hydra from ``plan.config`` with the overrides of the command line printed before the step runs (the same
command typed by hand does the same). Every step reuses what an earlier run left (data, pre-trained weights,
checkpoints, accuracy and result files) unless what it depends on changed; ``force=True`` re-evaluates.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..analysis.result_files import collect_results
from ..checkpoints.paths import finetuned_checkpoint_path, single_task_accuracy_path
from ..config import ConfigError, ConfigSource, Problems, compose_config, to_container
from ..config.flags import Flag, add_flags, group_flag, quote
from ..config.schema import DemoSchema
from ..models.model_config import model_spec
from ..data import task_list
from ..data.datasets.synthetic import GENERATOR_VERSION, generate_all
from ..data.datasets.synthetic_scenes import SCENES_VERSION
from ..merging import build_method
from ..merging.registry import method_class
from ..demo.pretrain import PRETRAIN_POOLS, PretrainSettings, pretrain_clip
from ..demo.summary import demo_table_methods, summarize, summary_markdown, write_summary

__all__ = ["DEFAULT_ANALYSES", "DEFAULT_METHOD_SETTINGS", "DEFAULT_METHODS", "DemoPlan", "demo_plan", "run_demo"]

log = logging.getLogger(__name__)


def _run_order(methods: Sequence[str]) -> tuple[str, ...]:
    """``methods`` in order, except that a method reading saved masks (as configured by default) runs after the
    method that saves them when both are listed (TALL masks before Consensus merging)."""
    ordered: list[str] = []
    for method in methods:
        files = build_method(method).mask_files()
        if files is not None and files.reads and files.made_by in methods and files.made_by not in ordered:
            ordered.append(files.made_by)
        if method not in ordered:
            ordered.append(method)
    return tuple(ordered)


#: Every merge method of the table (the methods' ``demo_row`` trait); tall_mask runs before consensus, which reads
#: the masks it saves.
DEFAULT_METHODS = _run_order(demo_table_methods())

#: Method parameters the demo passes (``method.<key>=value``): the methods' ``demo_settings`` trait. CART's authors
#: published no settings for the demo model, so it runs with their 8-task ViT-B-32 values.
DEFAULT_METHOD_SETTINGS: Mapping[str, tuple[str, ...]] = {
    m: method_class(m).demo_settings for m in DEFAULT_METHODS if method_class(m).demo_settings}

#: The analyses of docs/analysis.md that the demo runs after the merges (``analyses=True``).
DEFAULT_ANALYSES = ("sti", "sti_accuracy", "spectra", "merged_spectra", "procrustes", "truncation", "ablation",
                    "alpha_heatmap", "compression")


@dataclass(frozen=True)
class DemoPlan:
    """What the demo runs and where its files go (paths are resolved to absolute ones)."""

    config: ConfigSource | None = None  # the entry points' YAML files (demo.py passes its config/ folder)
    num_tasks: int = 8
    methods: tuple[str, ...] = DEFAULT_METHODS
    #: ``key=value`` method parameters per method, passed to main.py as ``method.<key>=value``.
    method_settings: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_METHOD_SETTINGS))
    analyses: tuple[str, ...] = ()
    model: str = "demo"
    data_location: Path = Path("data")
    model_location: Path = Path("models/checkpoints")
    results_dir: Path = Path("results/demo")
    pretrained: Path | None = None  # default: <model_location>/<model>/ + the file name of the config's `pretrained`
    pretrain: PretrainSettings = field(default_factory=PretrainSettings)
    finetune_epochs: int | None = None  # None: the model config's epochs per task
    finetune_max_steps: int | None = None
    finetune_parallel: int = 2  # tasks fine-tuned side by side (finetune.py --task-parallel)
    n_eval_points: int = 11
    seed: int = 0
    force: bool = False
    progress: bool = True

    def resolved(self) -> DemoPlan:
        return dataclasses.replace(
            self, data_location=self.data_location.resolve(), model_location=self.model_location.resolve(),
            results_dir=self.results_dir.resolve(),
            pretrained=None if self.pretrained is None else self.pretrained.resolve())


def demo_plan(cfg: Any, source: ConfigSource) -> DemoPlan:
    """The plan of demo.py's composed configuration (``config/demo.yaml``)."""
    from ..config.settings import check_minimums

    values = to_container(cfg)
    problems = Problems()
    check_minimums(values, DemoSchema, problems)
    known = ", ".join(DEFAULT_ANALYSES)
    problems.extend(f"unknown analysis {a!r}; available: {known}" for a in values["analyses"]
                    if a not in DEFAULT_ANALYSES)
    from ..merging import available_methods

    methods = tuple(values["methods"] or DEFAULT_METHODS)
    problems.extend(f"unknown method {m!r}; available: {', '.join(available_methods())}" for m in methods
                    if m not in available_methods())
    chosen = values["method_settings"]
    settings = ({name: tuple(str(a) for a in assignments) for name, assignments in chosen.items()}
                if chosen is not None else dict(DEFAULT_METHOD_SETTINGS))
    problems.extend(f"method_settings: unknown method {m!r}; available: {', '.join(available_methods())}"
                    for m in settings if m not in available_methods())
    problems.extend(f"method_settings.{m}: {a!r} is not key=value" for m, items in settings.items() for a in items
                    if "=" not in a)
    if values["pretrain_pool"] not in PRETRAIN_POOLS:
        problems.append(f"pretrain_pool={values['pretrain_pool']!r}: one of {', '.join(PRETRAIN_POOLS)}")
    problems.raise_if_any("invalid demo configuration")
    quick = values["quick"]
    steps = values["pretrain_steps"] or (60 if quick else PretrainSettings.steps)
    return DemoPlan(
        config=source, model=values["model"]["name"], num_tasks=values["num_tasks"] or (4 if quick else 8),
        methods=methods, method_settings=settings, analyses=tuple(values["analyses"]),
        data_location=Path(values["data_location"]), model_location=Path(values["model_location"]),
        results_dir=Path(values["results_dir"]),
        pretrained=Path(values["pretrained"]) if values["pretrained"] else None,
        pretrain=PretrainSettings(steps=steps, warmup_steps=min(30, steps // 5), seed=values["seed"],
                                  pool=values["pretrain_pool"]),
        finetune_epochs=values["finetune_epochs"],
        finetune_max_steps=values["finetune_max_steps"] or (20 if quick else None),
        finetune_parallel=values["finetune_parallel"],
        n_eval_points=values["n_eval_points"] or (6 if quick else 11), seed=values["seed"], force=values["force"],
        progress=values["progress"],
    )


def _step(what: str, command: Sequence[str], run: Callable[[], object]) -> float:
    """Print a step and the command line that does the same by hand, run it; returns its seconds (a failing step
    raises, and the demo stops there)."""
    print(f"\n==> {what}\n$ {shlex.join(command)}", flush=True)
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def _newer_than(path: Path, inputs: Sequence[Path]) -> bool:
    return path.is_file() and all(path.stat().st_mtime >= p.stat().st_mtime for p in inputs if p.exists())


def run_demo(plan: DemoPlan) -> dict[str, object]:
    """Run every step of ``plan``; returns the timings, the summary rows and the written files."""
    from ..analysis.report import write_report
    from ..evaluation.run_settings import settings_from_config
    from . import eval_single_task, merge_and_evaluate
    from . import finetune as finetune_recipe
    from .analyze import Workspace, check_analysis_config, run_analysis

    if plan.config is None:
        raise ValueError("DemoPlan.config: the folder of the entry points' YAML files is needed")
    plan = plan.resolved()
    source = plan.config
    timings: dict[str, float] = {}
    started = time.perf_counter()
    problems = Problems()
    spec = model_spec(to_container(compose_config(source, "demo", [f"model={plan.model}"]).model), problems)
    problems.raise_if_any(f"invalid model config {plan.model}")
    assert spec is not None
    if spec.benchmark != "synthetic" or not spec.pretrained:
        raise ConfigError(f"model {plan.model!r} is not a demo model: the demo needs `benchmark: synthetic` and a "
                          "`pretrained` file name in its config (see config/model/demo.yaml)")
    tasks = task_list(plan.num_tasks, benchmark=spec.benchmark)
    pretrained = plan.pretrained or plan.model_location / plan.model / Path(str(spec.pretrained)).name
    locations = {"model_location": plan.model_location, "data_location": plan.data_location,
                 "results_dir": plan.results_dir}
    model = [f"model={plan.model}"]

    # 1. The synthetic tasks (generated once, cached under the data location).
    tick = time.perf_counter()
    print(f"==> synthetic tasks under {plan.data_location / 'synthetic'}: {', '.join(tasks)}", flush=True)
    generate_all(plan.data_location, disable=not plan.progress)
    timings["data_s"] = time.perf_counter() - tick

    # 2. The pre-trained tiny CLIP (contrastive image-caption run on captioned scenes). Checkpoints made with other
    # settings (another seed, an older version of the demo) are moved aside first: fine-tuning skips tasks whose
    # checkpoint exists, so they would otherwise be reused.
    tick = time.perf_counter()
    checkpoints_folder = plan.model_location / plan.model
    stamp = _settings_stamp(plan, spec, pretrained)
    _set_aside_stale(checkpoints_folder, stamp)
    if not pretrained.is_file():
        pretrained.parent.mkdir(parents=True, exist_ok=True)
        print(f"\n==> pre-training the demo CLIP ({plan.pretrain.steps} steps) -> {pretrained}", flush=True)
        pretrain_clip(spec, plan.data_location, pretrained, tasks, plan.pretrain, progress=plan.progress)
    else:
        print(f"\n==> pre-trained demo CLIP: {pretrained} (cached)", flush=True)
    timings["pretrain_s"] = time.perf_counter() - tick
    checkpoints_folder.mkdir(parents=True, exist_ok=True)
    _write_stamp(checkpoints_folder, stamp)

    # 3. Fine-tuning, one checkpoint per task in the published layout (tasks already fine-tuned are skipped), two
    # tasks at a time: the tiny model does not fill a CPU's cores, two processes with half of them each do.
    finetune = _overrides({**locations, "pretrained": pretrained, "train_dataset": tasks, "evaluate": False,
                           "seed": plan.seed, "task_parallel": plan.finetune_parallel,
                           "num_workers": 0, "progress": plan.progress, "epochs": plan.finetune_epochs,
                           "max_steps": plan.finetune_max_steps})
    cfg = finetune_recipe.finetune_config(compose_config(source, "finetune", [*model, *finetune]))
    timings["finetune_s"] = _step("fine-tuning the image encoder on each task",
                                  ["python", "finetune.py", f"--model={plan.model}", *finetune],
                                  lambda: finetune_recipe.run(cfg))
    checkpoints = [finetuned_checkpoint_path(plan.model_location, plan.model, f"{d}Val") for d in tasks]

    # 4. Single-task accuracies of the fine-tuned models: the denominators of normalized accuracy.
    accuracies = single_task_accuracy_path(plan.results_dir, plan.model)
    if plan.force or not _newer_than(accuracies, checkpoints) or not _has_keys(accuracies, tasks):
        evaluate = _overrides({**locations, "finetuning_mode": "standard", "datasets": tasks, "num_workers": 0,
                               "progress": plan.progress})
        settings = eval_single_task.single_task_settings(compose_config(source, "eval_single_task", [*model, *evaluate]))
        timings["single_task_s"] = _step("evaluating each fine-tuned model on its own task",
                                         ["python", "eval_single_task.py", f"--model={plan.model}", *evaluate],
                                         lambda: print(eval_single_task.run(settings).table))
    else:
        print(f"\n==> single-task accuracies: {accuracies} (cached)", flush=True)

    # 5. Every merge method: merged once, α chosen on validation, evaluated on every test split.
    common = [*model, *_overrides({"num_tasks": plan.num_tasks, **locations, "model.pretrained": pretrained,
                                   "num_workers": 0, "progress": plan.progress})]
    fresh = set() if plan.force else _fresh_methods(plan, tasks, [accuracies, *checkpoints])
    todo = [m for m in plan.methods if m not in fresh]
    tick = time.perf_counter()
    for method in todo:
        overrides = [*common, f"method={method}", *(f"method.{a}" for a in plan.method_settings.get(method, ())),
                     f"n_eval_points={plan.n_eval_points}"]
        composed = compose_config(source, "config", overrides)
        run = settings_from_config(composed)
        _step(f"merging and evaluating: {method}", ["python", "main.py", *overrides],
              lambda run=run, composed=composed: print(merge_and_evaluate.run(run, None, to_container(composed)).table))
    if todo:
        timings["merge_eval_s"] = time.perf_counter() - tick
    else:
        print("\n==> merge results: all cached", flush=True)

    # 6. (optional) The paper's analyses on the demo checkpoints, and the Table 2-style report.
    if plan.analyses:
        tick = time.perf_counter()
        for analysis in plan.analyses:
            overrides = [*common, f"analysis={analysis}"]
            composed = compose_config(source, "analyze", overrides)
            params = check_analysis_config(composed)
            _step(f"analysis: {analysis}", ["python", "analyze.py", *overrides],
                  lambda composed=composed, analysis=analysis, params=params: run_analysis(
                      analysis, Workspace(composed, source), params))
        timings["analyses_s"] = time.perf_counter() - tick
        report_dir = plan.results_dir / "report"
        timings["report_s"] = _step("Table 2-style report and radar chart of every result file",
                                    ["python", "report.py", f"--results-dir={plan.results_dir}", f"--out={report_dir}"],
                                    lambda: write_report(plan.results_dir, report_dir))

    # 7. Table and chart.
    rows = summarize(plan.results_dir, plan.model, tasks)
    title = f"Demo: tiny CLIP, {len(tasks)} synthetic tasks"
    files = write_summary(rows, tasks, plan.results_dir, title=title)
    timings["total_s"] = time.perf_counter() - started
    print(f"\n{title} (test accuracy, %)\n")
    print(summary_markdown(rows, tasks))
    print("files: " + ", ".join(str(p) for p in files.values()))
    print("time: " + ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in timings.items()))
    return {"timings": timings, "rows": rows, "files": files}


def _overrides(values: Mapping[str, Any]) -> list[str]:
    """``key=value`` Hydra overrides (None values left out: the schema's default applies)."""
    return [f"{key}={quote(value if not isinstance(value, Path) else str(value))}" for key, value in values.items()
            if value is not None]


#: The file beside the demo's checkpoints recording the settings they were made with.
STAMP_NAME = "demo_settings.json"


def _settings_stamp(plan: DemoPlan, spec: Any, pretrained: Path) -> dict[str, Any]:
    """What the demo checkpoints under ``<model_location>/<model>`` depend on (besides the task data, versioned by
    their own cache): the pre-trained weights file and the settings of its pre-training and of the fine-tuning."""
    stamp = {"pretrained": str(pretrained), "pretrain": dataclasses.asdict(plan.pretrain),
             "scenes_version": SCENES_VERSION, "tasks_version": GENERATOR_VERSION, "arch": spec.arch,
             "open_clip_config": spec.open_clip_config, "finetuning": spec.finetuning, "seed": plan.seed,
             "finetune_epochs": plan.finetune_epochs, "finetune_max_steps": plan.finetune_max_steps}
    return json.loads(json.dumps(stamp, sort_keys=True, default=str))


def _write_stamp(folder: Path, stamp: Mapping[str, Any]) -> None:
    (folder / STAMP_NAME).write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")


def _set_aside_stale(folder: Path, stamp: Mapping[str, Any]) -> None:
    """Rename ``folder`` (``<model_location>/<model>``: the demo's own checkpoints, and its pre-trained weights unless
    ``--pretrained`` names another file) to ``<folder>.stale-<n>`` when it holds checkpoints made with other settings
    than ``stamp``; nothing is deleted."""
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    try:
        recorded = json.loads((folder / STAMP_NAME).read_text())
    except (OSError, ValueError):
        recorded = None
    if recorded == stamp:
        return
    n = 1
    while folder.with_name(f"{folder.name}.stale-{n}").exists():
        n += 1
    target = folder.with_name(f"{folder.name}.stale-{n}")
    folder.rename(target)
    print(f"\n==> {folder} holds demo checkpoints made with other settings (another --seed, another version of the "
          f"demo): moved to {target}; they are made again", flush=True)


def _has_keys(path: Path, tasks: Sequence[str]) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return all(k in data for t in tasks for k in (t, f"{t}Val"))


def _fresh_methods(plan: DemoPlan, tasks: Sequence[str], inputs: Sequence[Path]) -> set[str]:
    """The methods with a result on these tasks newer than the checkpoints and the accuracy file."""
    folder = plan.results_dir / "merging"
    if not folder.is_dir():
        return set()
    return {record.method for record in collect_results(folder)
            if record.model == plan.model and list(record.datasets) == list(tasks)
            and "lambda" not in record.suffix and _newer_than(record.path, inputs)}


# ------------------------------------------------------------------------------------------------- command line

def build_parser(description: str = "") -> argparse.ArgumentParser:
    """demo.py's flags, each setting a key of config/demo.yaml (``description``: the script's usage text)."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(parser, DemoSchema, [
        group_flag("model", ("--model",), "model config (config/model/<name>.yaml) with `benchmark: synthetic` "
                                          "(default demo)"),
        Flag("num_tasks", ("--num-tasks", "--tasks")), Flag("methods", ("--methods",), "list"),
        Flag("quick", ("--quick",), "true"), Flag("seed", ("--seed",)), Flag("pretrain_steps", ("--pretrain-steps",)),
        Flag("pretrain_pool", ("--pretrain-pool",)),
        Flag("finetune_epochs", ("--finetune-epochs",)), Flag("finetune_max_steps", ("--finetune-max-steps",)),
        Flag("finetune_parallel", ("--finetune-parallel",)),
        Flag("n_eval_points", ("--n-eval-points",)), Flag("data_location", ("--data-location",)),
        Flag("model_location", ("--model-location",)), Flag("results_dir", ("--results-dir",)),
        Flag("pretrained", ("--pretrained",)), Flag("force", ("--force",), "true"),
        Flag("progress", ("--no-progress",), "false", "no progress bars"),
    ])
    parser.add_argument("--analyses", nargs="*", metavar="ANALYSIS",
                        help="run analyses after the merges (no names: every analysis of docs/analysis.md)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides of config/demo.yaml")
    return parser

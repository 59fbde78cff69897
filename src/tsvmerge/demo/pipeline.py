"""The embedded demo, end to end: synthetic tasks -> pre-trained tiny CLIP -> fine-tuning -> single-task accuracies
-> every merge method -> table and chart (``python demo.py``, ``make demo``).

Steps 3-5 run the project's own entry points (``finetune.py``, ``eval_single_task.py``, ``main.py``) as separate
processes with ``--model=demo``, exactly as a user would type them: the commands are printed before they run. Every
step reuses what an earlier run left (data, pre-trained weights, checkpoints, accuracy and result files) unless what
it depends on changed; ``force=True`` re-evaluates.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..analysis.report import collect_results
from ..checkpoints.paths import finetuned_checkpoint_path, single_task_accuracy_path
from ..config import load_model_spec
from ..data import task_list
from ..data.datasets.synthetic import generate_all
from .pretrain import PretrainSettings, pretrain_clip
from .summary import summarize, summary_markdown, write_summary

__all__ = ["DEFAULT_METHODS", "DemoPlan", "run_demo"]

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[3]

#: Every merge method of the table; tall_mask runs before consensus, which reads the masks it saves.
DEFAULT_METHODS = ("zeroshot", "average", "sum", "ties", "tall_mask", "consensus", "TSVM", "TSVC")

#: The analyses of docs/analysis.md that the demo runs after the merges (``analyses=True``).
DEFAULT_ANALYSES = ("sti", "sti_accuracy", "spectra", "procrustes", "truncation", "ablation", "alpha_heatmap",
                    "compression")


@dataclass(frozen=True)
class DemoPlan:
    """What the demo runs and where its files go (paths are resolved to absolute ones)."""

    num_tasks: int = 8
    methods: tuple[str, ...] = DEFAULT_METHODS
    analyses: tuple[str, ...] = ()
    model: str = "demo"
    data_location: Path = Path("data")
    model_location: Path = Path("models/checkpoints")
    results_dir: Path = Path("results/demo")
    pretrained: Path | None = None  # default: <model_location>/<model>/ + the file name of the config's `pretrained`
    pretrain: PretrainSettings = field(default_factory=PretrainSettings)
    finetune_epochs: int | None = None  # None: the model config's epochs per task
    finetune_max_steps: int | None = None
    n_eval_points: int = 31
    force: bool = False
    progress: bool = True
    python: str = sys.executable

    def resolved(self) -> DemoPlan:
        return dataclasses.replace(
            self, data_location=self.data_location.resolve(), model_location=self.model_location.resolve(),
            results_dir=self.results_dir.resolve(),
            pretrained=None if self.pretrained is None else self.pretrained.resolve())


def _run(command: Sequence[str], what: str) -> float:
    """Run an entry point from the repository root, streaming its output; raise if it fails."""
    print(f"\n==> {what}\n$ {shlex.join(command)}", flush=True)
    started = time.perf_counter()
    completed = subprocess.run(list(command), cwd=REPO_ROOT, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"{what} failed (exit status {completed.returncode}): {shlex.join(command)}")
    return time.perf_counter() - started


def _newer_than(path: Path, inputs: Sequence[Path]) -> bool:
    return path.is_file() and all(path.stat().st_mtime >= p.stat().st_mtime for p in inputs if p.exists())


def run_demo(plan: DemoPlan) -> dict[str, object]:
    """Run every step of ``plan``; returns the timings, the summary rows and the written files."""
    plan = plan.resolved()
    timings: dict[str, float] = {}
    started = time.perf_counter()
    spec = load_model_spec(plan.model, [REPO_ROOT / "config"])
    if spec.benchmark != "synthetic" or not spec.pretrained:
        raise RuntimeError(f"model {plan.model!r} is not a demo model: the demo needs `benchmark: synthetic` and a "
                           "`pretrained` file name in its config (see config/model/demo.yaml)")
    tasks = task_list(plan.num_tasks, benchmark=spec.benchmark)
    pretrained = plan.pretrained or plan.model_location / plan.model / Path(str(spec.pretrained)).name
    python = [plan.python]
    common = [f"--model={plan.model}", f"--model-location={plan.model_location}",
              f"--data-location={plan.data_location}", f"--results-dir={plan.results_dir}"]
    quiet = [] if plan.progress else ["--no-progress"]

    # 1. The synthetic tasks (generated once, cached under the data location).
    tick = time.perf_counter()
    print(f"==> synthetic tasks under {plan.data_location / 'synthetic'}: {', '.join(tasks)}", flush=True)
    generate_all(plan.data_location, disable=not plan.progress)
    timings["data_s"] = time.perf_counter() - tick

    # 2. The pre-trained tiny CLIP (contrastive image-caption run on the union of the domains).
    tick = time.perf_counter()
    if not pretrained.is_file():
        pretrained.parent.mkdir(parents=True, exist_ok=True)
        print(f"\n==> pre-training the demo CLIP ({plan.pretrain.steps} steps) -> {pretrained}", flush=True)
        pretrain_clip(spec, plan.data_location, pretrained, tasks, plan.pretrain, progress=plan.progress)
    else:
        print(f"\n==> pre-trained demo CLIP: {pretrained} (cached)", flush=True)
    timings["pretrain_s"] = time.perf_counter() - tick

    # 3. Fine-tuning, one checkpoint per task in the published layout (tasks already fine-tuned are skipped).
    finetune = [*python, "finetune.py", *common, f"--pretrained={pretrained}", f"--train-dataset={','.join(tasks)}",
                "--no-eval", "--num-workers=0", *quiet]
    if plan.finetune_epochs is not None:
        finetune.append(f"--epochs={plan.finetune_epochs}")
    if plan.finetune_max_steps is not None:
        finetune.append(f"--max-steps={plan.finetune_max_steps}")
    timings["finetune_s"] = _run(finetune, "fine-tuning the image encoder on each task")
    checkpoints = [finetuned_checkpoint_path(plan.model_location, plan.model, f"{d}Val") for d in tasks]

    # 4. Single-task accuracies of the fine-tuned models: the denominators of normalized accuracy.
    accuracies = single_task_accuracy_path(plan.results_dir, plan.model)
    if plan.force or not _newer_than(accuracies, checkpoints) or not _has_keys(accuracies, tasks):
        evaluate = [*python, "eval_single_task.py", *common, "--finetuning-mode=standard",
                    f"--train-dataset={','.join(tasks)}", "--num-workers=0", *quiet]
        timings["single_task_s"] = _run(evaluate, "evaluating each fine-tuned model on its own task")
    else:
        print(f"\n==> single-task accuracies: {accuracies} (cached)", flush=True)

    # 5. Every merge method: merged once, α chosen on validation, evaluated on every test split.
    hydra_common = [f"model={plan.model}", f"num_tasks={plan.num_tasks}", f"data_location={plan.data_location}",
                    f"model_location={plan.model_location}", f"results_dir={plan.results_dir}",
                    f"model.pretrained={pretrained}", f"n_eval_points={plan.n_eval_points}", "num_workers=0",
                    f"progress={str(plan.progress).lower()}",
                    f"hydra.sweep.dir={plan.results_dir / 'runs'}/${{now:%Y-%m-%d_%H-%M-%S}}"]
    fresh = set() if plan.force else _fresh_methods(plan, tasks, [accuracies, *checkpoints])
    todo = [m for m in plan.methods if m not in fresh]
    if todo:
        merge = [*python, "main.py", "--multirun", f"method={','.join(todo)}", *hydra_common]
        timings["merge_eval_s"] = _run(merge, f"merging and evaluating: {', '.join(todo)}")
    else:
        print("\n==> merge results: all cached", flush=True)

    # 6. (optional) The paper's analyses on the demo checkpoints, and the Table 2-style report.
    if plan.analyses:
        analyze = [*python, "analyze.py", "--multirun", f"analysis={','.join(plan.analyses)}",
                   *[a for a in hydra_common if not a.startswith("n_eval_points")]]
        timings["analyses_s"] = _run(analyze, f"analyses: {', '.join(plan.analyses)}")
        report = [*python, "report.py", f"--results-dir={plan.results_dir}",
                  f"--out={plan.results_dir / 'report'}"]
        timings["report_s"] = _run(report, "Table 2-style report and radar chart of every result file")

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

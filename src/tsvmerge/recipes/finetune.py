"""``finetune.py``: fine-tune the image encoder on each task in turn, on one or many processes.

Reads top to bottom:

1. the settings: :class:`FinetuneConfig` (checked as a whole by :meth:`FinetuneConfig.validate`), and
   :class:`TaskResult`, what one task's run gives back;
2. the command line: :func:`build_parser` (every flag sets a key of ``config/finetune.yaml``) and
   :func:`overrides_from_args`, the Hydra overrides of a parsed command line;
3. :func:`finetune_config`: the composed configuration read into a :class:`FinetuneConfig`, every problem at once;
4. :func:`run`: here (one process), as one rank of a torchrun launch, in ``world_size`` spawned processes (DDP) or
   ``task_parallel`` processes of whole tasks; :func:`preflight` first lists every missing input;
5. the processes: :func:`run_worker` (one rank: every task in turn, then the results table) and
   :func:`run_task_parallel` (groups of tasks side by side, one process each);
6. one task, :func:`finetune_task`, on every rank:

   1. rank 0 decides whether the task is done (``nonlinear_finetuned.pt`` exists: skipped) and tells the others;
   2. rank 0 builds the encoder from an existing zero-shot checkpoint (else ``model.pretrained``), loads or builds
      the zero-shot head and writes ``nonlinear_zeroshot.pt``; the other ranks build the same architecture and
      receive the head (DDP copies rank 0's weights to them), so only rank 0 needs the checkpoint folder;
   3. all ranks train (:func:`tsvmerge.training.loop.train`);
   4. rank 0 writes ``nonlinear_finetuned.pt`` (atomically), the ranks evaluate their shards of the test and
      validation splits, rank 0 prints the top-1 and merges it into the single-task accuracy file and writes a run
      record ``<results_dir>/finetuning/<model>/<Dataset>Val.json``.

The primitives are in :mod:`tsvmerge.training` (process groups and launchers, the training loop, sharded
evaluation, checkpoint files, the training transform, seeding and weight fingerprints).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from .. import __version__
from ..checkpoints.paths import (
    find_zeroshot_checkpoint,
    finetuned_checkpoint_path,
    single_task_accuracy_path,
    zeroshot_checkpoint_path,
)
from ..checkpoints.state_dict import open_state_dict
from ..config import ConfigError, Problems, to_container
from ..config.flags import Flag, add_flags, flag_overrides, group_flag
from ..config.schema import FinetuneSchema
from ..config.settings import check_minimums, dataset_names, wandb_settings
from ..data import class_synonyms, get_dataset, templates
from ..data.registry import default_num_workers
from ..evaluation.accuracy_files import record_accuracies
from ..evaluation.preflight import Preflight
from ..evaluation.tracking import Tracker, WandbSettings
from ..models.encoder import ImageEncoder, build_image_encoder
from ..models.factory import ModelSpec, create_clip
from ..models.finetuning_protocol import Hyperparameters, default_epochs, default_hyperparameters, default_tasks
from ..models.heads import ClassificationHead
from ..models.model_config import model_spec
from ..models.zeroshot_heads import load_or_build_heads
from ..training.checkpointing import (
    initial_weights_file,
    intermediate_checkpoint_path,
    remove_stale_temporary_files,
    save_encoder,
    task_directory,
)
from ..training.distributed import (
    DistContext,
    DistributedRunError,
    Launch,
    detect_launch,
    install_termination_handler,
    launch_local,
    limit_cpu_threads,
    process_group,
    select_device,
)
from ..training.evaluation import evaluate_task
from ..training.loop import Classifier, TrainSettings, train, trainable_parameters
from ..training.reproducibility import seeded, weights_fingerprint
from ..training.transforms import train_preprocess
from ..utils.device import autocast_precision
from ..utils.files import json_safe, write_json

#: ``DistributedRunError`` and ``detect_launch``: for ``finetune.py``, which reports the one and logs the rank of the
#: other.
__all__ = ["DESCRIPTION", "DistributedRunError", "FinetuneConfig", "TaskResult", "build_parser", "detect_launch",
           "finetune_config", "overrides_from_args", "preflight", "run", "run_task_parallel", "run_worker",
           "task_groups"]

log = logging.getLogger(__name__)

RUN_RECORD_SCHEMA = "tsvmerge.finetune/1"


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything a fine-tuning run needs (picklable: it is sent to every spawned rank)."""

    model: ModelSpec
    tasks: tuple[str, ...]
    hyperparameters: Hyperparameters
    model_location: Path = Path("models/checkpoints")
    data_location: Path = Path("data")
    results_dir: Path = Path("results")
    epochs: int | None = None  # None: the published epochs of each dataset
    seed: int = 0
    max_steps: int | None = None
    checkpoint_every: int = 0
    device: str = "auto"
    precision: str = "bf16"
    num_workers: int | None = None
    augment: bool = True
    evaluate: bool = True
    eval_batch_size: int = 128
    log_every: int = 10
    progress: bool = True
    world_size: int = 1
    #: tasks fine-tuned at once, each group of tasks in its own process (CPU: the cores shared out; CUDA: one GPU per
    #: process). A task's result does not depend on it, up to float rounding of the thread count.
    task_parallel: int = 1
    port: int | None = None
    timeout_minutes: float = 30.0
    wandb: WandbSettings = field(default_factory=WandbSettings)

    def epochs_for(self, dataset: str) -> int:
        own = (self.model.finetuning or {}).get("epochs")
        return self.epochs if self.epochs is not None else default_epochs(dataset, own)

    @property
    def timeout(self) -> datetime.timedelta:
        return datetime.timedelta(minutes=self.timeout_minutes)

    def validate(self, world_size: int | None = None, local_world_size: int | None = None) -> None:
        """Every problem of the settings at once (ConfigError). ``world_size`` / ``local_world_size``: the processes
        of a torchrun launch, in all and on this node (default: ``self.world_size`` local processes)."""
        processes = self.world_size if world_size is None else world_size
        local = processes if local_world_size is None else local_world_size
        problems = []
        if processes < 1:
            problems.append(f"--world-size must be >= 1, got {processes}")
        try:
            self.hyperparameters.validate(max(processes, 1))
        except ValueError as exc:
            problems.append(str(exc))
        if not self.tasks:
            problems.append("no task to fine-tune")
        if self.task_parallel < 1:
            problems.append(f"--task-parallel must be >= 1, got {self.task_parallel}")
        elif self.task_parallel > 1 and processes > 1:
            problems.append(f"--task-parallel={self.task_parallel} runs whole tasks side by side, one process each; "
                            f"it cannot be combined with {processes} processes per task (--world-size / torchrun)")
        for d in self.tasks:
            try:
                self.epochs_for(d)
            except KeyError as exc:
                problems.append(str(exc.args[0]))
        if self.epochs is not None and self.epochs < 1:
            problems.append(f"--epochs must be >= 1, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(f"--max-steps must be >= 1, got {self.max_steps}")
        if self.checkpoint_every < 0:
            problems.append(f"--checkpoint-every must be >= 0, got {self.checkpoint_every}")
        try:
            select_device(self.device, 0, max(local, 1))
        except (RuntimeError, ValueError) as exc:
            problems.append(str(exc))
        if self.precision not in ("bf16", "fp16", "fp32"):
            problems.append(f"--precision must be bf16, fp16 or fp32, got {self.precision!r}")
        if problems:
            raise ConfigError("invalid fine-tuning settings:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass
class TaskResult:
    dataset: str
    skipped: bool
    checkpoint: Path
    accuracies: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    seconds: float = 0.0


# ------------------------------------------------------------------------------------------ the command line


DESCRIPTION = "Fine-tune the CLIP image encoder on each task (the published protocol), on one or many GPUs, or on CPU."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    add_flags(parser, FinetuneSchema, [
        group_flag("model", ("--model",), "model config name: config/model/<name>.yaml (default ViT-B-32)"),
        Flag("train_dataset", ("--train-dataset",), "list",
             "tasks to fine-tune, comma-separated or repeated (default: every task of the benchmark)"),
        Flag("epochs", ("--epochs",)), Flag("lr", ("--lr",)), Flag("wd", ("--wd",)),
        Flag("batch_size", ("--batch-size",)), Flag("num_grad_accumulation", ("--num-grad-accumulation",)),
        Flag("label_smoothing", ("--label-smoothing", "--ls")),
        Flag("warmup_steps", ("--warmup-steps", "--warmup-length")), Flag("max_grad_norm", ("--max-grad-norm",)),
        Flag("seed", ("--seed",)), Flag("checkpoint_every", ("--checkpoint-every",)),
        Flag("max_steps", ("--max-steps",)), Flag("model_location", ("--model-location",)),
        Flag("data_location", ("--data-location",)), Flag("results_dir", ("--results-dir",)),
        Flag("device", ("--device",)), Flag("precision", ("--precision",)), Flag("num_workers", ("--num-workers",)),
        Flag("world_size", ("--world-size",)), Flag("task_parallel", ("--task-parallel",)),
        Flag("port", ("--port",)), Flag("dist_timeout", ("--dist-timeout",)),
        Flag("augment", ("--no-augment",), "false",
             "train on the evaluation preprocess instead of open_clip's RandomResizedCrop(scale=(0.9, 1))"),
        Flag("evaluate", ("--no-eval",), "false", "skip the test / validation evaluation after fine-tuning"),
        Flag("eval_batch_size", ("--eval-batch-size",)), Flag("log_every", ("--log-every",)),
        Flag("pretrained", ("--pretrained",)), Flag("progress", ("--no-progress",), "false", "no progress bars"),
        Flag("wandb.mode", ("--wandb-mode",)), Flag("wandb.project", ("--wandb-project",)),
        Flag("wandb.entity", ("--wandb-entity",)), Flag("wandb.group", ("--wandb-group",)),
    ])
    parser.add_argument("--config-dir", type=Path, action="append", default=[],
                        help="extra folder searched first for config files, e.g. model/<name>.yaml (as Hydra's)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides of config/finetune.yaml")
    return parser


def overrides_from_args(args: argparse.Namespace) -> list[str]:
    """The Hydra overrides of ``build_parser().parse_args(...)``: its flags', then its ``KEY=VALUE`` ones."""
    return [*flag_overrides(args), *args.overrides]


# ---------------------------------------------------------------------------------------------- the settings


def finetune_config(cfg: DictConfig) -> FinetuneConfig:
    """Validate the composed configuration; raise one ConfigError listing every problem (the device and the
    hyper-parameters against the number of processes are checked by :meth:`FinetuneConfig.validate`)."""
    from ..data import task_list

    values: dict[str, Any] = to_container(cfg)
    values.pop("hydra", None)
    problems = Problems()
    spec = model_spec(values["model"], problems)
    check_minimums(values, FinetuneSchema, problems)
    tasks: list[str] = []
    if spec is not None:
        if values["pretrained"]:
            spec = dataclasses.replace(spec, pretrained=values["pretrained"])
        names = dataset_names(values["train_dataset"])
        try:
            tasks = task_list(datasets=names) if names is not None else default_tasks(spec.benchmark)
        except ValueError as exc:
            problems.append(f"train_dataset: {exc}")
    problems.raise_if_any("invalid fine-tuning configuration")
    assert spec is not None
    try:
        hyperparameters = default_hyperparameters(
            spec.name, spec.arch, spec.finetuning, lr=values["lr"], weight_decay=values["wd"],
            batch_size=values["batch_size"], num_grad_accumulation=values["num_grad_accumulation"],
            label_smoothing=values["label_smoothing"], warmup_steps=values["warmup_steps"],
            max_grad_norm=values["max_grad_norm"])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid fine-tuning configuration: {exc}") from None
    wandb = wandb_settings(values["wandb"])
    if wandb.group is None:
        wandb = WandbSettings(wandb.mode, wandb.project, wandb.entity, spec.name)
    return FinetuneConfig(
        model=spec, tasks=tuple(tasks), hyperparameters=hyperparameters,
        model_location=Path(values["model_location"]), data_location=Path(values["data_location"]),
        results_dir=Path(values["results_dir"]), epochs=values["epochs"], seed=values["seed"],
        max_steps=values["max_steps"], checkpoint_every=values["checkpoint_every"], device=str(values["device"]),
        precision=values["precision"], num_workers=values["num_workers"], augment=values["augment"],
        evaluate=values["evaluate"], eval_batch_size=values["eval_batch_size"], log_every=values["log_every"],
        progress=values["progress"], world_size=values["world_size"], task_parallel=values["task_parallel"],
        port=values["port"],
        timeout_minutes=values["dist_timeout"], wandb=wandb,
    )


# --------------------------------------------------------------------------------------------------- the run


def run(cfg: FinetuneConfig, environ: dict[str, str] | None = None) -> list[TaskResult] | None:
    """Run ``cfg`` here (one process), as this rank of a torchrun launch, or in ``cfg.world_size`` spawned processes.

    Returns the results of the tasks on rank 0 of an in-process run, None when the ranks ran in spawned processes
    (they print the results).
    """
    launch = detect_launch(environ)
    if launch is not None:
        if cfg.world_size not in (1, launch.world_size):
            log.warning("launched by torchrun with WORLD_SIZE=%d: --world-size=%d is ignored", launch.world_size,
                        cfg.world_size)
        cfg.validate(launch.world_size, launch.local_world_size)
        preflight(cfg, model_files=launch.rank == 0)
        return run_worker(launch, cfg)
    cfg.validate()
    if cfg.world_size > 1 and select_device(cfg.device).type == "cuda" and cfg.world_size > torch.cuda.device_count():
        raise ConfigError(f"--world-size={cfg.world_size} processes need as many GPUs, {torch.cuda.device_count()} "
                          "are visible (or use --device=cpu)")
    pending = preflight(cfg)
    if cfg.task_parallel > 1 and len(pending) > 1:
        return run_task_parallel(cfg, pending)
    if cfg.world_size == 1 or not pending:  # nothing to train: no need for processes
        return run_worker(Launch(), cfg)
    launch_local(run_worker, (cfg,), cfg.world_size, port=cfg.port, timeout=cfg.timeout)
    return None


def preflight(cfg: FinetuneConfig, model_files: bool = True) -> list[str]:
    """The tasks still to fine-tune; raise MissingInputsError listing every missing input of those tasks.

    ``model_files``: also check what only rank 0 reads (zero-shot checkpoint or pre-trained weights, heads).
    """
    spec = cfg.model
    pending = [d for d in cfg.tasks if not finetuned_checkpoint_path(cfg.model_location, spec.name, d).is_file()]
    if not pending:
        return pending
    check = Preflight(f"fine-tuning {spec.name} on {', '.join(pending)}")
    if model_files:
        if initial_weights_file(cfg.model_location, spec.name, pending[0]) is None:
            where = find_zeroshot_checkpoint(cfg.model_location, spec.name, pending)
            if not spec.pretrained:
                check.other.append(f"no zero-shot checkpoint ({where}) and no pre-trained weights (model.pretrained "
                                   "is null): nothing to start fine-tuning from")
            elif spec.pretrained_is_file and not Path(spec.pretrained).is_file():
                check.other.append(f"no zero-shot checkpoint ({where}) and model.pretrained={spec.pretrained!r} "
                                   "does not exist: nothing to start fine-tuning from")
        check.heads(spec, cfg.model_location, pending)
    check.data(cfg.data_location, pending)
    check.raise_if_missing()
    return pending


# ------------------------------------------------------------------------------------------------- processes


def _configure_logging(ctx: DistContext, launch: Launch) -> None:
    root = logging.getLogger()
    if not root.handlers:
        fmt = f"[%(asctime)s][rank {ctx.rank}][%(name)s][%(levelname)s] - %(message)s"
        logging.basicConfig(level=logging.INFO, format=fmt, stream=sys.stderr)
    if not ctx.is_main:
        root.setLevel(logging.WARNING)  # only rank 0 logs progress


def run_worker(launch: Launch, cfg: FinetuneConfig, record: bool = True) -> list[TaskResult]:
    """One rank of the run (or the whole run with ``launch.kind == 'single'``): every task in turn. ``record``: write
    the accuracy file and print the results table (the parent of a ``task_parallel`` run does both)."""
    if launch.kind != "single":
        install_termination_handler()
    # The CPU random stream is used (weight init of new models, seeded augmentation) and given back as it was.
    with (torch.random.fork_rng(devices=[]), limit_cpu_threads(launch.local_world_size),
          process_group(launch, cfg.device, cfg.timeout) as ctx):
        _configure_logging(ctx, launch)
        # Decided once per run (and logged once): the checkpoints, the evaluation and the run record all use it.
        cfg = dataclasses.replace(cfg, precision=autocast_precision(ctx.device, cfg.precision, announce=ctx.is_main))
        tracker = Tracker(cfg.wandb if ctx.is_main else WandbSettings(), json_safe(dataclasses.asdict(cfg)),
                          f"finetune_{cfg.model.name}")
        results = []
        try:
            for dataset in cfg.tasks:
                results.append(finetune_task(cfg, ctx, dataset, tracker, record))
                if ctx.device.type == "cuda":  # the task's model, optimizer state and DDP buckets are gone
                    gc.collect()
                    torch.cuda.empty_cache()
        finally:
            tracker.finish()
        if ctx.is_main and record:
            print(_table(cfg, results), flush=True)
    return results


def _table(cfg: FinetuneConfig, results: Sequence[TaskResult]) -> str:
    header = f"{'dataset':16s} {'top1':>8s} {'val top1':>9s} {'steps':>7s} {'time':>8s}"
    lines = [f"{cfg.model.name} | fine-tuning | {cfg.model_location}", header, "-" * len(header)]
    for r in results:
        if r.skipped:
            lines.append(f"{r.dataset:16s} {'skipped (fine-tuned checkpoint exists)':>35s}")
            continue
        test = f"{100 * r.accuracies[r.dataset]:8.2f}" if r.accuracies else f"{'-':>8s}"
        val = f"{100 * r.accuracies[f'{r.dataset}Val']:9.2f}" if r.accuracies else f"{'-':>9s}"
        lines.append(f"{r.dataset:16s} {test} {val} {r.steps:7d} {r.seconds:7.0f}s")
    return "\n".join(lines)


def run_task_parallel(cfg: FinetuneConfig, pending: Sequence[str]) -> list[TaskResult]:
    """Fine-tune the ``pending`` tasks ``cfg.task_parallel`` at a time, one process per group of tasks (spawned, so
    nothing of this process's state is shared); then record every accuracy at once and print one table.

    Worth it where one task does not fill the machine: small models on a multi-core CPU (several processes with few
    threads each outrun one process with many), or one task per GPU instead of DDP over all of them. When a task
    fails, the other groups still finish (their checkpoints are kept and skipped by the next run) and the error is
    raised.
    """
    groups = task_groups(pending, cfg.task_parallel)
    if select_device(cfg.device).type == "cuda" and len(groups) > torch.cuda.device_count():
        raise ConfigError(f"--task-parallel={len(groups)} processes need one GPU each, {torch.cuda.device_count()} "
                          "are visible (or use --device=cpu)")
    print(f"fine-tuning {len(pending)} tasks in {len(groups)} processes: "
          + "; ".join(", ".join(group) for group in groups), flush=True)
    context = torch.multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(len(groups), mp_context=context) as pool:
        futures = [pool.submit(_task_group_entry, dataclasses.replace(cfg, tasks=group, progress=False), index,
                               len(groups)) for index, group in enumerate(groups)]
        errors = [future.exception() for future in futures]
    failed = [error for error in errors if error is not None]
    if failed:
        if isinstance(failed[0], BrokenProcessPool):
            raise RuntimeError("a fine-tuning process died without a Python error (killed, out of memory, or started "
                               "from a script without an `if __name__ == '__main__':` guard, which spawned "
                               "processes need)") from failed[0]
        raise failed[0]
    done = {result.dataset: result for future in futures for result in future.result()}
    spec = cfg.model
    results = [done.get(d) or TaskResult(d, True, finetuned_checkpoint_path(cfg.model_location, spec.name, d))
               for d in cfg.tasks]
    accuracies = {key: value for result in results for key, value in result.accuracies.items()}
    if accuracies:
        path = record_accuracies(single_task_accuracy_path(cfg.results_dir, spec.name), accuracies)
        print(f"fine-tuned accuracies -> {path}", flush=True)
    print(_table(cfg, results), flush=True)
    return results


def task_groups(tasks: Sequence[str], processes: int) -> list[tuple[str, ...]]:
    """``tasks`` dealt round-robin to at most ``processes`` groups (neighbouring tasks of a benchmark, often of
    similar size, land in different groups)."""
    n = max(1, min(processes, len(tasks)))
    return [tuple(tasks[i::n]) for i in range(n)]


def _task_group_entry(cfg: FinetuneConfig, index: int, processes: int) -> list[TaskResult]:
    """One process of a ``task_parallel`` run: its group of tasks, on its own GPU or its share of the CPU cores."""
    if not logging.getLogger().handlers:  # its lines say which process wrote them (run_worker keeps this format)
        label = f"tasks {index + 1}/{processes}"
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format=f"[%(asctime)s][{label}][%(name)s][%(levelname)s] - %(message)s")
    if select_device(cfg.device).type == "cuda":
        cfg = dataclasses.replace(cfg, device=f"cuda:{index}")
    with limit_cpu_threads(processes):
        return run_worker(Launch(), cfg, record=False)


# -------------------------------------------------------------------------------------------------- one task


def finetune_task(cfg: FinetuneConfig, ctx: DistContext, dataset: str, tracker: Tracker,
                  record: bool = True) -> TaskResult:
    """Fine-tune (and evaluate) one task; ``record``: add its accuracies to the shared accuracy file (off in the
    processes of ``task_parallel`` runs, whose parent records them all at once)."""
    spec = cfg.model
    target = finetuned_checkpoint_path(cfg.model_location, spec.name, dataset)
    done = ctx.broadcast_object(target.is_file() if ctx.is_main else None)
    if done:
        if ctx.is_main:
            log.info("%s: skipped, %s exists", dataset, target)
        return TaskResult(dataset, True, target)

    started = time.perf_counter()
    hp = cfg.hyperparameters
    epochs = cfg.epochs_for(dataset)
    workers = default_num_workers() if cfg.num_workers is None else cfg.num_workers
    if ctx.is_main:
        # Class names come from the dataset's files for some datasets (only needed to build a missing head).
        def classnames() -> list[str]:
            return get_dataset(f"{dataset}Val", None, cfg.data_location, num_workers=0).classnames

        encoder, preprocess, head = _prepare_main(cfg, ctx, dataset, classnames)
        payload: Any = (bool(head.normalize), head.weight.detach().cpu(), head.bias.detach().cpu())
    else:
        encoder, preprocess = _prepare_other(cfg)
        payload = None
    normalize, weight, bias = ctx.broadcast_object(payload)  # also: rank 0 is done preparing
    head = ClassificationHead(normalize, weight, bias).requires_grad_(False)

    params, find_unused = trainable_parameters(encoder)
    settings = TrainSettings(hp, epochs, seed=cfg.seed, max_steps=cfg.max_steps, precision=cfg.precision,
                             num_workers=workers, checkpoint_every=cfg.checkpoint_every, log_every=cfg.log_every,
                             progress=cfg.progress, description=f"{dataset}Val")
    if ctx.is_main:
        log.info("%s: %d epochs, global batch %d x %d accumulation on %d process(es) (%s), lr %g, wd %g, "
                 "warm-up %d, label smoothing %g", dataset, epochs, hp.batch_size, hp.num_grad_accumulation,
                 ctx.world_size, ctx.device, hp.lr, hp.weight_decay, hp.warmup_steps, hp.label_smoothing)

    def save_checkpoint(step: int) -> None:
        path = save_encoder(encoder, intermediate_checkpoint_path(cfg.model_location, spec.name, dataset, step))
        log.info("%s: step %d, wrote %s", dataset, step, path)

    def log_metrics(metrics: dict[str, float], step: int) -> None:
        tracker.log({f"{dataset}/train/{k}": v for k, v in metrics.items()} | {f"{dataset}/train/step": step})
        if not cfg.progress:
            log.info("%s: step %d loss %.4f acc %.3f lr %.2e %.0f img/s", dataset, step, metrics["loss"],
                     metrics["accuracy"], metrics["lr"], metrics["images_per_s"])

    with seeded(cfg.seed + ctx.rank, ctx.device):  # data augmentation differs across ranks, reproducibly
        train_task = get_dataset(f"{dataset}Val", train_preprocess(encoder.model, preprocess, cfg.augment),
                                 cfg.data_location, batch_size=hp.batch_size, num_workers=workers)
        outcome = train(ctx, Classifier(encoder, head), params, train_task.train_dataset, settings,
                        find_unused_parameters=find_unused, save_checkpoint=save_checkpoint, log_metrics=log_metrics)
    if ctx.is_main:
        save_encoder(encoder, target)
        log.info("%s: %d steps in %.0f s, wrote %s", dataset, outcome.steps, outcome.seconds, target)

    accuracies: dict[str, float] = {}
    if cfg.evaluate:
        accuracies = evaluate_task(ctx, encoder, head, dataset, preprocess, cfg.data_location,
                                   batch_size=cfg.eval_batch_size, num_workers=workers, precision=cfg.precision,
                                   progress=cfg.progress)
    ranks = ctx.all_gather_object({"rank": ctx.rank, "host": socket.gethostname(), "pid": os.getpid(),
                                   "device": str(ctx.device), "samples": outcome.samples,
                                   "weights_sha256": weights_fingerprint(encoder)})
    seconds = time.perf_counter() - started
    if ctx.is_main:
        if accuracies and record:
            accuracy_path = record_accuracies(single_task_accuracy_path(cfg.results_dir, spec.name), accuracies)
            print(f"{dataset}: fine-tuned top-1 {100 * accuracies[dataset]:.2f} (test), "
                  f"{100 * accuracies[f'{dataset}Val']:.2f} (val) -> {accuracy_path}", flush=True)
            tracker.summary({f"{dataset}/test/top1": accuracies[dataset],
                             f"{dataset}Val/top1": accuracies[f"{dataset}Val"]})
        _write_record(cfg, ctx, dataset, outcome, accuracies, ranks, seconds, target)
    return TaskResult(dataset, False, target, accuracies, outcome.steps, seconds)


def _write_record(cfg: FinetuneConfig, ctx: DistContext, dataset: str, outcome: Any, accuracies: dict[str, float],
                  ranks: list[dict[str, Any]], seconds: float, checkpoint: Path) -> Path:
    record = {
        "schema": RUN_RECORD_SCHEMA,
        "model": cfg.model.name,
        "dataset": f"{dataset}Val",
        "checkpoint": checkpoint,
        "hyperparameters": dataclasses.asdict(cfg.hyperparameters),
        "epochs": cfg.epochs_for(dataset),
        "seed": cfg.seed,
        "max_steps": cfg.max_steps,
        "augment": cfg.augment,
        "precision": cfg.precision if ctx.device.type == "cuda" else "fp32",
        "world_size": ctx.world_size,
        "backend": ctx.backend,
        "ranks": ranks,
        "steps": outcome.steps,
        "planned_steps": outcome.planned_steps,
        "skipped_steps": outcome.skipped_steps,
        "final_train_loss": outcome.loss,
        "final_train_accuracy": outcome.accuracy,
        "history": outcome.history,
        "accuracies": accuracies,
        "seconds": seconds,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "tsvmerge_version": __version__,
    }
    return write_json(Path(cfg.results_dir) / "finetuning" / cfg.model.name / f"{dataset}Val.json", json_safe(record))


def _synonyms_for(task_classnames: Callable[[], list[str]]) -> Callable[[str], list[list[str]]]:
    def synonyms(name: str) -> list[list[str]]:
        try:
            return class_synonyms(name)
        except LookupError:  # class names that come from the dataset's files
            return [[c] for c in task_classnames()]

    return synonyms


def _prepare_main(cfg: FinetuneConfig, ctx: DistContext, dataset: str,
                  classnames: Callable[[], list[str]]) -> tuple[ImageEncoder, Callable[[Any], Any], ClassificationHead]:
    """Rank 0: encoder with the zero-shot weights, the head (loaded or built and saved), ``nonlinear_zeroshot.pt``."""
    spec = cfg.model
    source = initial_weights_file(cfg.model_location, spec.name, dataset)
    if source is not None:
        encoder, preprocess = build_image_encoder(spec, open_state_dict(source), source)
        log.info("%s: starting from %s", dataset, source)
    else:
        encoder, preprocess = build_image_encoder(spec, None)
        log.info("%s: starting from model.pretrained=%s", dataset, spec.pretrained)
    weights = encoder.state_dict()
    head = load_or_build_heads(spec, cfg.model_location, [dataset], synonyms=_synonyms_for(classnames),
                               templates=templates, shared_weights=weights, device=ctx.device,
                               progress=cfg.progress)[dataset]
    folder = task_directory(cfg.model_location, spec.name, dataset)
    remove_stale_temporary_files(folder)
    zeroshot = zeroshot_checkpoint_path(cfg.model_location, spec.name, dataset)
    if not zeroshot.is_file():
        save_encoder(encoder, zeroshot)
        log.info("%s: wrote %s", dataset, zeroshot)
    return encoder, preprocess, head


def _prepare_other(cfg: FinetuneConfig) -> tuple[ImageEncoder, Callable[[Any], Any]]:
    """Other ranks: the architecture only (random weights, no download); DDP copies rank 0's weights."""
    clip, preprocess = create_clip(cfg.model)
    return ImageEncoder(clip).eval(), preprocess

"""The configuration schema: every key of every entry point, with its type, default and allowed values.

These dataclasses are Hydra structured configs. :func:`tsvmerge.config.store.register_configs` puts them in Hydra's
ConfigStore, and the YAML files of ``config/`` build on them (``defaults: [<schema>, ...]``), so the YAML files hold
no defaults of their own: a key's default, type and allowed values are written once, here. Hydra rejects unknown keys
and values of the wrong type while it composes; :mod:`tsvmerge.config.compose` turns its errors into messages that
list the valid keys or values.

Allowed values of a string key are Enums: OmegaConf accepts the member names (``precision=fp16``) and lists them
when a value is not one of them. Each field's ``metadata["help"]`` documents it; the README's configuration table
is generated from it (:func:`tsvmerge.config.docs.schema_table`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional  # noqa: UP035 - OmegaConf reads these annotations at runtime

from omegaconf import MISSING

__all__ = [
    "AnalyzeSchema",
    "CachePolicy",
    "DemoSchema",
    "EvalSingleTaskSchema",
    "FinetuneSchema",
    "FinetuningMode",
    "MergeEvalSchema",
    "ModelSchema",
    "Precision",
    "RadarMetric",
    "ReportSchema",
    "RunSchema",
    "WandbMode",
    "WandbSchema",
]


def _key(default: Any, help: str, **kwargs: Any) -> Any:  # noqa: A002 - the argparse spelling
    """A schema field with its documentation."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


class Precision(Enum):
    """Autocast dtype of forward passes on CUDA (CPU runs fp32)."""

    bf16 = "bf16"
    fp16 = "fp16"
    fp32 = "fp32"


class CachePolicy(Enum):
    """How evaluation images are kept between passes."""

    memory = "memory"
    disk = "disk"
    none = "none"


class WandbMode(Enum):
    disabled = "disabled"
    offline = "offline"
    online = "online"


class RadarMetric(Enum):
    top1 = "top1"
    normalized_top1 = "normalized_top1"


class FinetuningMode(Enum):
    none = "none"
    standard = "standard"


@dataclass
class ModelSchema:
    """``config/model/<name>.yaml``: an open_clip CLIP and where its weights come from."""

    name: str = _key(MISSING, "model name: the checkpoint folder under model_location and results/single_task")
    arch: Optional[str] = _key(None, "open_clip architecture (open_clip.list_models()); null: the name")
    quick_gelu: bool = _key(False, "QuickGELU activations (OpenAI's weights and the published checkpoints)")
    pretrained: Optional[str] = _key(None, "open_clip tag or local weights file, used only for weights no "
                                           "checkpoint provides")
    open_clip_config: Optional[Dict[str, Any]] = _key(None, "inline open_clip model config for architectures "
                                                            "open_clip does not ship")
    cache_dir: Optional[str] = _key(None, "open_clip download cache")
    benchmark: str = _key("paper", "task list num_tasks counts in: paper (the 20 datasets) | synthetic (demo)")
    finetuning: Optional[Dict[str, Any]] = _key(None, "overrides of the published fine-tuning protocol "
                                                      "(hyper-parameters, epochs: {Dataset: n})")


@dataclass
class WandbSchema:
    """Weights & Biases logging (disabled: wandb is never imported)."""

    mode: WandbMode = _key(WandbMode.disabled, "disabled | offline | online")
    project: str = _key("tsvmerge", "wandb project")
    entity: Optional[str] = _key(None, "wandb entity (team or user)")
    group: Optional[str] = _key("${model.name}", "wandb run group")


@dataclass
class CalibrationSchema:
    """The samples of the data-aware methods (esm, regmean), drawn from each task's own dataset splits."""

    samples: Optional[int] = _key(None, "samples per task (null: the method's own: esm 32 validation images, "
                                        "regmean 256 training images)", minimum=1)
    seed: Optional[int] = _key(None, "seed of each task's draw (null: the method's own, 0)")


@dataclass
class RunSchema:
    """What every run on a model and its tasks shares: tasks, compute, files (main.py, analyze.py)."""

    model: ModelSchema = _key(MISSING, "config/model/<name>.yaml (ViT-B-32, ViT-B-16, ViT-L-14, demo)")
    method: Any = _key(MISSING, "config/method/<name>.yaml; its keys are the method's parameters "
                                "(`tsvmerge methods`)")
    num_tasks: int = _key(8, "the first num_tasks tasks of the model's benchmark (8, 14, 20: the paper's)")
    DATASETS: Optional[List[str]] = _key(None, "explicit task list, e.g. DATASETS=[MNIST,Cars] (num_tasks is then "
                                               "ignored)")
    specify_lambda: Optional[float] = _key(None, "fix α for methods with an α grid (the paper: 1.0 for TSVM); "
                                                 "null: chosen on validation")
    n_eval_points: int = _key(31, "α grid linspace(0, max, n_eval_points)[1:]", minimum=2)
    device: str = _key("auto", "auto | cpu | cuda | cuda:<index>")
    precision: Precision = _key(Precision.bf16, "autocast dtype on CUDA: bf16 | fp16 | fp32 (CPU runs fp32)")
    channels_last: bool = _key(True, "channels-last memory format on CUDA")
    batch_size: int = _key(128, "evaluation batch size", minimum=1)
    num_workers: Optional[int] = _key(None, "DataLoader workers (null: min(8, available CPUs))", minimum=0)
    data_location: str = _key("data", "the datasets (docs/data.md)")
    model_location: str = _key("models/checkpoints", "<model>/<Dataset>Val/nonlinear_{zeroshot,finetuned}.pt, "
                                                     "<model>/head_<Dataset>Val.pt")
    results_dir: str = _key("results", "where result files and analyses go")
    save_subfolder: str = _key("merging", "result files go to <results_dir>/<save_subfolder>/")
    result_suffix: Optional[str] = _key(None, "result file-name suffix (null: valbest or lambda<α>)")
    ft_accuracies: str = _key("${results_dir}/single_task/${model.name}/nonlinear_ft_accuracies.json",
                              "single-task accuracies: the denominators of normalized accuracy")
    eval_cache: CachePolicy = _key(CachePolicy.memory, "memory: validation images kept in RAM | disk: every split "
                                                       "cached in cache_dir | none")
    cache_dir: str = _key("cache/eval", "on-disk tensor cache (eval_cache=disk)")
    progress: bool = _key(True, "progress bars")
    calibration: CalibrationSchema = field(default_factory=CalibrationSchema,
                                           metadata={"help": "samples of the data-aware methods (esm, regmean)"})
    wandb: WandbSchema = field(default_factory=WandbSchema, metadata={"help": "Weights & Biases logging"})


@dataclass
class MergeEvalSchema(RunSchema):
    """``main.py``: merge with one method, choose α on validation, evaluate on every test split."""


@dataclass
class AnalyzeSchema(RunSchema):
    """``analyze.py``: main.py's keys plus ``analysis`` (config/analysis/<name>.yaml)."""

    analysis: Any = _key(MISSING, "config/analysis/<name>.yaml (sti, spectra, procrustes, truncation, ...)")


@dataclass
class FinetuneSchema:
    """``finetune.py``: the published fine-tuning protocol, per task, on one or many processes.

    Hyper-parameters left null take the protocol's value for the model (``Hyperparameters``: lr 1e-5, weight
    decay 0.1, batch 128 — ViT-L-14: 64 with 2 accumulation steps —, 500 warm-up steps, clipping at 1), then the
    model config's ``finetuning:`` section.
    """

    model: ModelSchema = _key(MISSING, "config/model/<name>.yaml")
    train_dataset: Optional[List[str]] = _key(None, "tasks to fine-tune (null: every task of the benchmark)")
    epochs: Optional[int] = _key(None, "epochs for every task (null: the protocol's epochs of each dataset)",
                                 minimum=1)
    lr: Optional[float] = _key(None, "peak learning rate (null: 1e-5)")
    wd: Optional[float] = _key(None, "AdamW weight decay (null: 0.1)")
    batch_size: Optional[int] = _key(None, "global batch of one forward pass over all processes (null: 128)")
    num_grad_accumulation: Optional[int] = _key(None, "forward passes per optimizer step (null: 1)")
    label_smoothing: Optional[float] = _key(None, "cross-entropy label smoothing (null: 0)")
    warmup_steps: Optional[int] = _key(None, "linear warm-up steps of the cosine schedule (null: 500)")
    max_grad_norm: Optional[float] = _key(None, "gradient clipping norm (null: 1)")
    seed: int = _key(0, "seed of the data order and augmentation")
    checkpoint_every: int = _key(0, "write checkpoint_<step>.pt every N optimizer steps (0: never)", minimum=0)
    max_steps: Optional[int] = _key(None, "stop each task after N optimizer steps", minimum=1)
    model_location: str = _key("models/checkpoints", "where the checkpoints are written")
    data_location: str = _key("data", "the datasets")
    results_dir: str = _key("results", "fine-tuned accuracies go to <results_dir>/single_task/<model>/")
    device: str = _key("auto", "auto | cpu | cuda (rank i uses its local GPU)")
    precision: Precision = _key(Precision.bf16, "autocast dtype on CUDA (fp32: no autocast); CPU runs fp32")
    num_workers: Optional[int] = _key(None, "DataLoader workers per process (null: min(8, CPUs))", minimum=0)
    world_size: int = _key(1, "local processes (one per GPU); ignored under torchrun", minimum=1)
    task_parallel: int = _key(1, "tasks fine-tuned side by side, one process each (CPU: the cores shared "
                                 "out; CUDA: one GPU each); not with world_size > 1", minimum=1)
    port: Optional[int] = _key(None, "rendezvous port of world_size > 1 runs (null: a free port)")
    dist_timeout: float = _key(30.0, "minutes a collective may wait for the other ranks")
    augment: bool = _key(True, "open_clip's RandomResizedCrop(scale=(0.9, 1)) on training images")
    evaluate: bool = _key(True, "evaluate on the test and validation splits after fine-tuning")
    eval_batch_size: int = _key(128, "evaluation batch size per process", minimum=1)
    log_every: int = _key(10, "optimizer steps between loss / throughput reports", minimum=1)
    pretrained: Optional[str] = _key(None, "override the model's pre-trained weights (open_clip tag or file)")
    progress: bool = _key(True, "progress bars")
    wandb: WandbSchema = field(default_factory=WandbSchema, metadata={"help": "Weights & Biases logging"})


@dataclass
class EvalSingleTaskSchema:
    """``eval_single_task.py``: each task's zero-shot or fine-tuned encoder on its own splits."""

    model: ModelSchema = _key(MISSING, "config/model/<name>.yaml")
    finetuning_mode: FinetuningMode = _key(FinetuningMode.standard, "none: the zero-shot encoder | standard: "
                                                                    "each task's fine-tuned encoder")
    datasets: Optional[List[str]] = _key(None, "datasets to evaluate (null: every task of the benchmark)")
    num_tasks: Optional[int] = _key(None, "the first N tasks of the model's benchmark", minimum=1)
    model_location: str = _key("models/checkpoints", "the checkpoints")
    data_location: str = _key("data", "the datasets")
    results_dir: str = _key("results", "the accuracy file goes to <results_dir>/single_task/<model>/")
    batch_size: int = _key(128, "evaluation batch size", minimum=1)
    device: str = _key("auto", "auto | cpu | cuda | cuda:<index>")
    precision: Precision = _key(Precision.bf16, "autocast dtype on CUDA (CPU runs fp32)")
    channels_last: bool = _key(True, "channels-last memory format on CUDA")
    num_workers: Optional[int] = _key(None, "DataLoader workers (null: min(8, CPUs))", minimum=0)
    eval_cache: CachePolicy = _key(CachePolicy.memory, "disk: keep preprocessed images in cache_dir for later runs")
    cache_dir: str = _key("cache/eval", "on-disk tensor cache")
    pretrained: Optional[str] = _key(None, "override the model's pre-trained weights (open_clip tag or file)")
    progress: bool = _key(True, "progress bars")


@dataclass
class DemoSchema:
    """``demo.py``: synthetic tasks, tiny CLIP, fine-tuning, every merge method, table and chart."""

    model: ModelSchema = _key(MISSING, "a model config with `benchmark: synthetic` (config/model/demo.yaml)")
    num_tasks: Optional[int] = _key(None, "the first N synthetic tasks (null: 8; quick: 4)", minimum=1)
    methods: Optional[List[str]] = _key(None, "merge methods of the table, in order (a method reading saved masks "
                                              "after the one saving them); null: every method of the demo's table "
                                              "(tsvmerge.recipes.demo.DEFAULT_METHODS)")
    method_settings: Optional[Dict[str, List[str]]] = _key(
        None, "method parameters per method, as key=value (main.py's method.<key>=value); null: "
              "tsvmerge.recipes.demo.DEFAULT_METHOD_SETTINGS (CART's authors published no settings for the demo model, so "
              "it uses their 8-task ViT-B-32 values)")
    analyses: List[str] = _key([], "analyses run after the merges (docs/analysis.md)")
    quick: bool = _key(False, "reduced run: 4 tasks, short pre-training and fine-tuning")
    seed: int = _key(0, "seed of the pre-training (initial weights, scenes, batches) and of the fine-tuning runs")
    pretrain_steps: Optional[int] = _key(None, "contrastive pre-training steps (null: 1200; quick: 60)", minimum=1)
    pretrain_pool: str = _key("scenes", "pre-training images: 'scenes' (captioned synthetic scenes, a separate "
                                        "distribution: src/tsvmerge/data/datasets/synthetic_scenes.py) or 'tasks' "
                                        "(the tasks' pretrain split, captioned with their templates: zero-shot "
                                        "starts close to fine-tuned)")
    finetune_epochs: Optional[int] = _key(None, "epochs per task (null: the model config's)", minimum=1)
    finetune_max_steps: Optional[int] = _key(None, "cap on optimizer steps per task (quick: 20)", minimum=1)
    finetune_parallel: int = _key(2, "tasks fine-tuned side by side, one process each (finetune.py "
                                     "--task-parallel)", minimum=1)
    n_eval_points: Optional[int] = _key(None, "α grid points (null: 11, i.e. steps of 0.1 on Task Arithmetic's "
                                              "[0, 1] and 0.3 on TSV-M's [0, 3]; quick: 6)", minimum=2)
    data_location: str = _key("data", "where the synthetic tasks are generated")
    model_location: str = _key("models/checkpoints", "pre-trained and fine-tuned demo checkpoints")
    results_dir: str = _key("results/demo", "accuracy files, result files, table and chart")
    pretrained: Optional[str] = _key(None, "pre-trained weights file (null: <model_location>/<model>/ + the "
                                           "file name of the model config's `pretrained`)")
    force: bool = _key(False, "re-run evaluations and merges even when their results are fresh")
    progress: bool = _key(True, "progress bars")


@dataclass
class ReportSchema:
    """``report.py``: every result file under results_dir into the paper's tables and radar charts."""

    results_dir: str = _key("results", "folder searched (recursively) for main.py result files")
    out: Optional[str] = _key(None, "output folder (null: <results_dir>/report)")
    radar: bool = _key(True, "draw the radar charts")
    radar_metric: RadarMetric = _key(RadarMetric.top1, "what the radar charts show: top1 | normalized_top1")

#!/usr/bin/env python
"""Fine-tune the CLIP image encoder on each task (the published protocol), on one or many GPUs, or on CPU.

    python finetune.py --model=ViT-B-32                               # every task, one process
    python finetune.py --model=ViT-B-32 --world-size=2                # 2 local processes (DDP)
    python finetune.py --model=ViT-B-32 --train-dataset=MNIST,Cars --epochs=1
    torchrun --nproc_per_node=8 --nnodes=2 ... finetune.py --model=ViT-L-14   # multi-node

Writes <model-location>/<model>/<Dataset>Val/nonlinear_{zeroshot,finetuned}.pt (the checkpoints main.py merges) and
appends the fine-tuned top-1 to <results-dir>/single_task/<model>/nonlinear_ft_accuracies.json. See docs/finetuning.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "config"


def _task_names(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [name.strip().removesuffix("Val") for value in values for name in value.split(",") if name.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--model", default="ViT-B-32", help="model config name: config/model/<name>.yaml")
    add("--train-dataset", action="append", metavar="NAMES",
        help="tasks to fine-tune, comma-separated or repeated (default: every task of the benchmark)")
    add("--epochs", type=int, help="epochs for every task (default: the published epochs of each dataset)")
    add("--lr", type=float, help="peak learning rate (default 1e-5)")
    add("--wd", type=float, help="AdamW weight decay (default 0.1)")
    add("--batch-size", type=int,
        help="global batch of one forward pass, over all processes (default 128; ViT-L-14: 64)")
    add("--num-grad-accumulation", type=int, help="forward passes per optimizer step (default 1; ViT-L-14: 2)")
    add("--label-smoothing", "--ls", type=float, help="cross-entropy label smoothing (default 0)")
    add("--warmup-steps", "--warmup-length", type=int, help="linear warm-up steps of the cosine schedule (default 500)")
    add("--max-grad-norm", type=float, help="gradient clipping norm (default 1)")
    add("--seed", type=int, default=0, help="seed of the data order (DistributedSampler) and augmentation")
    add("--checkpoint-every", type=int, default=0, help="write checkpoint_<step>.pt every N optimizer steps (0: never)")
    add("--max-steps", type=int, help="stop each task after N optimizer steps (smoke tests)")
    add("--model-location", type=Path, default=Path("models/checkpoints"))
    add("--data-location", type=Path, default=Path("data"))
    add("--results-dir", type=Path, default=Path("results"),
        help="the fine-tuned accuracies go to <results-dir>/single_task/<model>/nonlinear_ft_accuracies.json")
    add("--device", default="auto", help="auto | cpu | cuda (rank i uses cuda:<local rank>)")
    add("--precision", choices=("bf16", "fp16", "fp32"), default="bf16",
        help="autocast dtype on CUDA (fp32: no autocast, as the published script); CPU runs fp32")
    add("--num-workers", type=int, help="DataLoader workers per process (default: min(8, CPUs))")
    add("--world-size", type=int, default=1, help="number of local processes (one per GPU); ignored under torchrun")
    add("--port", type=int, help="rendezvous port of --world-size runs (default: a free port)")
    add("--dist-timeout", type=float, default=30.0, help="minutes a collective may wait for the other ranks")
    add("--no-augment", action="store_true",
        help="train on the evaluation preprocess instead of open_clip's RandomResizedCrop(scale=(0.9, 1))")
    add("--no-eval", action="store_true", help="skip the test / validation evaluation after fine-tuning")
    add("--eval-batch-size", type=int, default=128, help="batch size of the evaluation (per process)")
    add("--log-every", type=int, default=10, help="optimizer steps between reduced loss / throughput reports")
    add("--pretrained", help="override the model's pre-trained weights (open_clip tag or local file)")
    add("--config-dir", type=Path, action="append", default=[],
        help="extra directory searched for model/<name>.yaml (like Hydra's --config-dir)")
    add("--no-progress", action="store_true")
    add("--wandb-mode", choices=("disabled", "offline", "online"), default="disabled")
    add("--wandb-project", default="tsvmerge")
    add("--wandb-entity")
    add("--wandb-group")
    return parser


def config_from_args(args: argparse.Namespace):  # -> tsvmerge.training.run.FinetuneConfig
    import dataclasses

    from tsvmerge.config import ConfigError, load_model_spec
    from tsvmerge.data import task_list
    from tsvmerge.evaluation.tracking import WandbSettings
    from tsvmerge.training.protocol import default_hyperparameters, default_tasks
    from tsvmerge.training.run import FinetuneConfig

    spec = load_model_spec(args.model, [*args.config_dir, CONFIG_DIR])
    if args.pretrained:
        spec = dataclasses.replace(spec, pretrained=args.pretrained)
    names = _task_names(args.train_dataset)
    try:
        tasks = task_list(datasets=names) if names is not None else default_tasks(spec.benchmark)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    hp = default_hyperparameters(spec.name, spec.arch, spec.finetuning, lr=args.lr, weight_decay=args.wd,
                                 batch_size=args.batch_size, num_grad_accumulation=args.num_grad_accumulation,
                                 label_smoothing=args.label_smoothing, warmup_steps=args.warmup_steps,
                                 max_grad_norm=args.max_grad_norm)
    return FinetuneConfig(
        model=spec, tasks=tuple(tasks), hyperparameters=hp, model_location=args.model_location,
        data_location=args.data_location, results_dir=args.results_dir, epochs=args.epochs, seed=args.seed,
        max_steps=args.max_steps, checkpoint_every=args.checkpoint_every, device=args.device,
        precision=args.precision, num_workers=args.num_workers, augment=not args.no_augment,
        evaluate=not args.no_eval, eval_batch_size=args.eval_batch_size, log_every=args.log_every,
        progress=not args.no_progress, world_size=args.world_size, port=args.port, timeout_minutes=args.dist_timeout,
        wandb=WandbSettings(args.wandb_mode, args.wandb_project, args.wandb_entity, args.wandb_group or spec.name),
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import logging

    from torch.distributed.elastic.multiprocessing.errors import record

    from tsvmerge.evaluation.merge_eval import user_errors
    from tsvmerge.training.distributed import DistributedRunError, detect_launch
    from tsvmerge.training.run import run_finetuning

    launch = detect_launch()
    rank = f"[rank {launch.rank}]" if launch is not None else ""
    logging.basicConfig(level=logging.INFO, format=f"[%(asctime)s]{rank}[%(name)s][%(levelname)s] - %(message)s")
    try:
        cfg = config_from_args(args)
        if launch is not None:  # under torchrun: a failing rank's traceback goes to torchrun's error file
            record(run_finetuning)(cfg)
        else:
            run_finetuning(cfg)
    except user_errors() as exc:
        print(f"finetune.py: error: {exc}", file=sys.stderr)
        return 2
    except DistributedRunError as exc:
        print(f"finetune.py: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

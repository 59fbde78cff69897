#!/usr/bin/env python
"""Fine-tune the CLIP image encoder on each task (the published protocol), on one or many GPUs, or on CPU.

    python finetune.py --model=ViT-B-32                               # every task, one process
    python finetune.py --model=ViT-B-32 --world-size=2                # 2 local processes (DDP)
    python finetune.py --model=ViT-B-32 --task-parallel=4             # 4 tasks at once, one GPU each
    python finetune.py --model=ViT-B-32 --train-dataset=MNIST,Cars --epochs=1
    python finetune.py --model=ViT-B-32 lr=2e-5 seed=1                # plain overrides of config/finetune.yaml
    torchrun --nproc_per_node=8 --nnodes=2 ... finetune.py --model=ViT-L-14   # multi-node

Writes <model-location>/<model>/<Dataset>Val/nonlinear_{zeroshot,finetuned}.pt (the checkpoints main.py merges) and
appends the fine-tuned top-1 to <results-dir>/single_task/<model>/nonlinear_ft_accuracies.json. Every flag sets a key
of config/finetune.yaml (types and defaults: src/tsvmerge/config/schema.py, FinetuneSchema). See docs/finetuning.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "config"


def build_parser() -> argparse.ArgumentParser:
    from tsvmerge.config.flags import Flag, add_flags, group_flag
    from tsvmerge.config.schema import FinetuneSchema

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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


def config_from_args(args: argparse.Namespace):  # -> tsvmerge.training.run.FinetuneConfig
    from tsvmerge.config import compose_config
    from tsvmerge.recipes.configs import config_source
    from tsvmerge.config.flags import flag_overrides
    from tsvmerge.training.settings import finetune_config

    source = config_source(CONFIG_DIR, args.config_dir)
    return finetune_config(compose_config(source, "finetune", [*flag_overrides(args), *args.overrides]))


def main(argv: list[str] | None = None) -> int:
    from tsvmerge.utils.huge_pages import enable_huge_pages

    enable_huge_pages()  # before torch's first allocation (src/tsvmerge/utils/huge_pages.py)
    args = build_parser().parse_args(argv)
    import logging

    from torch.distributed.elastic.multiprocessing.errors import record

    from tsvmerge.training.distributed import DistributedRunError, detect_launch
    from tsvmerge.training.run import run_finetuning
    from tsvmerge.utils.entry_point import run_main

    launch = detect_launch()
    rank = f"[rank {launch.rank}]" if launch is not None else ""
    logging.basicConfig(level=logging.INFO, format=f"[%(asctime)s]{rank}[%(name)s][%(levelname)s] - %(message)s")

    def body() -> int:
        cfg = config_from_args(args)
        try:
            if launch is not None:  # under torchrun: a failing rank's traceback goes to torchrun's error file
                record(run_finetuning)(cfg)
            else:
                run_finetuning(cfg)
        except DistributedRunError as exc:
            print(f"finetune.py: error: {exc}", file=sys.stderr)
            return 1
        return 0

    return run_main("finetune.py", body)


if __name__ == "__main__":
    raise SystemExit(main())

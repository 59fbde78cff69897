#!/usr/bin/env python
"""Evaluate the zero-shot or the fine-tuned image encoder of each task on its own test and validation splits.

    python eval_single_task.py --model=ViT-B-32 --finetuning-mode=none
    python eval_single_task.py --model=ViT-B-32 --finetuning-mode=standard --datasets MNIST Cars

Writes results/single_task/<model>/nonlinear_ft_accuracies.json (standard: the denominators of main.py's normalized
accuracy) or zeroshot_accuracies.json (none), as {"MNIST": top1, "MNISTVal": top1, ...}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "config"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B-32", help="model config name: config/model/<name>.yaml")
    parser.add_argument("--finetuning-mode", choices=("none", "standard"), default="standard",
                        help="none: the zero-shot encoder; standard: each task's fine-tuned encoder")
    parser.add_argument("--datasets", nargs="+", metavar="NAME",
                        help="datasets to evaluate (default: every task of the model's benchmark)")
    parser.add_argument("--train-dataset", help="same as --datasets, comma-separated (published spelling)")
    parser.add_argument("--num-tasks", type=int, help="the first N tasks of the model's benchmark list")
    parser.add_argument("--model-location", type=Path, default=Path("models/checkpoints"))
    parser.add_argument("--data-location", type=Path, default=Path("data"))
    parser.add_argument("--results-dir", type=Path, default=Path("results"),
                        help="the file goes to <results-dir>/single_task/<model>/")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    parser.add_argument("--precision", choices=("bf16", "fp16", "fp32"), default="bf16",
                        help="autocast dtype on CUDA (CPU runs fp32)")
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--eval-cache", choices=("memory", "disk", "none"), default="memory",
                        help="disk: keep preprocessed images in --cache-dir for later runs")
    parser.add_argument("--cache-dir", type=Path, default=Path("cache/eval"))
    parser.add_argument("--pretrained", help="override the model's pre-trained weights (open_clip tag or file)")
    parser.add_argument("--config-dir", type=Path, action="append", default=[],
                        help="extra directory searched for model/<name>.yaml (like Hydra's --config-dir)")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import dataclasses
    import logging

    from tsvmerge.config import ConfigError, load_model_spec
    from tsvmerge.data import task_list
    from tsvmerge.evaluation.merge_eval import user_errors
    from tsvmerge.evaluation.single_task import run_single_task
    from tsvmerge.utils.device import resolve_device

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        names = args.datasets or ([s for s in args.train_dataset.split(",") if s] if args.train_dataset else None)
        if names is not None and args.num_tasks is not None:
            raise ConfigError("give either --datasets / --train-dataset or --num-tasks")
        spec = load_model_spec(args.model, [*args.config_dir, CONFIG_DIR])
        try:
            datasets = task_list(num_tasks=args.num_tasks, datasets=[n.removesuffix("Val") for n in names]
                                 if names else None, benchmark=spec.benchmark)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        try:
            resolve_device(args.device)
        except (RuntimeError, ValueError) as exc:
            raise ConfigError(f"--device={args.device}: {exc}") from None
        if args.pretrained:
            spec = dataclasses.replace(spec, pretrained=args.pretrained)
        outcome = run_single_task(
            spec, args.finetuning_mode, datasets, model_location=args.model_location,
            data_location=args.data_location, results_dir=args.results_dir, batch_size=args.batch_size,
            device=args.device, precision=args.precision, channels_last=not args.no_channels_last,
            num_workers=args.num_workers, eval_cache=args.eval_cache, cache_dir=args.cache_dir,
            progress=not args.no_progress,
        )
    except user_errors() as exc:
        print(f"eval_single_task.py: error: {exc}", file=sys.stderr)
        return 2
    print(outcome.table)
    print(f"results: {outcome.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

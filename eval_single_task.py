#!/usr/bin/env python
"""Evaluate the zero-shot or the fine-tuned image encoder of each task on its own test and validation splits.

    python eval_single_task.py --model=ViT-B-32 --finetuning-mode=none
    python eval_single_task.py --model=ViT-B-32 --finetuning-mode=standard --datasets MNIST Cars
    python eval_single_task.py --model=ViT-B-32 batch_size=256    # plain overrides of config/eval_single_task.yaml

Writes results/single_task/<model>/nonlinear_ft_accuracies.json (standard: the denominators of main.py's normalized
accuracy) or zeroshot_accuracies.json (none), as {"MNIST": top1, "MNISTVal": top1, ...}. Every flag sets a key of
config/eval_single_task.yaml (types and defaults: src/tsvmerge/config/schema.py, EvalSingleTaskSchema).
"""

from __future__ import annotations

import argparse
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "config"


def build_parser() -> argparse.ArgumentParser:
    from tsvmerge.config.flags import Flag, add_flags, group_flag
    from tsvmerge.config.schema import EvalSingleTaskSchema

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_flags(parser, EvalSingleTaskSchema, [
        group_flag("model", ("--model",), "model config name: config/model/<name>.yaml (default ViT-B-32)"),
        Flag("finetuning_mode", ("--finetuning-mode",)),
        Flag("datasets", ("--datasets", "--train-dataset"), "list",
             "datasets to evaluate, comma-separated or repeated (default: every task of the model's benchmark)"),
        Flag("num_tasks", ("--num-tasks",)), Flag("model_location", ("--model-location",)),
        Flag("data_location", ("--data-location",)), Flag("results_dir", ("--results-dir",)),
        Flag("batch_size", ("--batch-size",)), Flag("device", ("--device",)), Flag("precision", ("--precision",)),
        Flag("channels_last", ("--no-channels-last",), "false", "no channels-last memory format on CUDA"),
        Flag("num_workers", ("--num-workers",)), Flag("eval_cache", ("--eval-cache",)),
        Flag("cache_dir", ("--cache-dir",)), Flag("pretrained", ("--pretrained",)),
        Flag("progress", ("--no-progress",), "false", "no progress bars"),
    ])
    parser.add_argument("--config-dir", type=Path, action="append", default=[],
                        help="extra folder searched first for config files, e.g. model/<name>.yaml (as Hydra's)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides of config/eval_single_task.yaml")
    return parser


def main(argv: list[str] | None = None) -> int:
    from tsvmerge.utils.huge_pages import enable_huge_pages

    enable_huge_pages()  # before torch's first allocation (src/tsvmerge/utils/huge_pages.py)
    args = build_parser().parse_args(argv)
    import logging

    from tsvmerge.config import compose_config
    from tsvmerge.recipes.configs import config_source
    from tsvmerge.config.flags import flag_overrides
    from tsvmerge.evaluation.single_task import run_single_task
    from tsvmerge.evaluation.single_task_settings import single_task_settings
    from tsvmerge.utils.entry_point import run_main

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")

    def body() -> int:
        source = config_source(CONFIG_DIR, args.config_dir)
        settings = single_task_settings(compose_config(source, "eval_single_task",
                                                       [*flag_overrides(args), *args.overrides]))
        outcome = run_single_task(**settings)
        print(outcome.table)
        print(f"results: {outcome.path}")
        return 0

    return run_main("eval_single_task.py", body)


if __name__ == "__main__":
    raise SystemExit(main())

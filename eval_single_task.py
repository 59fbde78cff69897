#!/usr/bin/env python
"""Evaluate the zero-shot or the fine-tuned image encoder of each task on its own test and validation splits.

    python eval_single_task.py --model=ViT-B-32 --finetuning-mode=none
    python eval_single_task.py --model=ViT-B-32 --finetuning-mode=standard --datasets MNIST Cars
    python eval_single_task.py --model=ViT-B-32 batch_size=256    # plain overrides of config/eval_single_task.yaml

Writes results/single_task/<model>/nonlinear_ft_accuracies.json (standard: the denominators of main.py's normalized
accuracy) or zeroshot_accuracies.json (none), as {"MNIST": top1, "MNISTVal": top1, ...}. Every flag sets a key of
config/eval_single_task.yaml (types and defaults: src/tsvmerge/config/schema.py, EvalSingleTaskSchema).
The run itself: src/tsvmerge/recipes/eval_single_task.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "config"


def main(argv: list[str] | None = None) -> int:
    from tsvmerge.utils.huge_pages import enable_huge_pages

    enable_huge_pages()  # before torch's first allocation (src/tsvmerge/utils/huge_pages.py)
    from tsvmerge.config import compose_config
    from tsvmerge.config.flags import flag_overrides
    from tsvmerge.recipes.configs import config_source
    from tsvmerge.recipes.eval_single_task import build_parser, run, single_task_settings
    from tsvmerge.utils.entry_point import run_main

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")

    def body() -> int:
        source = config_source(CONFIG_DIR, args.config_dir)
        cfg = compose_config(source, "eval_single_task", [*flag_overrides(args), *args.overrides])
        outcome = run(single_task_settings(cfg))
        print(outcome.table)
        print(f"results: {outcome.path}")
        return 0

    return run_main("eval_single_task.py", body)


if __name__ == "__main__":
    raise SystemExit(main())

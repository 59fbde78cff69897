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

import sys
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "config"


def main(argv: list[str] | None = None) -> int:
    from tsvmerge.utils.huge_pages import enable_huge_pages

    enable_huge_pages()  # before torch's first allocation (src/tsvmerge/utils/huge_pages.py)
    import logging

    from torch.distributed.elastic.multiprocessing.errors import record

    from tsvmerge.config import compose_config
    from tsvmerge.recipes import finetune
    from tsvmerge.recipes.configs import config_source
    from tsvmerge.utils.entry_point import run_main

    args = finetune.build_parser().parse_args(argv)
    launch = finetune.detect_launch()
    rank = f"[rank {launch.rank}]" if launch is not None else ""
    logging.basicConfig(level=logging.INFO, format=f"[%(asctime)s]{rank}[%(name)s][%(levelname)s] - %(message)s")

    def body() -> int:
        source = config_source(CONFIG_DIR, args.config_dir)
        cfg = finetune.finetune_config(compose_config(source, "finetune", finetune.overrides_from_args(args)))
        try:
            if launch is not None:  # under torchrun: a failing rank's traceback goes to torchrun's error file
                record(finetune.run)(cfg)
            else:
                finetune.run(cfg)
        except finetune.DistributedRunError as exc:
            print(f"finetune.py: error: {exc}", file=sys.stderr)
            return 1
        return 0

    return run_main("finetune.py", body)


if __name__ == "__main__":
    raise SystemExit(main())

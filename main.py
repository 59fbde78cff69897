#!/usr/bin/env python
"""Merge fine-tuned CLIP checkpoints with one method and evaluate the merged model (SPEC §3-§4).

    python main.py model=ViT-B-32 method=TSVM
    python main.py model=ViT-B-32 method=TSVM num_tasks=20 specify_lambda=1.0
    python main.py method=sum DATASETS=[MNIST,Cars] method.k=20
    python main.py method=tall_mask              # saves the chosen masks; then:
    python main.py method=tall_mask method.load_mask=True
    python main.py method=consensus method.prun_thre_k=2
    python main.py -m method=sum,TSVM num_tasks=8,14,20
    python main.py -m method=sum,TSVM num_tasks=8,14,20 hydra/launcher=slurm hydra.launcher.partition=gpu

Configuration: config/config.yaml on the schema of src/tsvmerge/config/schema.py (README: Configuration).
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

CONFIG_DIR = Path(__file__).resolve().parent / "config"


@hydra.main(config_path="config", config_name="config", version_base=None)
def main(cfg: DictConfig) -> float:
    from tsvmerge.recipes.merge_and_evaluate import run_from_hydra
    from tsvmerge.utils.allocator import cap_heap_retention

    # A launcher may run the job in another process (hydra/launcher=slurm or submitit_local: docs/cluster.md), which
    # cli() below never configured; the huge-page setting travels in the environment, the heap cap is set here.
    cap_heap_retention()
    return run_from_hydra(cfg)


def cli() -> None:
    """Check every job of the command line (keys, values, tasks, method parameters), then run Hydra."""
    from tsvmerge.utils.allocator import cap_heap_retention
    from tsvmerge.utils.huge_pages import enable_huge_pages

    enable_huge_pages()  # before torch's first allocation: merging allocates large CPU tensors per layer
    cap_heap_retention()  # freed per-task workspaces go back to the system (src/tsvmerge/utils/allocator.py)
    from tsvmerge.recipes.configs import config_source
    from tsvmerge.config.compose import run_checked_app
    from tsvmerge.recipes.merge_and_evaluate import check_run_config

    raise SystemExit(run_checked_app("main.py", main, config_source(CONFIG_DIR), "config", check_run_config))


if __name__ == "__main__":
    cli()

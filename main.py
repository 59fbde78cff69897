#!/usr/bin/env python
"""Merge fine-tuned CLIP checkpoints with one method and evaluate the merged model (SPEC §3-§4).

    python main.py model=ViT-B-32 method=TSVM
    python main.py model=ViT-B-32 method=TSVM num_tasks=20 specify_lambda=1.0
    python main.py method=sum DATASETS=[MNIST,Cars] method.k=20
    python main.py method=tall_mask              # saves the chosen masks; then:
    python main.py method=tall_mask method.load_mask=True
    python main.py method=consensus method.prun_thre_k=2

Configuration: config/config.yaml, config/method/<name>.yaml, config/model/<name>.yaml (docs/evaluation.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from tsvmerge.config import ConfigError, check_overrides

CONFIG_DIR = Path(__file__).resolve().parent / "config"


@hydra.main(config_path="config", config_name="config", version_base=None)
def main(cfg: DictConfig) -> float:
    from tsvmerge.evaluation.merge_eval import run_from_hydra

    return run_from_hydra(cfg)


def cli() -> None:
    """Check the command line (unknown keys / choices, listing the valid ones), then run Hydra."""
    try:
        check_overrides(sys.argv[1:], CONFIG_DIR)
    except ConfigError as exc:
        print(f"main.py: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    main()


if __name__ == "__main__":
    cli()

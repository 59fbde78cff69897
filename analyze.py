#!/usr/bin/env python
"""The paper's analyses as commands (docs/analysis.md): numbers (JSON / CSV / Markdown) and figures (PNG).

    python analyze.py analysis=sti model=ViT-B-32                    # STI per layer / block, Gram heat-map
    python analyze.py analysis=spectra num_tasks=14
    python analyze.py analysis=procrustes
    python analyze.py analysis=truncation analysis.fractions=[0.01,0.1,1.0]
    python analyze.py analysis=ablation num_tasks=8
    python analyze.py analysis=alpha_heatmap analysis.subsets=[4,8]
    python analyze.py analysis=compression
    python analyze.py analysis=sti_accuracy

Configuration: config/analyze.yaml (= config/config.yaml + config/analysis/<name>.yaml). Outputs go to
<results_dir>/analysis/<model>/<analysis>/.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from tsvmerge.config import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent / "config"


@hydra.main(config_path="config", config_name="analyze", version_base=None)
def main(cfg: DictConfig) -> None:
    from tsvmerge.analysis.commands import run_from_hydra

    run_from_hydra(cfg)


def cli() -> None:
    """Check the command line (unknown analyses / keys, listing the valid ones), then run Hydra."""
    from tsvmerge.analysis.commands import check_analysis_overrides

    try:
        check_analysis_overrides(sys.argv[1:], CONFIG_DIR)
    except ConfigError as exc:
        print(f"analyze.py: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    main()


if __name__ == "__main__":
    cli()

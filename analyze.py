#!/usr/bin/env python
"""The paper's analyses as commands (docs/analysis.md): numbers (JSON / CSV / Markdown) and figures (PNG).

    python analyze.py analysis=sti model=ViT-B-32                    # STI per layer / block, Gram heat-map
    python analyze.py analysis=spectra num_tasks=14
    python analyze.py analysis=merged_spectra analysis.methods=[TSVM,iso_c]   # spectrum of τMT per method
    python analyze.py analysis=procrustes
    python analyze.py analysis=truncation analysis.fractions=[0.01,0.1,1.0]
    python analyze.py analysis=ablation num_tasks=8
    python analyze.py analysis=alpha_heatmap analysis.subsets=[4,8]
    python analyze.py analysis=compression
    python analyze.py analysis=sti_accuracy

Configuration: config/analyze.yaml (main.py's keys + config/analysis/<name>.yaml), on the schema of
src/tsvmerge/config/schema.py. Outputs go to <results_dir>/analysis/<model>/<analysis>/.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

CONFIG_DIR = Path(__file__).resolve().parent / "config"


@hydra.main(config_path="config", config_name="analyze", version_base=None)
def main(cfg: DictConfig) -> None:
    from tsvmerge.recipes.analyze import run_from_hydra
    from tsvmerge.recipes.configs import config_source

    run_from_hydra(cfg, config_source(CONFIG_DIR))


def cli() -> None:
    """Check every job of the command line (analysis, its keys, main.py's keys), then run Hydra."""
    from tsvmerge.utils.huge_pages import enable_huge_pages

    enable_huge_pages()  # before torch's first allocation (src/tsvmerge/utils/huge_pages.py)
    from tsvmerge.recipes.analyze import check_analysis_config
    from tsvmerge.recipes.configs import config_source
    from tsvmerge.config.compose import run_checked_app

    raise SystemExit(run_checked_app("analyze.py", main, config_source(CONFIG_DIR), "analyze",
                                     check_analysis_config))


if __name__ == "__main__":
    cli()

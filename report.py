#!/usr/bin/env python
"""Gather every main.py result file under results/ into the paper's tables and radar charts (docs/analysis.md).

    python report.py                                   # results/ -> results/report/report.md, table2.csv, ...
    python report.py --results-dir results --out paper_tables
    python report.py --results-dir multirun/2026-12-02_10-00-00

Every flag sets a key of config/report.yaml (types and defaults: src/tsvmerge/config/schema.py, ReportSchema).
"""

from __future__ import annotations

import sys
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "config"


def main(argv: list[str] | None = None) -> int:
    from tsvmerge.recipes.configs import config_source
    from tsvmerge.recipes.report import main as report_main

    return report_main(argv, config=config_source(CONFIG_DIR))


if __name__ == "__main__":
    sys.exit(main())

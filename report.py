#!/usr/bin/env python
"""Gather every main.py result file under results/ into the paper's tables and radar charts (docs/analysis.md).

    python report.py                                   # results/ -> results/report/report.md, table2.csv, ...
    python report.py --results-dir results --out paper_tables
"""

from __future__ import annotations

import sys

from tsvmerge.analysis.report import main

if __name__ == "__main__":
    sys.exit(main())

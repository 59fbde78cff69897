#!/usr/bin/env python
"""Gather every main.py result file under results/ into the paper's tables and radar charts (docs/analysis.md).

    python report.py                                   # results/ -> results/report/report.md, table2.csv, ...
    python report.py --results-dir results --out paper_tables
    python report.py --results-dir multirun/2026-12-02_10-00-00

Every flag sets a key of config/report.yaml (types and defaults: src/tsvmerge/config/schema.py, ReportSchema).
"""

from __future__ import annotations

import argparse
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "config"


def build_parser() -> argparse.ArgumentParser:
    from tsvmerge.config.flags import Flag, add_flags
    from tsvmerge.config.schema import ReportSchema

    parser = argparse.ArgumentParser(prog="report.py", description=__doc__.split("\n\n")[0])
    add_flags(parser, ReportSchema, [
        Flag("results_dir", ("--results-dir",)), Flag("out", ("--out",)),
        Flag("radar_metric", ("--radar-metric",)), Flag("radar", ("--no-radar",), "false", "skip the radar charts"),
    ])
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides of config/report.yaml")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tsvmerge.analysis.report import report_from_config
    from tsvmerge.config import ConfigSource, compose_config
    from tsvmerge.config.flags import flag_overrides
    from tsvmerge.utils.entry_point import run_main

    source = ConfigSource(CONFIG_DIR)
    return run_main("report.py", lambda: report_from_config(
        compose_config(source, "report", [*flag_overrides(args), *args.overrides])))


if __name__ == "__main__":
    raise SystemExit(main())

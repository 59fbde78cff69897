"""``report.py`` / ``tsvmerge-report``: every main.py result file under a folder into the paper's tables and radar
charts.

Reads top to bottom:

1. the flags (:func:`build_parser`), each a key of the report schema (``config/report.yaml`` on ``ReportSchema``),
   composed with the overrides (:func:`main`);
2. the settings: :func:`settings_from_config` reads the composed configuration into :class:`ReportSettings`;
3. :func:`run`: check the results folder and the output folder, write the report
   (:func:`tsvmerge.analysis.report.write_report`; unusable result files skipped with a warning each), print it.
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..analysis.report import write_report
from ..config import ConfigSource, compose_config
from ..config.flags import Flag, add_flags, flag_overrides
from ..config.schema import ReportSchema
from ..utils.entry_point import run_main
from ..utils.files import check_output_path

__all__ = ["PROG", "ReportSettings", "build_parser", "main", "run", "run_report",
           "settings_from_config"]

PROG = "report.py"


@dataclass(frozen=True)
class ReportSettings:
    """What ``report.py`` reads and writes."""

    results_dir: Path  # searched recursively for main.py result files
    out: Path | None = None  # the report folder (None: <results_dir>/report)
    radar: bool = True  # draw the radar charts
    radar_metric: str = "top1"  # what the radar charts show: top1 | normalized_top1

    @property
    def target(self) -> Path:
        return self.out if self.out is not None else self.results_dir / "report"


def settings_from_config(cfg: Any) -> ReportSettings:
    """The composed ``report`` configuration (results_dir, out, radar, radar_metric) as settings."""
    metric = cfg.radar_metric
    return ReportSettings(Path(str(cfg.results_dir)), None if cfg.out is None else Path(str(cfg.out)),
                          radar=bool(cfg.radar), radar_metric=str(getattr(metric, "name", metric)))


def build_parser() -> argparse.ArgumentParser:
    """report.py's flags: each sets a key of the report schema (``config/report.yaml``)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Gather every main.py result file under --results-dir into the paper's tables (Markdown, CSV) "
                    "and radar charts.")
    add_flags(parser, ReportSchema, [
        Flag("results_dir", ("--results-dir",)), Flag("out", ("--out",)),
        Flag("radar_metric", ("--radar-metric",)), Flag("radar", ("--no-radar",), "false", "skip the radar charts"),
    ])
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides of config/report.yaml")
    return parser


def main(argv: Sequence[str] | None = None, config: ConfigSource | None = None) -> int:
    """``report.py`` / ``tsvmerge-report``: flags and overrides composed on ``config/report.yaml`` (``config``: the
    entry point's :class:`~tsvmerge.config.ConfigSource`; None: the installed schema alone)."""
    args = build_parser().parse_args(argv)
    source = config if config is not None else ConfigSource(None)
    name = "report" if source.config_dir is not None else "report_schema"
    return run_main(PROG, lambda: run(settings_from_config(
        compose_config(source, name, [*flag_overrides(args), *args.overrides]))))


def run_report(results_dir: str | Path, out: str | Path | None = None, *, radar: bool = True,
               radar_metric: str = "top1") -> int:
    """:func:`run` with the settings given one by one."""
    return run(ReportSettings(Path(results_dir), None if out is None else Path(out), radar=radar,
                              radar_metric=radar_metric))


def run(settings: ReportSettings) -> int:
    """Check the folders, write the report, print it; unusable result files are skipped with a warning each."""
    results = settings.results_dir
    if not results.is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such results directory; give the folder holding main.py's result "
                                "files (--results-dir)", str(results))
    target = settings.target
    check_output_path(target, label="report folder", folder=True)
    written = write_report(results, target, radar=settings.radar, radar_metric=settings.radar_metric,
                           warn=_warn_on_stderr)
    print(Path(written["report.md"]).read_text())
    print("written: " + ", ".join(str(p) for p in written.values()))
    return 0


def _warn_on_stderr(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)

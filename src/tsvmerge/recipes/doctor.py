"""``tsvmerge doctor``: main.py's preflight as a command: what a run needs, what is present, what is missing, and
the command that fetches each missing part.

    tsvmerge doctor model=ViT-B-32 num_tasks=8
    tsvmerge doctor model=ViT-L-14 num_tasks=20 method=consensus data_location=/data
    tsvmerge doctor model=demo

Takes main.py's overrides and composes the configuration through the same path (Hydra, ``config/config.yaml``), then
runs main.py's own input check (:func:`tsvmerge.evaluation.run_inputs.check_run_inputs`): "ready" here means main.py
will not stop for a missing input. Exit status 0 when ready, 1 when something is missing or unusable, 2 for a bad
command line or configuration.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..evaluation.run_settings import RunSettings
    from ..evaluation.run_inputs import RunInputs

__all__ = ["EXIT_MISSING", "EXIT_READY", "Diagnosis", "add_parser", "diagnose", "main_config_dir", "run"]

EXIT_READY = 0
EXIT_MISSING = 1
_DEFAULT_DATA = Path("data")
_DEFAULT_MODELS = Path("models/checkpoints")


@dataclass
class Section:
    """One kind of input: what is there, what is not, and how to get it."""

    title: str
    present: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    fetch: str | None = None
    note: str | None = None

    def lines(self) -> list[str]:
        total = len(self.present) + len(self.missing)
        head = f"{self.title}: {len(self.present)} of {total} present"
        lines = [head + (f" ({self.note})" if self.note else "")]
        lines += [f"  missing  {item}" for item in self.missing]
        if self.missing and self.fetch:
            lines.append(f"  fetch:   {self.fetch}")
        return lines


@dataclass
class Diagnosis:
    """The report of :func:`diagnose`; ``ready`` exactly when main.py's preflight would pass."""

    header: list[str]
    sections: list[Section]
    other: list[str]
    ready: bool
    problems: int
    run_command: str

    def lines(self) -> list[str]:
        lines = [*self.header, ""]
        for section in self.sections:
            lines += section.lines()
        if self.other:
            lines.append(f"other problems ({len(self.other)}):")
            lines += ["  - " + text.replace("\n", "\n    ") for text in self.other]
        lines.append("")
        if self.ready:
            counts = ", ".join(f"{len(s.present)} {s.title}" for s in self.sections if s.present)
            lines.append(f"ready: {counts} present. Run: {self.run_command}")
        else:
            lines.append(f"not ready: {self.problems} required input{'s are' if self.problems != 1 else ' is'} "
                         f"missing or unusable (exit status {EXIT_MISSING}); fetch them with the commands above")
        return lines


# ------------------------------------------------------------------------------------------- what to run to fix it

def _is_demo(settings: RunSettings) -> bool:
    return settings.model.benchmark == "synthetic"


def _demo_command(settings: RunSettings) -> str:
    flags = "".join(f" {flag} {value}" for flag, value, default in (
        ("--model-location", settings.model_location, _DEFAULT_MODELS),
        ("--data-location", settings.data_location, _DEFAULT_DATA)) if Path(value) != default)
    return (f"make demo (or: python demo.py{flags}); it also writes the demo's single-task accuracies, under "
            "results_dir=results/demo")


def checkpoint_fetch(settings: RunSettings) -> str:
    """How to get the checkpoints (and heads, masks) of this run's model."""
    from ..download.checkpoints import PUBLISHED_MODELS, fetch_command

    name = settings.model.name
    if name in PUBLISHED_MODELS and settings.model.benchmark == "paper":
        return fetch_command(name, settings.datasets, settings.benchmark_prefix, settings.model_location)
    if _is_demo(settings):
        return _demo_command(settings)
    return f"python finetune.py --model={name} (docs/finetuning.md); published checkpoints exist for " \
           f"{', '.join(PUBLISHED_MODELS)} only"


def data_fetch(settings: RunSettings, missing: Sequence[str]) -> str:
    """How to get the missing datasets: ``tsvmerge download data`` (the synthetic demo tasks: the demo)."""
    from ..download.checkpoints import BENCHMARK_SIZES

    if _is_demo(settings):
        return _demo_command(settings)
    selection = (f"--benchmark {settings.num_tasks}"
                 if settings.benchmark_prefix and settings.num_tasks in BENCHMARK_SIZES
                 else "--datasets " + " ".join(missing))
    where = "" if settings.data_location == _DEFAULT_DATA else f" --to {settings.data_location}"
    return f"tsvmerge download data {selection}{where}"


# ------------------------------------------------------------------------------------------------------ the check

def diagnose(settings: RunSettings, inputs: RunInputs, overrides: Sequence[str] = ()) -> Diagnosis:
    """Sort main.py's preflight findings into present / missing per kind, each with its fetch command."""
    from ..checkpoints.paths import head_path

    check = inputs.check
    spec, tasks = settings.model, settings.datasets
    expected = [inputs.zeroshot, *inputs.finetuned]
    checkpoints = Section("checkpoints", [str(p) for p in expected if p not in check.checkpoints],
                          [str(p) for p in check.checkpoints], checkpoint_fetch(settings))
    heads = Section("zero-shot heads", [str(head_path(settings.model_location, spec.name, d)) for d in tasks
                                        if d not in inputs.missing_heads],
                    [str(head_path(settings.model_location, spec.name, d)) for d in inputs.missing_heads],
                    checkpoint_fetch(settings))
    buildable = bool(spec.pretrained) and not (spec.pretrained_is_file and not Path(spec.pretrained).is_file())
    if inputs.missing_heads and buildable:  # otherwise the preflight reports them among the other problems
        heads.note = f"not required: main.py builds the missing ones from model.pretrained={spec.pretrained}"
    datasets = Section("datasets", [d for d in tasks if d not in check.missing_datasets],
                       [_dataset_line(name, message)
                        for name, message in zip(check.missing_datasets, check.datasets, strict=True)],
                       data_fetch(settings, check.missing_datasets), f"under {settings.data_location}")
    accuracies = Section("single-task accuracies", [str(settings.ft_accuracies)] if inputs.accuracies else [])
    problems = len(check.checkpoints) + len(check.other) + len(check.datasets)
    header = [f"tsvmerge doctor: {settings.method} on {spec.name}, {len(tasks)} tasks ({', '.join(tasks)})",
              f"  model_location={settings.model_location}  data_location={settings.data_location}  "
              f"results_dir={settings.results_dir}"]
    run_command = "python main.py " + " ".join(overrides) if overrides else "python main.py"
    sections = [checkpoints, heads, datasets] + ([accuracies] if accuracies.present else [])
    return Diagnosis(header, sections, list(check.other), problems == 0, problems, run_command)


def _dataset_line(name: str, message: str) -> str:
    """``Cars (no <first missing path>, and 4 more)`` from the loader's multi-line message."""
    paths = [line.strip()[2:] for line in message.splitlines()[1:] if line.strip().startswith("- ")]
    if not paths:
        return f"{name} ({message.splitlines()[0]})"
    more = f", and {len(paths) - 1} more" if len(paths) > 1 else ""
    return f"{name} (no {paths[0]}{more})"


def main_config_dir() -> Path:
    """main.py's ``config/`` folder: the one in the current directory (the repository root, where main.py runs),
    else the one beside the source tree of an editable install."""
    from ..config import ConfigError

    for candidate in (Path.cwd() / "config", Path(__file__).resolve().parents[3] / "config"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise ConfigError("cannot find main.py's config/config.yaml: run tsvmerge doctor from the repository root")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``tsvmerge doctor``."""
    parser = subparsers.add_parser(
        "doctor", help="what a main.py run needs: present, missing, and the commands that fetch it",
        description="\n\n".join(__doc__.split("\n\n")[:2]), formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Exit status: 0 ready, 1 inputs missing, 2 bad command line or configuration.")
    parser.add_argument("--config-dir", action="append", type=Path, default=[], metavar="DIR",
                        help="an extra config folder searched first, as main.py's --config-dir")
    parser.add_argument("--outputs", action="append", type=Path, default=[], metavar="DIR",
                        help="a folder to search for what interrupted `tsvmerge merge` runs left there (temporary "
                             "output folders); default: the current folder")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="main.py's overrides, e.g. model=ViT-B-32 num_tasks=8 method=TSVM")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace, out: Callable[[str], object] = print) -> int:
    """Body of ``tsvmerge doctor``: print the diagnosis; 0 ready, 1 missing (configuration errors raise)."""
    from ..config import compose_config
    from .configs import config_source
    from ..evaluation.run_settings import settings_from_config
    from ..evaluation.run_inputs import check_run_inputs

    source = config_source(main_config_dir(), args.config_dir)
    settings = settings_from_config(compose_config(source, "config", args.overrides))
    diagnosis = diagnose(settings, check_run_inputs(settings), args.overrides)
    for line in diagnosis.lines():
        out(line)
    for line in leftover_lines(args.outputs or [Path.cwd()]):
        out(line)
    return EXIT_READY if diagnosis.ready else EXIT_MISSING


def leftover_lines(folders: Sequence[Path]) -> list[str]:
    """What interrupted ``tsvmerge merge`` runs left in ``folders`` (their temporary output folders), if anything."""
    from ..checkpoints.output_folders import find_stale_temporaries

    found = find_stale_temporaries(folders)
    if not found:
        return []
    lines = ["", f"temporary folders of interrupted merges ({len(found)}):"]
    lines += [f"  {stale.describe()}" for stale in found]
    lines.append("  the next `tsvmerge merge` to the same --out removes those of interrupted runs, file by file")
    return lines

"""Everything a run needs on disk, checked before any model is built: one error listing all that is missing.

Only paths are looked at here (no checkpoint is read and no model is created), so a run without checkpoints stops
within seconds and says which files are missing, where to get them and how to try the code offline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..checkpoints.paths import CHECKPOINT_HELP, find_zeroshot_checkpoint, finetuned_source_path, head_path
from ..checkpoints.peft_adapter import is_adapter_folder
from ..data.errors import DatasetNotFoundError
from ..data.registry import REGISTRY
from ..models.factory import ModelSpec
from ..utils.errors import UserError
from ..utils.files import OutputPathError, check_output_path
from .metrics import AccuracyFileError, load_ft_accuracies

__all__ = ["OFFLINE_DEMO_HELP", "MissingInputsError", "Preflight", "dataset_problems", "output_folder_problem"]

#: How to try the code without downloads (printed with every missing-inputs error).
OFFLINE_DEMO_HELP = (
    "To try the whole pipeline offline without any download, `make demo` (or `python demo.py`) pre-trains a tiny "
    "CLIP on synthetic tasks, fine-tunes it per task and merges it with every method (`model=demo`, docs/demo.md)."
)


class MissingInputsError(UserError, FileNotFoundError):
    """Files the run needs are absent; the message lists all of them and how to obtain them."""


@dataclass
class Preflight:
    """Collects missing inputs by kind, then raises them together."""

    what: str
    checkpoints: list[Path] = field(default_factory=list)
    other: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    missing_datasets: list[str] = field(default_factory=list)  # the names behind ``datasets``' messages

    def require_checkpoint(self, path: Path) -> None:
        if not path.is_file() and not is_adapter_folder(path):
            self.checkpoints.append(path)

    def zeroshot(self, model_location: str | Path, model: str, datasets: Sequence[str] = ()) -> Path:
        path = find_zeroshot_checkpoint(model_location, model, datasets)
        self.require_checkpoint(path)
        return path

    def finetuned(self, model_location: str | Path, model: str, datasets: Sequence[str]) -> list[Path]:
        """Each task's ``nonlinear_finetuned.pt``, or the LoRA ``adapter/`` folder standing for it."""
        paths = [finetuned_source_path(model_location, model, d) for d in datasets]
        for path in paths:
            self.require_checkpoint(path)
        return paths

    def heads(self, spec: ModelSpec, model_location: str | Path, datasets: Sequence[str]) -> list[str]:
        """Datasets whose head file is missing; a problem only if they cannot be built from pre-trained weights."""
        missing = [d for d in datasets if not head_path(model_location, spec.name, d).is_file()]
        if not missing:
            return missing
        files = ", ".join(str(head_path(model_location, spec.name, d)) for d in missing)
        if not spec.pretrained:
            self.other.append(
                f"zero-shot heads {files} are missing and cannot be built: building them needs the CLIP text "
                "tower, i.e. model.pretrained=<open_clip tag or local CLIP weights file> (it is null)"
            )
        elif spec.pretrained_is_file and not Path(spec.pretrained).is_file():
            self.other.append(
                f"zero-shot heads {files} are missing and cannot be built: model.pretrained={spec.pretrained!r} "
                "(the CLIP weights their text tower comes from) does not exist"
            )
        return missing

    def accuracies(self, path: str | Path, splits: Sequence[str]) -> dict[str, float] | None:
        try:
            return load_ft_accuracies(path, splits)
        except AccuracyFileError as exc:
            self.other.append(str(exc))
            return None

    def data(self, location: str | Path, datasets: Sequence[str]) -> None:
        for name in datasets:
            problems = dataset_problems(location, [name])
            if problems:
                self.missing_datasets.append(name)
                self.datasets.extend(problems)

    def writable(self, folder: str | Path, what: str) -> None:
        """An output folder that exists or can be created, and can be written to (checked before any work)."""
        problem = output_folder_problem(Path(folder))
        if problem:
            self.other.append(f"{what}: {problem}")

    def raise_if_missing(self) -> None:
        if not (self.checkpoints or self.other or self.datasets):
            return
        count = len(self.checkpoints) + len(self.other) + len(self.datasets)
        lines = [f"Cannot start {self.what}: {count} required input{'s are' if count > 1 else ' is'} missing "
                 "or unusable."]
        if self.checkpoints:
            lines.append(f"\nMissing checkpoint files ({len(self.checkpoints)}):")
            lines += [f"  - {p}" for p in self.checkpoints]
            lines.append(CHECKPOINT_HELP)
        if self.other:
            lines.append("\nOther missing inputs:")
            lines += ["  - " + text.replace("\n", "\n    ") for text in self.other]
        if self.datasets:
            lines.append(f"\nMissing datasets ({len(self.datasets)}; see docs/data.md):")
            lines += [f"  - {text}" for text in self.datasets]
        lines.append("\n" + OFFLINE_DEMO_HELP)
        raise MissingInputsError("\n".join(lines))


def dataset_problems(location: str | Path, datasets: Sequence[str]) -> list[str]:
    """Messages for the datasets (base names) whose files for their test and validation splits are absent."""
    root = Path(location).expanduser()
    problems = []
    for name in datasets:
        source = REGISTRY[name]
        # Same splits as get_dataset(<name>) and get_dataset(<name>Val) check.
        splits = ["train", "test", "val"] if source.has_val else ["train", "test"]
        try:
            source.check(root, splits)
        except DatasetNotFoundError as exc:
            problems.append(str(exc).replace("\n", "\n    "))
    return problems


def output_folder_problem(folder: Path) -> str | None:
    """Why files cannot be written into ``folder`` (None: they can), by the same real-write probe as every other
    output path (:func:`tsvmerge.utils.files.check_output_path`); nothing is created."""
    try:
        check_output_path(folder, label="folder", folder=True)
    except OutputPathError as exc:
        return str(exc)
    return None

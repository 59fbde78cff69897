"""``tsvmerge download checkpoints``: the published checkpoints of one model, from the hub repository
``nik-dim/tall_masks`` into the layout main.py reads (SPEC §1).

    tsvmerge download checkpoints --model ViT-B-32                   # all 20 tasks: 41 files
    tsvmerge download checkpoints --model ViT-L-14 --tasks 8 --masks
    tsvmerge download checkpoints --model ViT-B-16 --datasets MNIST Cars --to /data/checkpoints --copy

Only the files a run needs are fetched: the zero-shot encoder once (``MNISTVal``'s copy, the one main.py reads; every
task's copy is identical), one fine-tuned encoder and one head per task, and the saved TALL masks of the benchmark with
``--masks``. Files are downloaded into the Hugging Face cache (resumable; ``HF_HUB_OFFLINE=1`` works from it) and each
is read with the project's safe loaders before it is placed, as a symbolic link into the cache (default) or a copy
(``--copy``), atomically. The free disk space is checked before anything is downloaded. Files already in place are
checked and kept, so a second run does nothing.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import secrets
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..checkpoints.paths import (
    dataset_base_name,
    finetuned_checkpoint_path,
    head_path,
    tall_mask_paths,
    zeroshot_checkpoint_path,
)
from ..utils.files import atomic_write
from .errors import CorruptDownloadError, HubFileNotFoundError, NotEnoughSpaceError
from .hub_files import Hub, HubListing, hub_cache_dir, is_offline

__all__ = [
    "BENCHMARK_SIZES",
    "PUBLISHED_MODELS",
    "REPO_ID",
    "DownloadSummary",
    "Wanted",
    "add_parser",
    "download_checkpoints",
    "fetch_command",
    "run",
]

REPO_ID = "nik-dim/tall_masks"
PUBLISHED_MODELS = ("ViT-B-32", "ViT-B-16", "ViT-L-14")
#: The paper's benchmarks: the first 8, 14 or 20 tasks; published TALL masks exist for these only.
BENCHMARK_SIZES = (8, 14, 20)
DEFAULT_TO = Path("models/checkpoints")
#: The task folder whose zero-shot copy is fetched (the one main.py reads first: find_zeroshot_checkpoint).
ZEROSHOT_TASK = "MNIST"

ZEROSHOT, FINETUNED, HEAD, MASKS = "zero-shot encoder", "fine-tuned encoder", "head", "TALL mask file"


def _size(num_bytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.2f} {unit}"
    return f"{num_bytes} B"


@dataclass(frozen=True)
class Wanted:
    """One file of the layout: what it is, where it lies on the hub (``<top>/<model folder>/<rest>``), where it
    goes."""

    kind: str
    top: str
    rest: str
    dest: Path


@dataclass
class DownloadSummary:
    """What a run of the command did, for the final report."""

    placed: list[Wanted] = field(default_factory=list)
    downloaded: dict[Path, int] = field(default_factory=dict)  # destination -> bytes downloaded
    from_cache: list[Path] = field(default_factory=list)  # destinations placed from files already cached
    replaced: list[Path] = field(default_factory=list)  # unreadable files found in the layout and replaced

    def total_bytes(self) -> int:
        return sum(w.dest.stat().st_size for w in self.placed)


# ------------------------------------------------------------------------------------------------- what to fetch

def task_names(tasks: int | None, datasets: Sequence[str] | None) -> list[str]:
    """The first ``tasks`` of the paper's benchmark (default all 20), or the named ``datasets`` (Val suffix
    optional), checked against the benchmark's list."""
    from ..data.registry import BENCHMARK_DATASETS

    if datasets is None:
        return list(BENCHMARK_DATASETS[: tasks or len(BENCHMARK_DATASETS)])
    names = list(dict.fromkeys(dataset_base_name(d) for d in datasets))
    unknown = [d for d in names if d not in BENCHMARK_DATASETS]
    if unknown:
        raise ValueError(f"--datasets: {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not among the "
                         f"published tasks; valid: {', '.join(BENCHMARK_DATASETS)}")
    return names


def checkpoint_files(model: str, tasks: Sequence[str], to: Path) -> list[Wanted]:
    """The zero-shot encoder, then per task its fine-tuned encoder and its head."""
    zeroshot = zeroshot_checkpoint_path(to, model, ZEROSHOT_TASK)
    wanted = [Wanted(ZEROSHOT, "single_task", f"{ZEROSHOT_TASK}Val/nonlinear_zeroshot.pt", zeroshot)]
    for task in tasks:
        finetuned = finetuned_checkpoint_path(to, model, task)
        wanted.append(Wanted(FINETUNED, "single_task", f"{task}Val/nonlinear_finetuned.pt", finetuned))
        wanted.append(Wanted(HEAD, "single_task", f"head_{task}Val.pt", head_path(to, model, task)))
    return wanted


def mask_files(model: str, num_tasks: int, to: Path, listing: HubListing) -> list[Wanted]:
    """The published TALL-mask files of the ``num_tasks``-task benchmark (every variant: ``TALL_mask_<T>task.npy``,
    ``..._use_ties[_<agg>].npy``), placed where main.py looks for them (``tall_mask_paths``)."""
    folder = tall_mask_paths(to, model, num_tasks)[0].parent
    pattern = re.compile(rf"TALL_mask_{num_tasks}task(_use_ties(_\w+)?)?\.npy")
    found = [path for path in listing.under("tall_masks", model) if pattern.fullmatch(path.rsplit("/", 1)[1])]
    if not found:
        present = [p.rsplit("/", 1)[1] for p in listing.under("tall_masks", model)]
        raise HubFileNotFoundError(
            f"no TALL masks of the {num_tasks}-task benchmark for {model} in {listing.where} (folder "
            f"tall_masks/{model}/ holds {', '.join(present) if present else 'nothing'})")
    return [Wanted(MASKS, "tall_masks", path.rsplit("/", 1)[1], folder / path.rsplit("/", 1)[1]) for path in found]


# ----------------------------------------------------------------------------------------------- checking files

def check_file(kind: str, path: Path) -> None:
    """Read ``path`` with the project's safe loaders (never full pickle); raise ValueError / UnpicklingError when
    it is not a usable file of its kind."""
    if kind == HEAD:
        from ..models.heads import load_classification_head

        try:
            load_classification_head(path)
        except TypeError as exc:
            raise ValueError(str(exc)) from None
    elif kind == MASKS:
        from ..checkpoints.tall_mask_files import read_packed_masks

        read_packed_masks(path)
    else:
        from ..checkpoints.state_dict import open_state_dict

        state = open_state_dict(path)
        if not any(key.startswith("model.visual.") for key in state):
            raise ValueError(f"{path} holds no image encoder: none of its {len(state)} entries is model.visual.*")


def _unreadable(kind: str, path: Path) -> str | None:
    """Why ``path`` is not a usable ``kind`` file (None: it is)."""
    try:
        check_file(kind, path)
    except (ValueError, TypeError, EOFError, pickle.UnpicklingError) as exc:
        return str(exc).strip() or type(exc).__name__
    return None


def _in_place(wanted: Wanted, copy: bool, summary: DownloadSummary) -> bool:
    """Whether the layout already holds a usable file there (a copy when ``copy``); unusable ones get replaced."""
    dest = wanted.dest
    if not dest.is_file() or (copy and dest.is_symlink()):
        return False
    if _unreadable(wanted.kind, dest) is None:
        return True
    summary.replaced.append(dest)
    return False


# ------------------------------------------------------------------------------------------------- placing files

def place(source: Path, dest: Path, copy: bool) -> None:
    """Put ``source`` at ``dest`` as a symbolic link (absolute, to the cache's snapshot file) or a copy; the
    destination appears complete or not at all (temporary sibling, then an atomic rename)."""
    if copy:
        atomic_write(dest, lambda tmp: shutil.copyfile(source, tmp))
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{secrets.token_hex(6)}.link"
    os.symlink(os.path.abspath(source), tmp)
    try:
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _existing_parent(path: Path) -> Path:
    current = path.absolute()
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def check_space(needs: Sequence[tuple[Path, int, str]]) -> None:
    """Raise NotEnoughSpaceError unless every disk has room for what goes onto it: ``(folder, bytes, what)``, folders
    on one disk summed."""
    per_disk: dict[int, tuple[Path, int, list[str]]] = {}
    for folder, size, what in needs:
        if size <= 0:
            continue
        where = _existing_parent(folder)
        first, total, whats = per_disk.get(where.stat().st_dev, (where, 0, []))
        per_disk[where.stat().st_dev] = (first, total + size, [*whats, what])
    for where, needed, whats in per_disk.values():
        free = shutil.disk_usage(where).free
        if needed > free:
            raise NotEnoughSpaceError(
                f"not enough free disk space: {' and '.join(whats)} need {_size(needed)}, but the disk of "
                f"{where} has {_size(free)} free. Free some space, fetch fewer tasks (--tasks 8 or "
                "--datasets), or choose another disk (HF_HUB_CACHE for the cache, --to for the layout); nothing was "
                "downloaded")


# ---------------------------------------------------------------------------------------------------- the command

def _sources(pending: Sequence[Wanted], model: str, listing: HubListing) -> dict[Wanted, str]:
    """The hub path of every pending file; all the absent ones in one error."""
    sources, absent = {}, []
    for wanted in pending:
        path = listing.resolve(wanted.top, model, wanted.rest)
        if path is None:
            absent.append(f"{wanted.top}/{model}/{wanted.rest}")
        else:
            sources[wanted] = path
    if absent:
        offline = listing.snapshot is not None
        hint = ("run again with network access (unset HF_HUB_OFFLINE) to download them" if offline
                else "the repository's layout may have changed; see docs/checkpoints.md")
        raise HubFileNotFoundError(f"{len(absent)} file{'s are' if len(absent) > 1 else ' is'} not in "
                                   f"{listing.where}: {', '.join(absent)}; {hint}")
    return sources


def download_checkpoints(model: str, tasks: Sequence[str], to: Path, *, masks_for: int | None = None,
                         copy: bool = False, progress: bool = True, hub: Hub | None = None,
                         announce: Callable[[str], object] | None = None) -> DownloadSummary:
    """Fetch and place the files of ``model`` for ``tasks`` (plus the TALL masks of the ``masks_for``-task
    benchmark); see the module docstring. ``announce`` is told what will be downloaded, once the space is checked.
    Raises DownloadError subclasses with what to do."""
    from tqdm.auto import tqdm

    hub = hub or Hub(REPO_ID, hub_cache_dir(), is_offline())
    summary = DownloadSummary()
    wanted = checkpoint_files(model, tasks, to)
    pending = [w for w in wanted if not _in_place(w, copy, summary)]
    if pending or masks_for:
        listing = hub.listing()
        if masks_for:
            masks = mask_files(model, masks_for, to, listing)
            wanted += masks
            pending += [w for w in masks if not _in_place(w, copy, summary)]
        sources = _sources(pending, model, listing)
        cached = {w: hub.cached(sources[w], listing) for w in pending}
        missing = [w for w in pending if cached[w] is None]  # offline: none (the listing is the cache's)
        download_bytes = sum(listing.files[sources[w]] for w in missing)
        copy_bytes = sum(listing.files[sources[w]] for w in pending) if copy else 0
        check_space([(hub.cache_dir, download_bytes, f"{len(missing)} downloads into {hub.cache_dir}"),
                     (to, copy_bytes, f"{len(pending)} copies into {to}")])
        if missing and announce is not None:
            announce(f"downloading {len(missing)} files ({_size(download_bytes)}) from {hub.repo_id} into "
                     f"{hub.cache_dir}")
        for w in tqdm(pending, desc=f"{model} checkpoints", unit="file", disable=not progress):
            source = cached[w] or hub.download(sources[w])
            if cached[w] is None:
                summary.downloaded[w.dest] = listing.files[sources[w]]
            else:
                summary.from_cache.append(w.dest)
            reason = _unreadable(w.kind, source)
            if reason is not None:
                raise CorruptDownloadError(
                    f"{sources[w]} (the {w.kind} for {w.dest}) cannot be read: {reason}\nThe cached copy "
                    f"{os.path.realpath(source)} is damaged or incomplete: delete it and run again"
                    f"{' with network access' if hub.offline else ''} to download it afresh.")
            place(source, w.dest, copy)
    summary.placed = wanted
    return summary


def report(summary: DownloadSummary, model: str, tasks: Sequence[str], to: Path, copy: bool,
           cache_dir: Path) -> list[str]:
    """The final size summary: files per kind, total size, where they are and how they got there."""
    counts = Counter(w.kind for w in summary.placed)
    kinds = ", ".join(f"{n} {kind}{'s' if n > 1 else ''}" for kind, n in counts.items())
    folders = sorted({str(w.dest.parent if w.kind == MASKS else to / model) for w in summary.placed})
    how = "copies" if copy else f"symbolic links into the Hugging Face cache {cache_dir}"
    already = len(summary.placed) - len(summary.downloaded) - len(summary.from_cache)
    lines = [f"{model}: {len(summary.placed)} files, {_size(summary.total_bytes())}, in {', '.join(folders)}",
             f"  {kinds}",
             f"  {len(summary.downloaded)} downloaded ({_size(sum(summary.downloaded.values()))}), "
             f"{len(summary.from_cache)} taken from the cache, {already} already in place; as {how}"]
    lines += [f"  replaced the unreadable {path}" for path in summary.replaced]
    lines.append(f"check a run with: tsvmerge doctor {_doctor_overrides(model, tasks, to)}")
    return lines


def _doctor_overrides(model: str, tasks: Sequence[str], to: Path) -> str:
    from ..data.registry import BENCHMARK_DATASETS

    which = (f"num_tasks={len(tasks)}" if list(tasks) == list(BENCHMARK_DATASETS[: len(tasks)])
             else f"DATASETS=[{','.join(tasks)}]")
    where = "" if to == DEFAULT_TO else f" model_location={to}"
    return f"model={model} {which}{where}"


def fetch_command(model: str, tasks: Sequence[str], benchmark_prefix: bool, to: Path | str, *,
                  masks: bool = False) -> str:
    """The command that fetches the checkpoints of ``tasks`` (for ``tsvmerge doctor`` and error messages)."""
    selection = (f"--tasks {len(tasks)}" if benchmark_prefix and len(tasks) in BENCHMARK_SIZES
                 else "--datasets " + " ".join(tasks))
    where = "" if Path(to) == DEFAULT_TO else f" --to {to}"
    return f"tsvmerge download checkpoints --model {model} {selection}{' --masks' if masks else ''}{where}"


# ------------------------------------------------------------------------------------------------------ argparse

def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``checkpoints`` under ``tsvmerge download``."""
    parser = subparsers.add_parser(
        "checkpoints", help="the published checkpoints of a model, from the hub repository nik-dim/tall_masks",
        description="\n\n".join(__doc__.split("\n\n")[:2]),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, choices=PUBLISHED_MODELS)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--tasks", type=int, choices=BENCHMARK_SIZES, default=None,
                       help="the first T tasks of the paper's benchmark (default 20, all; 8 and 14 are its prefixes)")
    which.add_argument("--datasets", nargs="+", metavar="NAME", help="these tasks instead, e.g. MNIST Cars")
    parser.add_argument("--masks", action="store_true",
                        help="also the saved TALL masks of the benchmark (for method=consensus / tall_mask "
                             "method.load_mask=true), placed under <--to with checkpoints -> tall_masks>/<model>/")
    parser.add_argument("--to", type=Path, default=DEFAULT_TO,
                        help=f"the model_location main.py reads (default {DEFAULT_TO})")
    parser.add_argument("--copy", action="store_true",
                        help="real copies instead of symbolic links into the Hugging Face cache (needs the space "
                             "twice while the cache holds them)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar over the files")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace, out: Callable[[str], object] = print) -> int:
    """Body of ``tsvmerge download checkpoints``: exit status 0, or a DownloadError / ValueError (status 2)."""
    if args.masks and args.datasets is not None:
        raise ValueError("--masks: the published TALL masks are those of the 8-, 14- and 20-task benchmarks; give "
                         "--tasks 8, 14 or 20 instead of --datasets")
    tasks = task_names(args.tasks, args.datasets)
    hub = Hub(REPO_ID, hub_cache_dir(), is_offline())
    summary = download_checkpoints(args.model, tasks, args.to, masks_for=len(tasks) if args.masks else None,
                                   copy=args.copy, progress=not args.quiet, hub=hub, announce=out)
    for line in report(summary, args.model, tasks, args.to, args.copy, hub.cache_dir):
        out(line)
    return 0

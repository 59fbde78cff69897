"""``tsvmerge download data``: the 20 benchmark datasets from maintained hub mirrors, through ``datasets``.

    tsvmerge download data --benchmark 8 [--to data]
    tsvmerge download data --datasets DTD MNIST --to /path/to/data
    tsvmerge download data --benchmark 20 --check-only

Each dataset is loaded from its mirror (:mod:`tsvmerge.download.mirrors`) and written with ``save_to_disk`` to
``<to>/hub/<Name>/<split>``; ``<to>/hub/<Name>/download.json``, written last, marks the copy complete and records how
the mirror's labels map to the published class order. The benchmark loaders read such a copy instead of the published
layout (``tsvmerge.data.datasets.hub``), so ``main.py data_location=<to>`` works directly. Why this design rather
than rebuilding torchvision's file layouts: several of those layouts are binary formats that torchvision checks by
md5 (CIFAR, STL10, SVHN, PCAM, the idx files), which a rebuilt copy cannot pass; one ``datasets`` copy per split is
the same for all 20 datasets.

Resumable: a complete dataset is skipped; every split is written to a temporary folder and renamed into place, and
the completion record comes last, so an interrupted run never leaves a copy that looks complete. The final check
counts the images of every split through the project's own loaders (whatever layout they read) against the published
sizes. With ``HF_HUB_OFFLINE=1`` / ``HF_DATASETS_OFFLINE=1`` the mirrors are read from the local caches.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.datasets.hub import MARKER, hub_folder, read_marker
from ..data.registry import BENCHMARK_DATASETS, REGISTRY
from ..data.splits import MAX_VAL_SAMPLES, SEED, VAL_FRACTION, val_size
from ..data.templates import classnames, rule_classnames
from ..utils.errors import UserError
from .mirrors import EUROSAT_FOLDERS, EXPECTED_SIZES, MIRRORS, NUM_CLASSES, Mirror

_BENCHMARK_SIZES = (8, 14, 20)
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
_GB = 1024**3


class DownloadError(UserError, RuntimeError):
    """A dataset could not be fetched or does not match the published protocol; the message says why and what to do."""


@dataclass(frozen=True)
class SplitCount:
    """One row of the final check: images found in ``split`` of ``dataset`` against the published size."""

    dataset: str
    split: str
    found: int | None
    expected: int | None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None and self.found is not None and self.found == self.expected


# ----------------------------------------------------------------------------------------------------- command line


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``data`` command to the subparsers of ``tsvmerge download``."""
    p = subparsers.add_parser(
        "data", help="fetch the benchmark datasets from their hub mirrors into a data location",
        description=__doc__.split("\n\n")[0])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--benchmark", type=int, choices=_BENCHMARK_SIZES,
                       help="the first 8, 14 or 20 datasets of the paper's benchmark")
    which.add_argument("--datasets", nargs="+", metavar="NAME", help=f"datasets by name: {', '.join(MIRRORS)}")
    p.add_argument("--to", type=Path, default=Path("data"), help="data location to write into (default: data)")
    p.add_argument("--check-only", action="store_true",
                   help="download nothing: count the images of every split against the published sizes")
    p.add_argument("--mirror-root", type=Path, default=None, metavar="DIR",
                   help="read the mirrors from local copies of their hub repositories, DIR/<owner>/<name> "
                        "(e.g. made with `hf download <repo> --repo-type dataset --local-dir DIR/<repo>`)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="datasets cache to use (default: HF_DATASETS_CACHE); it can be deleted after the download")
    p.add_argument("--force", action="store_true", help="download again datasets that are already complete")
    p.add_argument("--skip-space-check", action="store_true", help="do not check the free disk space first")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``tsvmerge download data``: 0 when every requested split is present with its published size."""
    try:
        names = select_datasets(args.benchmark, args.datasets)
    except ValueError as exc:
        print(f"tsvmerge download data: error: {exc}", file=sys.stderr)
        return 2
    failed: dict[str, str] = {}
    if not args.check_only:
        if not args.skip_space_check:
            problem = space_problem(names, args.to, args.cache_dir, force=args.force)
            if problem:
                print(f"tsvmerge download data: error: {problem}", file=sys.stderr)
                return 1
        failed = download_datasets(names, args.to, mirror_root=args.mirror_root, cache_dir=args.cache_dir,
                                   force=args.force, progress=not args.quiet)
    rows = check_sizes(names, args.to)
    print(format_check(rows))
    for name, message in failed.items():
        print(f"error: {name}: {message}", file=sys.stderr)
    bad = sorted({r.dataset for r in rows if not r.ok} | set(failed))
    if bad:
        print(f"\n{len(bad)} of {len(names)} dataset(s) incomplete or not matching the published sizes: "
              f"{', '.join(bad)}", file=sys.stderr)
        return 1
    print(f"\nAll {len(names)} dataset(s) complete under {args.to}.")
    return 0


def select_datasets(benchmark: int | None, datasets: Sequence[str] | None) -> list[str]:
    """The datasets a command asks for: the first ``benchmark`` of the paper's list, or ``datasets`` (validated)."""
    if datasets:
        unknown = [n for n in datasets if n not in MIRRORS]
        if unknown:
            raise ValueError(f"unknown dataset(s) {', '.join(unknown)}; valid: {', '.join(BENCHMARK_DATASETS)}")
        return list(dict.fromkeys(datasets))
    if benchmark not in _BENCHMARK_SIZES:
        raise ValueError(f"--benchmark must be one of {_BENCHMARK_SIZES}, got {benchmark!r}")
    return list(BENCHMARK_DATASETS[:benchmark])


# ------------------------------------------------------------------------------------------------------ download


def space_problem(names: Sequence[str], to: Path, cache_dir: Path | None = None, *, force: bool = False) -> str | None:
    """Why the datasets still to fetch may not fit on disk (None: they fit, as far as the sizes are known).

    The copy and the ``datasets`` cache it is built from take about the mirror's size each.
    """
    pending = [n for n in names if force or read_marker(to, n) is None]
    need = {n: MIRRORS[n].approx_gb for n in pending}
    if not need:
        return None
    cache = cache_dir or _datasets_cache()
    targets: dict[int, tuple[Path, float]] = {}
    for folder, factor in ((to, 1.0), (cache, 1.0)):
        anchor = _existing_ancestor(folder)
        dev = anchor.stat().st_dev
        _, gb = targets.get(dev, (anchor, 0.0))
        targets[dev] = (anchor, gb + factor * sum(need.values()))
    for anchor, gb in targets.values():
        free = shutil.disk_usage(anchor).free / _GB
        if free < gb:
            return (f"about {gb:.1f} GB are needed under {anchor} ({', '.join(need)}: the copy and the datasets "
                    f"cache), {free:.1f} GB are free. Free some space, write elsewhere (--to, --cache-dir), or "
                    "pass --skip-space-check if the estimate is too pessimistic.")
    return None


def download_datasets(
    names: Sequence[str],
    to: Path,
    *,
    mirror_root: Path | None = None,
    cache_dir: Path | None = None,
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, str]:
    """Fetch every dataset of ``names`` not yet complete under ``to``; returns {name: error message} of failures.

    One failure does not stop the others (a rerun resumes where this one stopped).
    """
    from tqdm.auto import tqdm

    if not progress:
        import datasets

        datasets.disable_progress_bars()
    failed: dict[str, str] = {}
    bar = tqdm(names, desc="datasets", unit="dataset", disable=not progress)
    for name in bar:
        bar.set_postfix_str(name)
        if not force and read_marker(to, name) is not None:
            log(f"{name}: already complete in {hub_folder(to, name)}, skipped")
            continue
        if force:
            shutil.rmtree(hub_folder(to, name), ignore_errors=True)
        try:
            download_dataset(name, to, mirror_root=mirror_root, cache_dir=cache_dir, log=log)
        except DownloadError as exc:
            failed[name] = str(exc)
    return failed


def download_dataset(
    name: str,
    to: Path,
    *,
    mirror: Mirror | None = None,
    mirror_root: Path | None = None,
    cache_dir: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Write ``name``'s copy to ``<to>/hub/<name>`` from its mirror; returns the completion record.

    Splits already written by an interrupted run are kept (each was renamed into place only once complete).
    """
    mirror = mirror or MIRRORS[name]
    folder = hub_folder(to, name)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).unlink(missing_ok=True)
    for stale in folder.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)

    import datasets

    layout: dict[str, Any] = {}

    def write(split: str, table: Any) -> None:
        # Columns and class order come from the first table seen; each split is written as soon as it is loaded, so
        # an interrupted run keeps every finished split.
        if not layout:
            layout.update(_layout(name, mirror, table))
        _check_labels(table, layout["label_column"], len(layout["classes"]), name, split)
        log(f"{name}: writing {split} ({len(table)} images)")
        _save_split(table, folder, split)

    if mirror.derive_val and not ((folder / "train").is_dir() and (folder / "val").is_dir()):
        for split in ("train", "val"):
            shutil.rmtree(folder / split, ignore_errors=True)
        parts = _derived_val(_load_mirror_split(mirror, "train", mirror_root, cache_dir), name)
        for split, table in parts.items():
            write(split, table)
    for split, mirror_split in mirror.splits.items():
        if not (folder / split).is_dir():
            write(split, _load_mirror_split(mirror, mirror_split, mirror_root, cache_dir))
    saved = {split: datasets.load_from_disk(str(folder / split)) for split in _our_splits(mirror)}
    if not layout:
        layout.update(_layout(name, mirror, saved[_our_splits(mirror)[0]]))

    meta = {
        "dataset": name,
        "repo": mirror.repo,
        "config": mirror.config,
        "revision": mirror.revision,
        "splits": {split: len(saved[split]) for split in _our_splits(mirror)},
        "mirror_splits": dict(mirror.splits),
        "derived_val": mirror.derive_val,
        **layout,
        "transposed": mirror.transposed,
    }
    _write_json_atomic(folder / MARKER, meta)
    log(f"{name}: complete ({', '.join(f'{s} {n}' for s, n in meta['splits'].items())})")
    return meta


def _layout(name: str, mirror: Mirror, table: Any) -> dict[str, Any]:
    """Image / label columns of a mirror table and our class layout for it (see :func:`class_layout`)."""
    image_column = _column(table, mirror.image_column, "Image", mirror, "image")
    label_column = _column(table, mirror.label_column, "ClassLabel", mirror, "label")
    classes, label_map = class_layout(name, mirror, _label_names(table, label_column))
    return {"image_column": image_column, "label_column": label_column, "classes": classes, "label_map": label_map}


def _our_splits(mirror: Mirror) -> list[str]:
    return [*mirror.splits, *(["val"] if mirror.derive_val else [])]


def _load_mirror_split(mirror: Mirror, split: str, mirror_root: Path | None, cache_dir: Path | None) -> Any:
    """One split of the mirror through ``datasets.load_dataset`` (hub, local clone, or cache when offline)."""
    import datasets

    path = str(mirror_root / mirror.repo) if mirror_root is not None else mirror.repo
    kwargs: dict[str, Any] = {"split": split}
    if mirror.config:
        kwargs["name"] = mirror.config
    if mirror.revision and mirror_root is None:
        kwargs["revision"] = mirror.revision
    if mirror.data_files:
        kwargs["data_files"] = {split: mirror.data_files[split]}
    if cache_dir is not None:
        kwargs["cache_dir"] = str(cache_dir)
    try:
        return datasets.load_dataset(path, **kwargs)
    except Exception as exc:  # every failure becomes one message naming the mirror and the remedy
        raise DownloadError(_explain(mirror, split, path, exc)) from exc


def _explain(mirror: Mirror, split: str, path: str, exc: BaseException) -> str:
    """What went wrong loading a mirror, and what to do about it."""
    what = f"split {split!r} of mirror {path}" + (f" (config {mirror.config})" if mirror.config else "")
    chain = _exception_chain(exc)
    names = " ".join(type(e).__name__ for e in chain)
    detail = f"{type(exc).__name__}: {exc}"
    if any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in _OFFLINE_VARS):
        return (f"{what} is not in the local cache and offline mode is on ({'/'.join(_OFFLINE_VARS)}): run once with "
                f"network access (or with --mirror-root pointing at a local clone). [{detail}]")
    if re.search(r"Connect|Timeout|Network|ProtocolError|RemoteDisconnected", names) or any(
            isinstance(e, (ConnectionError, TimeoutError)) for e in chain):
        return f"network failure while fetching {what}; rerun the same command to resume. [{detail}]"
    if re.search(r"DatasetNotFound|RepositoryNotFound|RevisionNotFound|DataFilesNotFound|FileNotFound", names):
        return (f"{what} was not found: the mirror may have moved or been renamed; see the mirror table in "
                f"docs/data.md (or use --mirror-root with a local copy). [{detail}]")
    return f"could not load {what}. [{detail}]"


def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _derived_val(train: Any, name: str) -> dict[str, Any]:
    """Train / val parts of a mirror's train split, by the seeded split of SPEC §4 (``tsvmerge.data.splits``)."""
    import torch

    n = len(train)
    size = val_size(n, VAL_FRACTION, MAX_VAL_SAMPLES, name=f"Mirror of {name}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SEED)).tolist()
    # random_split([n - size, size]) takes the first n - size permuted indices as its first part.
    return {"train": train.select(perm[: n - size]), "val": train.select(perm[n - size:])}


def _column(table: Any, wanted: str, feature_type: str, mirror: Mirror, role: str) -> str:
    """``wanted`` if the mirror has that column, else its only column of the given feature type."""
    if wanted in table.column_names:
        return wanted
    found = [c for c, f in table.features.items() if type(f).__name__ == feature_type]
    if len(found) == 1:
        return found[0]
    raise DownloadError(f"mirror {mirror.repo} has no {role} column {wanted!r} (columns: "
                        f"{', '.join(table.column_names)}); its schema changed: update tsvmerge/download/mirrors.py")


def _label_names(table: Any, column: str) -> list[str] | None:
    feature = table.features[column]
    names = getattr(feature, "names", None)
    return list(names) if names else None


def class_layout(name: str, mirror: Mirror, mirror_names: Sequence[str] | None) -> tuple[list[str], list[int] | None]:
    """Our raw class list (in our label order) and the map mirror label -> our label (None: the identity).

    Raises DownloadError when the class count, or (``verify_names``) the names, differ from the published ones.
    """
    expected = NUM_CLASSES[name]
    if mirror_names is None:  # plain integer labels: the published names, in the published order
        try:
            return classnames(name), None
        except LookupError as exc:
            raise DownloadError(f"mirror {mirror.repo} of {name} has no class names") from exc
    if len(mirror_names) != expected:
        raise DownloadError(f"mirror {mirror.repo} of {name} has {len(mirror_names)} classes, the published "
                            f"dataset {expected}: it is not the published dataset (docs/data.md)")
    mapped = [_to_raw(mirror.class_mapping, n) for n in mirror_names]
    raw = sorted(mapped) if mirror.order == "sorted" else mapped
    if len(set(raw)) != len(raw):
        raise DownloadError(f"mirror {mirror.repo} of {name}: class names collide after mapping")
    label_map = [raw.index(m) for m in mapped]
    if mirror.verify_names:
        published = _published_names(name, raw)
        ours = [None] * expected
        for mirror_label, our_label in enumerate(label_map):
            ours[our_label] = mirror_names[mirror_label]
        diffs = [(p, m) for p, m in zip(published, ours) if _norm(p) != _norm(str(m))]
        if diffs:
            shown = "; ".join(f"{p!r} vs mirror {m!r}" for p, m in diffs[:5])
            raise DownloadError(f"mirror {mirror.repo} of {name}: class names differ from the published ones "
                                f"({len(diffs)} of {expected}: {shown})")
    return raw, (None if label_map == list(range(expected)) else label_map)


def _published_names(name: str, raw: list[str]) -> list[str]:
    try:
        return classnames(name)
    except LookupError:
        return rule_classnames(name, raw)


def _to_raw(mapping: str, name: str) -> str:
    """A mirror's class name as our loaders' raw class name (folder name, torchvision ``.classes`` entry)."""
    if mapping == "identity":
        return name
    if mapping == "underscores":  # torchvision CIFAR100 / Food101 names: 'aquarium_fish', 'apple_pie'
        return name.strip().replace(" ", "_")
    if mapping == "title_words":  # torchvision OxfordIIITPet: 'american_bulldog' -> 'American Bulldog'
        return " ".join(part.title() for part in re.split(r"[_ ]+", name.strip()))
    if mapping == "sun397_folders":  # 'apartment building outdoor' -> 'a_apartment_building_outdoor'
        words = re.sub(r"[/ ]+", "_", name.strip().strip("/")).lstrip("_")
        return f"{words[0]}_{words}"
    if mapping == "eurosat_folders":  # 'annual crop land' -> 'AnnualCrop' (inverse of the published names)
        by_name = {_norm(n): f for n, f in zip(rule_classnames("EuroSAT", list(EUROSAT_FOLDERS)), EUROSAT_FOLDERS)}
        by_name.update({_norm(f): f for f in EUROSAT_FOLDERS})
        if _norm(name) not in by_name:
            raise DownloadError(f"unknown EuroSAT class {name!r} in the mirror")
        return by_name[_norm(name)]
    raise ValueError(f"unknown class mapping {mapping!r}")


def _norm(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").split())


def _check_labels(table: Any, column: str, num_classes: int, name: str, split: str) -> None:
    values = {int(v) for v in table.unique(column)}
    bad = sorted(v for v in values if not 0 <= v < num_classes)
    if bad:
        raise DownloadError(f"{name} {split}: labels {bad[:5]} outside 0..{num_classes - 1}")


def _save_split(table: Any, folder: Path, split: str) -> None:
    """``save_to_disk`` into a temporary folder, then rename: a split folder is only ever complete."""
    tmp = folder / f".tmp-{split}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    table.save_to_disk(str(tmp))
    target = folder / split
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def _datasets_cache() -> Path:
    import datasets.config

    return Path(datasets.config.HF_DATASETS_CACHE)


def _existing_ancestor(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


# --------------------------------------------------------------------------------------------------- final check


def expected_split_sizes(name: str, to: Path, expected: Mapping[str, Mapping[str, int]] = EXPECTED_SIZES
                         ) -> dict[str, int]:
    """Published sizes of ``name``'s splits as they lie under ``to``: a validation split carved out of a mirror's
    train split at download time (``derived_val``) moves its images from train to val."""
    sizes = dict(expected[name])
    meta = read_marker(to, name)
    if meta is not None and meta.get("derived_val") and "train" in sizes:
        n = sizes["train"]
        size = val_size(n, VAL_FRACTION, MAX_VAL_SAMPLES, name=name)
        sizes["train"], sizes["val"] = n - size, size
    return sizes


def check_sizes(names: Sequence[str], to: Path, expected: Mapping[str, Mapping[str, int]] = EXPECTED_SIZES
                ) -> list[SplitCount]:
    """Count the images of every split of ``names`` through the project's loaders, against ``expected``."""
    rows = []
    for name in names:
        source = REGISTRY[name]
        sizes = expected_split_sizes(name, to, expected)
        splits = ["train", "test", *(["val"] if source.has_val else [])]
        meta = read_marker(to, name)
        if meta is not None and len(meta.get("classes", [])) != NUM_CLASSES[name]:
            rows.append(SplitCount(name, "classes", len(meta.get("classes", [])), NUM_CLASSES[name],
                                   "class count differs from the published one"))
        for split in splits:
            try:
                found = len(source.open(to, split, None))  # type: ignore[arg-type]
            except FileNotFoundError:
                rows.append(SplitCount(name, split, None, sizes.get(split), "missing"))
                continue
            except Exception as exc:  # a copy that cannot be read is reported, not fatal
                rows.append(SplitCount(name, split, None, sizes.get(split), f"unreadable: {exc}"))
                continue
            problem = None if found == sizes.get(split) else "size differs from the published one"
            rows.append(SplitCount(name, split, found, sizes.get(split), problem))
    return rows


def format_check(rows: Sequence[SplitCount]) -> str:
    """The final check as a table, one line per split."""
    lines = [f"{'dataset':14s} {'split':7s} {'found':>8s} {'expected':>8s}  status"]
    for r in rows:
        found = "-" if r.found is None else str(r.found)
        want = "?" if r.expected is None else str(r.expected)
        lines.append(f"{r.dataset:14s} {r.split:7s} {found:>8s} {want:>8s}  {'ok' if r.ok else r.problem}")
    return "\n".join(lines)

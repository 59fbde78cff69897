"""One Hugging Face hub repository as a listing of files, from the hub (online) or the local cache (offline), and
single-file downloads into that cache, with huggingface_hub's errors turned into :mod:`.errors` messages.

A listing first, because the files to fetch are chosen by path (a model folder may be spelled differently, mask
names differ per variant) and their sizes decide the disk-space check before anything is downloaded. Files go into
huggingface_hub's own cache (``HF_HUB_CACHE``), so that interrupted downloads resume and ``HF_HUB_OFFLINE=1`` runs
work from it.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import HubFileNotFoundError, HubUnavailableError, NotEnoughSpaceError

__all__ = ["Hub", "HubListing", "hub_cache_dir", "is_offline"]

_TRUE = {"1", "true", "yes", "on"}
#: Top-level packages whose exceptions are transport failures (no connection, timeouts, TLS, proxies).
_NETWORK_PACKAGES = {"requests", "urllib3", "httpx", "httpx2", "httpcore"}


def is_offline() -> bool:
    """``HF_HUB_OFFLINE`` as set now (huggingface_hub reads it once, when it is imported)."""
    value = os.environ.get("HF_HUB_OFFLINE")
    if value is not None and value.strip():
        return value.strip().lower() in _TRUE
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache: ``HF_HUB_CACHE`` as set now, else huggingface_hub's default."""
    value = os.environ.get("HF_HUB_CACHE")
    if value:
        return Path(os.path.expandvars(value)).expanduser()
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()


@dataclass(frozen=True)
class HubListing:
    """The files of a repository (path -> size in bytes) as the hub or the cache knows them."""

    files: Mapping[str, int]
    where: str
    snapshot: Path | None = None  # the cached snapshot folder, for an offline listing

    def resolve(self, top: str, folder: str, rest: str) -> str | None:
        """The path of ``<top>/<folder>/<rest>`` in the repository, whatever the case of ``folder`` (the hub
        spells one model folder ``VIT-B-16``), or None when absent."""
        for spelling in self.spellings(top, folder):
            path = f"{top}/{spelling}/{rest}"
            if path in self.files:
                return path
        return None

    def spellings(self, top: str, folder: str) -> list[str]:
        """The folders under ``top`` named ``folder`` up to case: the exact spelling first."""
        names = {p.split("/")[1] for p in self.files if p.startswith(f"{top}/") and p.count("/") >= 2}
        return sorted((n for n in names if n.lower() == folder.lower()), key=lambda n: (n != folder, n))

    def under(self, top: str, folder: str) -> list[str]:
        """Every file directly inside ``<top>/<folder>/`` (any spelling of ``folder``)."""
        prefixes = [f"{top}/{s}/" for s in self.spellings(top, folder)]
        return sorted(p for p in self.files for prefix in prefixes
                      if p.startswith(prefix) and "/" not in p[len(prefix):])


@dataclass(frozen=True)
class Hub:
    """Access to one repository through huggingface_hub, the cache at ``cache_dir``; ``offline``: the cache only."""

    repo_id: str
    cache_dir: Path
    offline: bool

    @property
    def _repo_cache(self) -> Path:
        return self.cache_dir / f"models--{self.repo_id.replace('/', '--')}"

    def listing(self) -> HubListing:
        """Every file of the repository with its size: from the hub, or offline from the cached snapshot."""
        if self.offline:
            return self._cached_listing()
        from huggingface_hub import HfApi
        from huggingface_hub.hf_api import RepoFile

        try:
            files = {entry.path: int(entry.size) for entry in HfApi().list_repo_tree(self.repo_id, recursive=True)
                     if isinstance(entry, RepoFile)}
        except Exception as exc:  # noqa: BLE001 - huggingface_hub's and the HTTP client's errors, translated
            raise self.error(exc, f"the file list of {self.repo_id}") from exc
        return HubListing(files, f"the hub repository {self.repo_id}")

    def _snapshot(self) -> Path | None:
        """The cached snapshot of ``main`` (else the most recent one), as huggingface_hub lays out its cache."""
        snapshots = self._repo_cache / "snapshots"
        ref = self._repo_cache / "refs" / "main"
        if ref.is_file() and (snapshots / ref.read_text().strip()).is_dir():
            return snapshots / ref.read_text().strip()
        candidates = sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime) if snapshots.is_dir() else []
        return candidates[-1] if candidates else None

    def _cached_listing(self) -> HubListing:
        snapshot = self._snapshot()
        if snapshot is None:
            raise HubUnavailableError(
                f"HF_HUB_OFFLINE is set and {self.repo_id} is not in the local Hugging Face cache "
                f"({self.cache_dir}); run once with network access (unset HF_HUB_OFFLINE), or point HF_HUB_CACHE "
                "at the cache that holds it")
        files = {p.relative_to(snapshot).as_posix(): p.stat().st_size for p in snapshot.rglob("*") if p.is_file()}
        return HubListing(files, f"the local Hugging Face cache ({snapshot})", snapshot)

    def cached(self, path: str, listing: HubListing) -> Path | None:
        """The complete cached copy of ``path``, or None (nothing is downloaded)."""
        if listing.snapshot is not None:
            local = listing.snapshot / path
            return local if local.is_file() else None
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(self.repo_id, path, cache_dir=str(self.cache_dir))
        return Path(found) if isinstance(found, str) else None

    def download(self, path: str) -> Path:
        """Download ``path`` into the cache (resuming a partial download) and return the cached file."""
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(self.repo_id, path, cache_dir=str(self.cache_dir),
                                        local_files_only=self.offline))
        except Exception as exc:  # noqa: BLE001 - huggingface_hub's and the HTTP client's errors, translated
            raise self.error(exc, path) from exc

    def error(self, exc: BaseException, what: str) -> BaseException:
        """The DownloadError that says what went wrong with ``what`` and what to do; ``exc`` itself if unknown."""
        kinds = _hub_error_classes()
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return NotEnoughSpaceError(
                f"the disk filled up while downloading {what} into {self.cache_dir} ({exc.strerror or exc}); free "
                "some space or set HF_HUB_CACHE to a larger disk, then run again (the partial download is resumed)")
        if isinstance(exc, kinds["RepositoryNotFoundError"] | kinds["RevisionNotFoundError"]):
            return HubFileNotFoundError(
                f"the hub repository {self.repo_id} (or its main revision) cannot be found: it does not exist, or "
                f"it is private or gated and you are not logged in ({_first_line(exc)})")
        if isinstance(exc, kinds["LocalEntryNotFoundError"] | kinds["OfflineModeIsEnabled"]):
            if self.offline:
                return HubUnavailableError(
                    f"{what} is not in the local Hugging Face cache ({self.cache_dir}) and HF_HUB_OFFLINE is set: "
                    "run again with network access (unset HF_HUB_OFFLINE) to download it")
            return self._unreachable(exc, what)
        if isinstance(exc, kinds["EntryNotFoundError"]):
            return HubFileNotFoundError(f"{what} does not exist in the hub repository {self.repo_id}")
        if isinstance(exc, kinds["HfHubHTTPError"]):
            return HubUnavailableError(f"the hub answered with an error for {what} ({_first_line(exc)}); "
                                       "try again later")
        if _is_network_error(exc):
            return self._unreachable(exc, what)
        return exc

    def _unreachable(self, exc: BaseException, what: str) -> HubUnavailableError:
        return HubUnavailableError(
            f"cannot download {what}: the hub cannot be reached ({type(exc).__name__}: {_first_line(exc)}); check "
            "the network connection (and HTTPS_PROXY), or set HF_HUB_OFFLINE=1 to use only the local cache")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _is_network_error(exc: BaseException) -> bool:
    return isinstance(exc, ConnectionError | TimeoutError) or any(
        cls.__module__.split(".")[0] in _NETWORK_PACKAGES for cls in type(exc).__mro__)


class _Never(Exception):
    """Stands for an error class this huggingface_hub version lacks: nothing is an instance of it."""


def _hub_error_classes(names: Iterable[str] = ("RepositoryNotFoundError", "RevisionNotFoundError",
                                               "LocalEntryNotFoundError", "OfflineModeIsEnabled",
                                               "EntryNotFoundError", "HfHubHTTPError")) -> dict[str, type]:
    """huggingface_hub's error classes by name (``huggingface_hub.errors`` in recent versions, ``.utils`` before)."""
    import importlib

    modules = []
    for module in ("huggingface_hub.errors", "huggingface_hub.utils"):
        try:
            modules.append(importlib.import_module(module))
        except ImportError:
            continue
    found: dict[str, type] = {}
    for name in names:
        found[name] = next((getattr(m, name) for m in modules if isinstance(getattr(m, name, None), type)), _Never)
    return found

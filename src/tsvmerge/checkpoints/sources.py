"""What a ``--pretrained`` / ``--finetuned`` argument names: a state-dict file, a model folder, or a hub model.

A hub id ``org/name[@revision]`` is fetched with ``huggingface_hub.snapshot_download`` (weights, config and
tokenizer files only; safetensors when the repository has them) into the usual Hugging Face cache, so that
``HF_HUB_OFFLINE=1`` runs from that cache without any network access.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tsvmerge.checkpoints.hf_folder import is_model_folder
from tsvmerge.checkpoints.peft_adapter import is_adapter_folder
from tsvmerge.checkpoints.paths import CheckpointNotFoundError, require_file

__all__ = ["HubModelError", "parse_hub_id", "resolve_source"]

_HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?")
_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
_MODEL_FILES = ["config.json", "generation_config.json", "*.model", "tokenizer*", "special_tokens_map.json",
                "vocab*", "merges.txt", "added_tokens.json", "preprocessor_config.json", "chat_template*",
                "adapter_config.json"]
_SAFETENSORS = ["*.safetensors", "model.safetensors.index.json"]
_BIN = ["pytorch_model*.bin", "pytorch_model.bin.index.json", "adapter_model.bin"]


class HubModelError(CheckpointNotFoundError):
    """A hub model could not be fetched (offline and not cached, unknown repository or revision, no network)."""


def parse_hub_id(argument: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` when ``argument`` reads as a hub id rather than a file name, else None."""
    match = _HUB_ID.fullmatch(argument)
    if match is None or argument.endswith(_FILE_SUFFIXES):
        return None
    return match["repo"], match["revision"]


_HUB_ID_FORM = "a hub id is org/name or org/name@revision (letters, digits, '-', '_', '.')"
_NAME_PART = re.compile(r"[\w.-]+")


def _hub_id_attempt(argument: str) -> bool:
    """Whether ``argument``, which names no local file and is no valid hub id, was still meant as one.

    A hub id has an ``@`` or exactly one ``/`` between two names; a path shows itself by starting with ``/``, ``~``
    or ``.``, by a checkpoint suffix, by more components, or by a parent folder that exists here. Those keep the
    missing-file message with its help on obtaining checkpoints.
    """
    if argument.startswith(("/", "~", ".")) or argument.endswith(_FILE_SUFFIXES) or "\\" in argument:
        return False
    if "@" in argument:
        return True
    parent = Path(argument).parent
    if parent != Path(".") and parent.is_dir():
        return False
    return len([part for part in argument.split("/") if part]) == 2


def _hub_id_problem(argument: str) -> str:
    """What is wrong with ``argument`` as a hub id, in a few words."""
    repo, at, revision = argument.partition("@")
    parts = repo.split("/")
    if at and not revision:
        return "nothing follows '@'"
    if "@" in revision:
        return "more than one '@'"
    if len(parts) != 2 or not all(parts):
        return f"{repo!r} is not org/name"
    bad = sorted({ch for ch in repo.replace("/", "") + revision.replace("/", "") if not _NAME_PART.fullmatch(ch)})
    if bad:
        return "it holds " + ", ".join(repr(ch) for ch in bad)
    return "the organisation must start with a letter or digit"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _download(repo_id: str, revision: str | None, patterns: list[str]) -> Path:
    from huggingface_hub import snapshot_download

    offline = _offline()
    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=offline,
                                   cache_dir=os.environ.get("HF_HUB_CACHE") or None)
    except Exception as exc:  # huggingface_hub's errors: not cached, unknown repository, network failure...
        shown = repo_id + (f"@{revision}" if revision else "")
        if offline:
            reason = (f"HF_HUB_OFFLINE is set and {shown} is not in the local Hugging Face cache; download it once "
                      f"with network access (huggingface-cli download {repo_id}) or give a local folder")
        else:
            reason = f"it could not be downloaded ({type(exc).__name__}: {exc})"
        raise HubModelError(f"model {shown!r} is not a local file or folder, and {reason}") from exc
    return Path(folder)


def resolve_source(argument: str | Path) -> Path:
    """The local file or model folder ``argument`` names, downloading a hub model into the cache if needed."""
    path = Path(argument)
    if path.exists():
        return path
    hub = parse_hub_id(str(argument))
    if hub is None:
        if _hub_id_attempt(str(argument)):
            raise HubModelError(f"{str(argument)!r} is not a local file or folder, nor a valid hub id "
                                f"({_hub_id_problem(str(argument))}): {_HUB_ID_FORM}")
        return require_file(path)  # raises CheckpointNotFoundError, saying how to obtain checkpoints
    repo_id, revision = hub
    folder = _download(repo_id, revision, [*_SAFETENSORS, *_MODEL_FILES])
    if is_adapter_folder(folder) and any(folder.glob("adapter_model.*")):  # a PEFT adapter repository
        return folder
    if not is_model_folder(folder):  # an older repository with PyTorch .bin weights only
        folder = _download(repo_id, revision, [*_BIN, *_MODEL_FILES])
    if is_adapter_folder(folder):
        return folder
    if not is_model_folder(folder):
        raise HubModelError(f"hub model {str(argument)!r} ({folder}) has no weights in a layout save_pretrained "
                            "writes (model*.safetensors or pytorch_model*.bin)")
    return folder


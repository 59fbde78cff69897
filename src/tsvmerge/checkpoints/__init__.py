"""Checkpoint I/O: published file layout, lazy state dicts, restricted unpickling, TALL mask files.

Restricted unpickling is in two modules: :mod:`~tsvmerge.checkpoints.restricted_unpickler`, the generic loader that
admits only an explicit allow-list of globals, and :mod:`~tsvmerge.checkpoints.safe_pickle`, the allow-list of the
published whole-module encoder files (open_clip / task_vectors classes) and its loader.

Head loading lives in :mod:`tsvmerge.models.heads` (it imports this package, so it is not re-exported here).
"""

from tsvmerge.checkpoints.paths import (
    CHECKPOINT_HELP,
    CheckpointNotFoundError,
    dataset_base_name,
    find_zeroshot_checkpoint,
    finetuned_adapter_path,
    finetuned_checkpoint_path,
    finetuned_source_path,
    head_path,
    single_task_accuracy_path,
    tall_mask_paths,
    zeroshot_checkpoint_path,
)
from tsvmerge.checkpoints.restricted_unpickler import UnsafeCheckpointError, checkpoint_format, load_pickled_object
from tsvmerge.checkpoints.safe_pickle import LegacyImageEncoder, legacy_module_allow_list, load_legacy_module
from tsvmerge.checkpoints.state_dict import (
    CheckpointFormatError,
    CheckpointMismatchError,
    LazyStateDict,
    check_compatible,
    open_state_dict,
    save_state_dict,
)
from tsvmerge.checkpoints.tall_mask_files import load_tall_masks, save_tall_masks

__all__ = [
    "CHECKPOINT_HELP",
    "CheckpointFormatError",
    "CheckpointMismatchError",
    "CheckpointNotFoundError",
    "LazyStateDict",
    "LegacyImageEncoder",
    "UnsafeCheckpointError",
    "check_compatible",
    "checkpoint_format",
    "dataset_base_name",
    "find_zeroshot_checkpoint",
    "finetuned_adapter_path",
    "finetuned_checkpoint_path",
    "finetuned_source_path",
    "head_path",
    "legacy_module_allow_list",
    "load_legacy_module",
    "load_pickled_object",
    "load_tall_masks",
    "open_state_dict",
    "save_state_dict",
    "save_tall_masks",
    "single_task_accuracy_path",
    "tall_mask_paths",
    "zeroshot_checkpoint_path",
]

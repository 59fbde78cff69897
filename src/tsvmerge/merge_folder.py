"""Merge into Hugging Face model folders, shard by shard, in one process or split over several (``torchrun``).

The merged model is never whole in memory: entries stream from the inputs through the method and each merged
tensor is appended to its shard file at once (the shard's safetensors header is written first, from the plan), so
memory holds the entries being merged, not a shard. Each process merges and writes its own contiguous run of
shards (planned from the entries' sizes, identically on every process); the first process then writes the index
and the base model's config and tokenizer files, and moves the folder into place. The output is complete or
absent, and its tensors do not depend on the number of processes.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from .checkpoints.hf_folder import SAFETENSORS_INDEX, HFModelFolder, model_files
from .checkpoints.output_folders import MANIFEST_NAME, OutputRecord, owned_directory
from .checkpoints.safetensors_stream import SafetensorsStreamWriter
from .checkpoints.sharded import ShardPlan, copy_model_files, plan_shards, write_index
from .merging.engine import stream_merged_entries
from .merging.registry import MergeMethod
from .merging.task_vectors import TaskVectors

__all__ = ["output_folders", "plan_for", "planned_files", "tied_entries", "write_merged_folders"]

_INPUT_EMBEDDING = re.compile(r"(^|\.)(embed_tokens|wte|word_embeddings|embed_in)\.weight$")
_OUTPUT_HEAD = re.compile(r"(^|\.)(lm_head|embed_out)\.weight$")


def tied_entries(tasks: TaskVectors) -> dict[str, str]:
    """``{output head: input embedding}`` for heads stored in every input as an exact copy of the embedding.

    Such weights are tied in the model (``tie_word_embeddings``) but saved twice; merging both copies gives the
    same values only if the method is deterministic, so the head is written as a copy of the merged embedding.
    A head absent from the checkpoint (the usual tied save) is not invented.
    """
    embeddings = [key for key in tasks.keys if _INPUT_EMBEDDING.search(key)]
    tied = {}
    for head in (key for key in tasks.keys if _OUTPUT_HEAD.search(key)):
        for embedding in embeddings:
            if tasks.shape(head) != tasks.shape(embedding) or tasks.dtype(head) != tasks.dtype(embedding):
                continue
            inputs = [tasks.pretrained, *tasks.finetuned]
            if all(torch.equal(state[head], state[embedding]) for state in inputs):
                tied[head] = embedding
                break
    return tied


def output_folders(method: MergeMethod, num_tasks: int) -> list[str]:
    """Sub-folders of ``--out``: the folder itself, or ``task<i>`` per task for task-specific methods."""
    return [f"task{task}" for task in range(num_tasks)] if method.task_specific else ["."]


def plan_for(tasks: TaskVectors, max_shard_bytes: int, dtype: torch.dtype | None, tied: dict[str, str]) -> ShardPlan:
    """The shard layout of the merged model: entries in key order, written in ``dtype`` (default each entry's)."""
    sizes = {}
    for key in tasks.keys:
        sizes[key] = tasks.shape(key).numel() * _output_dtype(tasks, key, dtype).itemsize
    # A tied head goes right after its embedding, in the same shard.
    groups = [[embedding, head] for head, embedding in tied.items()]
    return plan_shards(sizes, max_shard_bytes, tasks.collective.world_size, groups)


def planned_files(plan: ShardPlan, base: HFModelFolder, subfolders: Sequence[str]) -> list[str]:
    """Every file the merge writes below ``--out`` (relative paths): what its manifest will claim."""
    names = [*plan.names, *([SAFETENSORS_INDEX] if len(plan.shards) > 1 else []),
             *(path.name for path in model_files(base.path))]
    files = []
    for sub in subfolders:
        prefix = "" if sub == "." else f"{sub}/"
        files += [prefix + name for name in names] + ([prefix + MANIFEST_NAME] if prefix else [])
    return files


def write_merged_folders(method: MergeMethod, tasks: TaskVectors, base: HFModelFolder, out: Path, *, alpha: float,
                         dtype: torch.dtype | None = None, max_shard_bytes: int, choice: int = 0,
                         progress: bool = False, workers: int | None = None,
                         record: OutputRecord | None = None) -> list[Path]:
    """Prepare ``method``, merge this process's shards into ``out`` and return the folders written; ``record``
    (the command and its inputs) goes into the folders' manifests (:mod:`tsvmerge.checkpoints.output_folders`)."""
    collective = tasks.collective
    method.prepare(tasks, progress=progress, workers=workers)
    tied = tied_entries(tasks)
    plan = plan_for(tasks, max_shard_bytes, dtype, tied)
    subfolders = output_folders(method, tasks.num_tasks)
    if collective.rank == 0:
        with owned_directory(out, record or OutputRecord(), planned_files(plan, base, subfolders)) as tmp:
            collective.broadcast_text(str(tmp))
            _write_own_shards(method, tasks, plan, tied, tmp, subfolders, alpha=alpha, dtype=dtype, choice=choice,
                              progress=progress, workers=workers)
            collective.barrier()  # every process has written its shards
            for sub in subfolders:
                write_index(tmp / sub, plan)
                copy_model_files(base.path, tmp / sub, _dtype_name(dtype))
        collective.barrier()  # the folder is in place
    else:
        tmp = Path(collective.broadcast_text(None))
        _write_own_shards(method, tasks, plan, tied, tmp, subfolders, alpha=alpha, dtype=dtype, choice=choice,
                          progress=False, workers=workers)
        collective.barrier()
        collective.barrier()
    return [out / sub if sub != "." else out for sub in subfolders]


def _write_own_shards(method: MergeMethod, tasks: TaskVectors, plan: ShardPlan, tied: dict[str, str], folder: Path,
                      subfolders: Sequence[str], *, alpha: float, dtype: torch.dtype | None, choice: int,
                      progress: bool, workers: int | None) -> None:
    """Merge the entries of this process's shards in order, appending each merged tensor to its shard file at once."""
    for sub in subfolders:
        # Never the temporary folder itself: rank 0 made it, and removes it when the merge fails on any process.
        (folder / sub).mkdir(exist_ok=True)
    own = plan.owned_by(tasks.collective.rank)
    keys = [key for index in own for key in plan.shards[index] if key not in tied]
    stream = stream_merged_entries(method, tasks, keys, alpha=alpha, dtype=dtype, choice=choice, workers=workers,
                                   progress=progress)
    embeddings = set(tied.values())
    for index in own:
        shard_keys = plan.shards[index]
        layout = [(key, tuple(tasks.shape(key)), _output_dtype(tasks, key, dtype)) for key in shard_keys]
        with contextlib.ExitStack() as files:
            writers = [files.enter_context(SafetensorsStreamWriter(folder / sub / plan.names[index], layout,
                                                                   {"format": "pt"})) for sub in subfolders]
            kept: dict[str, list[torch.Tensor]] = {}  # merged embeddings whose tied head comes next
            for key in shard_keys:
                if key in tied:
                    values = kept.pop(tied[key])
                else:
                    streamed, values = next(stream)
                    assert streamed == key, (streamed, key)
                    if key in embeddings:
                        kept[key] = values
                for writer, value in zip(writers, values, strict=True):
                    writer.write(key, value)
                del values


def _output_dtype(tasks: TaskVectors, key: str, dtype: torch.dtype | None) -> torch.dtype:
    """The dtype an entry is written in: ``dtype`` for merged (floating) entries when given, else θ0's."""
    return dtype if dtype is not None and tasks.is_mergeable(key) else tasks.dtype(key)


def _dtype_name(dtype: torch.dtype | None) -> str | None:
    return None if dtype is None else str(dtype).removeprefix("torch.")

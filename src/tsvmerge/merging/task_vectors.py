"""Task vectors τi = θi − θ0, produced lazily one state-dict entry at a time (SPEC §2).

The checkpoints are only ever read through ``Mapping[str, Tensor]`` objects (memory-mapped files in
practice), and a ``TaskEntry`` materializes the T task tensors of a single entry, so merging a model
needs one layer's worth of anonymous memory, whatever the number of tasks.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from functools import cached_property

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..checkpoints.state_dict import check_compatible, check_finite, source_name


def is_mergeable(tensor: Tensor) -> bool:
    """Only floating-point entries have task vectors; integer buffers are copied from θ0."""
    return tensor.is_floating_point()


class TaskEntry:
    """The pre-trained tensor of one entry, its T fine-tuned versions and, on demand, their deltas."""

    def __init__(self, key: str, pretrained: Tensor, finetuned: Sequence[Tensor], device: torch.device) -> None:
        self.key = key
        self.pretrained = pretrained
        self.finetuned = list(finetuned)
        self.device = device

    @property
    def num_tasks(self) -> int:
        return len(self.finetuned)

    @property
    def shape(self) -> torch.Size:
        return self.pretrained.shape

    @cached_property
    def changed(self) -> list[int]:
        """Tasks whose tensor differs from θ0 (checked without materializing any delta)."""
        return [i for i, ft in enumerate(self.finetuned) if not torch.equal(ft, self.pretrained)]

    def delta(self, task: int) -> Tensor:
        """τ_task in float32 on the compute device."""
        base = self.pretrained.to(self.device, torch.float32)
        return self.finetuned[task].to(self.device, torch.float32) - base

    def deltas(self, tasks: Sequence[int] | None = None) -> Tensor:
        """Stack [len(tasks), *shape] of task vectors (all tasks by default)."""
        tasks = range(self.num_tasks) if tasks is None else tasks
        base = self.pretrained.to(self.device, torch.float32)
        out = torch.empty((len(tasks), *self.shape), device=self.device)
        for row, task in zip(out, tasks):
            torch.sub(self.finetuned[task].to(self.device, torch.float32), base, out=row)
        return out


class TaskVectors:
    """θ0 and θ1..θT as lazily read mappings, validated to share keys and shapes.

    Every floating-point tensor is checked for NaN / ±inf the first time its entry is read (one cheap reduction,
    as the entries stream), so a diverged checkpoint is reported, naming its file and key, before anything is
    written.
    """

    def __init__(self, pretrained: Mapping[str, Tensor], finetuned: Sequence[Mapping[str, Tensor]],
                 names: Sequence[str] | None = None, device: torch.device | str = "cpu") -> None:
        if not finetuned:
            raise ValueError("at least one fine-tuned checkpoint is needed to merge")
        self.names = list(names) if names is not None else [f"task{i}" for i in range(len(finetuned))]
        if len(self.names) != len(finetuned):
            raise ValueError(f"{len(self.names)} task names for {len(finetuned)} fine-tuned checkpoints")
        self.sources = [source_name(ft, name) for ft, name in zip(finetuned, self.names)]
        self.pretrained_source = source_name(pretrained, "the pre-trained state dict")
        check_compatible(pretrained, finetuned, self.sources)
        self.pretrained = pretrained
        self.finetuned = list(finetuned)
        self.device = torch.device(device)
        self.keys = sorted(pretrained.keys())
        self._checked: set[str] = set()

    @property
    def num_tasks(self) -> int:
        return len(self.finetuned)

    def entry(self, key: str) -> TaskEntry:
        entry = TaskEntry(key, self.pretrained[key], [ft[key] for ft in self.finetuned], self.device)
        if key not in self._checked:
            self._check_finite(entry)
            self._checked.add(key)
        return entry

    def _check_finite(self, entry: TaskEntry) -> None:
        check_finite(entry.pretrained, entry.key, self.pretrained_source)
        for tensor, source in zip(entry.finetuned, self.sources):
            check_finite(tensor, entry.key, source)

    def entries(self, description: str | None = None, *, progress: bool = False,
                only_mergeable: bool = True) -> Iterator[TaskEntry]:
        """Entries in sorted key order (the published flat order), with an optional tqdm bar."""
        keys = [k for k in self.keys if not only_mergeable or is_mergeable(self.pretrained[k])]
        for key in tqdm(keys, desc=description, disable=not progress, unit="entry", leave=False):
            yield self.entry(key)

    def flat_magnitudes(self, task: int) -> Tensor:
        """|τ_task| flattened over every entry in sorted key order (one task in memory).

        Integer entries have no task vector and count as zeros, as in the published flattening of
        the whole state dict, so top-k% thresholds match it on any checkpoint.
        """
        parts = [self.entry(key).delta(task).abs().flatten().cpu() if is_mergeable(self.pretrained[key])
                 else torch.zeros(self.pretrained[key].numel())
                 for key in self.keys]
        return torch.cat(parts)

    def flat_offsets(self) -> dict[str, tuple[int, int]]:
        """Start and end of each entry (all entries, sorted keys) in the published flat mask order."""
        offsets, start = {}, 0
        for key in self.keys:
            end = start + self.pretrained[key].numel()
            offsets[key] = (start, end)
            start = end
        return offsets

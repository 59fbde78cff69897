"""Task vectors τi = θi − θ0, produced lazily one state-dict entry at a time (SPEC §2).

The checkpoints are only ever read through ``Mapping[str, Tensor]`` objects (memory-mapped files in
practice), and a ``TaskEntry`` materializes the T task tensors of a single entry, so merging a model
needs one layer's worth of anonymous memory, whatever the number of tasks.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from functools import cached_property

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..checkpoints.peft_adapter import LoRAFactors, PeftAdapter
from ..checkpoints.state_dict import LazyStateDict, check_compatible, check_finite, source_name
from .collective import Collective, SingleProcess
from .entry_rules import EntryRules, rules_for


def workspace_bytes(shape: Sequence[int], num_tasks: int) -> int:
    """About what merging one entry allocates: its T float32 deltas, θ0 and the result in float32."""
    return math.prod(shape) * 4 * (num_tasks + 2)


#: Float32 task-stack bytes of one block when an entry is merged block by block (methods acting value by value on
#: it); a method's temporaries are a few times this (TIES: trimmed values, signs, agreement masks).
ELEMENTWISE_BLOCK_BYTES = 2**27


class TaskEntry:
    """The pre-trained tensor of one entry, its T fine-tuned versions and, on demand, their deltas.

    A task given by a LoRA adapter holds its update's factors instead of a tensor (:attr:`updates`): its delta is
    s·B·A, formed only when asked for; methods that merge factors exactly use :attr:`updates` directly.
    """

    def __init__(self, key: str, pretrained: Tensor, finetuned: Sequence[Tensor | LoRAFactors], device: torch.device,
                 rules: EntryRules | None = None) -> None:
        self.key = key
        self.pretrained = pretrained
        self._inputs = list(finetuned)
        self.device = device
        self.rules = rules or EntryRules()

    @property
    def updates(self) -> list[LoRAFactors | None]:
        """Per task, the LoRA factors of its update, or None for a task given as a tensor."""
        return [value if isinstance(value, LoRAFactors) else None for value in self._inputs]

    @property
    def factored(self) -> bool:
        """Whether every task that changed this entry did so through LoRA factors (and at least one did)."""
        changed = self.changed
        return bool(changed) and all(isinstance(self._inputs[task], LoRAFactors) for task in changed)

    @property
    def finetuned(self) -> list[Tensor]:
        """θi of this entry per task (θ0 + s·B·A in float32 for a LoRA task, formed here)."""
        return [value if isinstance(value, Tensor) else value.materialize(self.pretrained.device)
                .add_(self.pretrained.to(torch.float32)) for value in self._inputs]

    def row_blocks(self, max_bytes: int) -> list[TaskEntry]:
        """The entry split along its first dimension into blocks whose float32 task stacks (T deltas, θ0 and a
        result) stay within ``max_bytes``; the entry itself when it already does. Blocks are views: nothing is
        read or copied until a block's deltas are asked for."""
        shape = self.shape
        if len(shape) == 0 or shape[0] < 2 or workspace_bytes(shape, self.num_tasks) <= max_bytes:
            return [self]
        rows = max(1, max_bytes // max(workspace_bytes(shape[1:], self.num_tasks), 1))
        return [TaskEntry(self.key, self.pretrained[start:start + rows],
                          [ft.rows(start, start + rows) if isinstance(ft, LoRAFactors) else ft[start:start + rows]
                           for ft in self._inputs], self.device, self.rules)
                for start in range(0, shape[0], rows)]

    def uses_svd(self, *, compression: bool = False) -> bool:
        """Whether the SVD-based methods treat this entry as a matrix (see :mod:`.entry_rules`)."""
        return self.rules.uses_svd(self.key, self.shape, compression=compression)

    @property
    def num_tasks(self) -> int:
        return len(self._inputs)

    @property
    def shape(self) -> torch.Size:
        return self.pretrained.shape

    @cached_property
    def changed(self) -> list[int]:
        """Tasks whose tensor differs from θ0 (checked without materializing any delta)."""
        return [i for i, ft in enumerate(self._inputs)
                if (not ft.is_zero() if isinstance(ft, LoRAFactors) else not torch.equal(ft, self.pretrained))]

    def delta(self, task: int) -> Tensor:
        """τ_task in float32 on the compute device."""
        value = self._inputs[task]
        if isinstance(value, LoRAFactors):
            return value.materialize(self.device)
        base = self.pretrained.to(self.device, torch.float32)
        return value.to(self.device, torch.float32) - base

    def each_delta(self) -> Iterator[Tensor]:
        """τ_1, ..., τ_T one at a time, each a fresh float32 tensor on the compute device (θ0 converted once): for
        methods that fold the tasks together without needing the [T, ...] stack of :meth:`deltas`."""
        base = self.pretrained.to(self.device, torch.float32)
        for finetuned in self._inputs:
            if isinstance(finetuned, LoRAFactors):
                yield finetuned.materialize(self.device)
            else:
                yield finetuned.to(self.device, torch.float32, copy=True).sub_(base)

    def deltas(self, tasks: Sequence[int] | None = None) -> Tensor:
        """Stack [len(tasks), *shape] of task vectors (all tasks by default)."""
        tasks = range(self.num_tasks) if tasks is None else tasks
        base = self.pretrained.to(self.device, torch.float32)
        out = torch.empty((len(tasks), *self.shape), device=self.device)
        for row, task in zip(out, tasks):
            value = self._inputs[task]
            if isinstance(value, LoRAFactors):
                row.copy_(value.materialize(self.device))
            else:
                torch.sub(value.to(self.device, torch.float32), base, out=row)
        return out


class TaskVectors:
    """θ0 and θ1..θT as lazily read mappings, validated to share keys and shapes.

    Every floating-point tensor is checked for NaN / ±inf the first time its entry is read (one cheap reduction,
    as the entries stream), so a diverged checkpoint is reported, naming its file and key, before anything is
    written.

    ``rules`` tells the SVD-based methods which entries are matrices (default: detected from the key names).
    In a merge split over several processes, ``own_keys`` are this process's entries (what :meth:`entries`
    streams) and ``collective`` sums the whole-model statistics over the processes.
    """

    def __init__(self, pretrained: Mapping[str, Tensor], finetuned: Sequence[Mapping[str, Tensor]],
                 names: Sequence[str] | None = None, device: torch.device | str = "cpu", *,
                 rules: EntryRules | None = None, own_keys: Sequence[str] | None = None,
                 collective: Collective | None = None) -> None:
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
        self.rules = rules if rules is not None else rules_for(self.keys)
        self.collective = collective or SingleProcess()
        if own_keys is not None:
            unknown = sorted(set(own_keys) - set(self.keys))
            if unknown:
                raise ValueError(f"own_keys names entries θ0 does not have: {unknown[:5]}")
            own = set(own_keys)
        self.own_keys = self.keys if own_keys is None else [k for k in self.keys if k in own]
        self._checked: set[str] = set()

    def shape(self, key: str) -> torch.Size:
        """θ0's shape of ``key``, without reading the tensor from a lazily opened file."""
        return self.pretrained.shape(key) if isinstance(self.pretrained, LazyStateDict) else self.pretrained[key].shape

    def dtype(self, key: str) -> torch.dtype:
        """θ0's dtype of ``key``, without reading the tensor from a lazily opened file."""
        return self.pretrained.dtype(key) if isinstance(self.pretrained, LazyStateDict) else self.pretrained[key].dtype

    def is_mergeable(self, key: str) -> bool:
        """Only floating-point entries have task vectors; integer buffers are copied from θ0."""
        return self.dtype(key).is_floating_point

    def reduce_sum(self, tensor: Tensor) -> Tensor:
        """``tensor`` summed over the processes of the merge (itself in a single process)."""
        return self.collective.all_reduce_sum(tensor)

    @property
    def num_tasks(self) -> int:
        return len(self.finetuned)

    def entry(self, key: str) -> TaskEntry:
        base = self.pretrained[key]
        entry = TaskEntry(key, base, [self._task_value(ft, key, base) for ft in self.finetuned], self.device,
                          self.rules)
        if key not in self._checked:
            self._check_finite(entry)
            self._checked.add(key)
        return entry

    @staticmethod
    def _task_value(finetuned: Mapping[str, Tensor], key: str, base: Tensor) -> Tensor | LoRAFactors:
        """A task's tensor of ``key``; for a LoRA adapter its factors, or θ0's own tensor (``base``, not read again)
        where the adapter leaves the entry alone."""
        if isinstance(finetuned, PeftAdapter):
            if not finetuned.changes(key):
                return base
            found = finetuned.factors(key)
            if found is not None:
                return found
        return finetuned[key]

    def _check_finite(self, entry: TaskEntry) -> None:
        check_finite(entry.pretrained, entry.key, self.pretrained_source)
        for value, source in zip(entry._inputs, self.sources):
            # LoRA factors and saved tensors are checked when the adapter is read; θ0's own tensor just above
            if isinstance(value, Tensor) and value is not entry.pretrained:
                check_finite(value, entry.key, source)

    def entries(self, description: str | None = None, *, progress: bool = False,
                only_mergeable: bool = True) -> Iterator[TaskEntry]:
        """This process's entries in sorted key order (the published flat order), with an optional tqdm bar."""
        keys = [k for k in self.own_keys if not only_mergeable or self.is_mergeable(k)]
        for key in tqdm(keys, desc=description, disable=not progress, unit="entry", leave=False):
            yield self.entry(key)

    def flat_offsets(self) -> dict[str, tuple[int, int]]:
        """Start and end of each entry (all entries, sorted keys) in the published flat mask order."""
        offsets, start = {}, 0
        for key in self.keys:
            end = start + self.shape(key).numel()
            offsets[key] = (start, end)
            start = end
        return offsets

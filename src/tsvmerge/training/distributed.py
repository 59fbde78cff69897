"""Processes, process groups and collectives for fine-tuning, on PyTorch's own distributed engine.

Three ways a fine-tuning process is started (:func:`detect_launch` tells them apart):

- ``python finetune.py`` (``--world-size 1``): one process, no process group, no DDP;
- ``python finetune.py --world-size N``: :func:`launch_local` spawns N local processes
  (``torch.multiprocessing``); the parent holds the rendezvous store (a ``TCPStore`` on a free loopback port, or
  ``--port``) so that no port can be taken between choosing and binding it;
- ``torchrun ... finetune.py`` (one node or many): each process reads ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` /
  ``MASTER_ADDR`` / ``MASTER_PORT`` from the environment torchrun (or Slurm + torchrun) prepared.

:func:`process_group` initializes the group (``nccl`` on CUDA, ``gloo`` on CPU) and always destroys it, also on
error. A failing rank ends the run: with ``--world-size`` the parent stops the other ranks and raises
:class:`DistributedRunError` naming the rank that failed first and its traceback (ranks that only failed because a
peer disappeared are reported as such); under torchrun its own agent does the same.

GPUs: rank ``i`` of a node uses ``cuda:<local rank>`` when it sees at least one GPU per local rank, and ``cuda:0``
when it sees exactly one (each rank given its own GPU, e.g. Slurm ``--gpus-per-task=1``); see :func:`select_device`.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..utils.device import device_scope

__all__ = [
    "DEFAULT_TIMEOUT",
    "DistContext",
    "DistributedRunError",
    "Launch",
    "detect_launch",
    "launch_local",
    "limit_cpu_threads",
    "process_group",
    "select_device",
]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)


class DistributedRunError(RuntimeError):
    """A rank of a multi-process run failed; the message names it and carries its traceback."""

    def __init__(self, message: str, rank: int | None = None) -> None:
        super().__init__(message)
        self.rank = rank


# ------------------------------------------------------------------------------------------------ launch kinds


@dataclass(frozen=True)
class Launch:
    """How this process was started: its rank and where the rendezvous is.

    ``kind``: ``single`` (no process group), ``spawn`` (``--world-size``: the parent's store at ``host:port``) or
    ``env`` (torchrun: ``env://``).
    """

    kind: str = "single"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    host: str = "127.0.0.1"
    port: int | None = None


def detect_launch(environ: Mapping[str, str] | None = None) -> Launch | None:
    """The torchrun (or any ``env://``-style launcher) environment of this process, or None when not launched so.

    The number of processes on this node is ``LOCAL_WORLD_SIZE`` (torchrun exports it); a launcher that does not
    export it is taken to run every rank on this node.
    """
    env = os.environ if environ is None else environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    try:
        rank, world_size = int(env["RANK"]), int(env["WORLD_SIZE"])
        local_rank = int(env.get("LOCAL_RANK", "0"))
        local_world_size = int(env.get("LOCAL_WORLD_SIZE", str(world_size)))
    except ValueError as exc:
        raise ValueError(f"malformed distributed environment (RANK / WORLD_SIZE / LOCAL_RANK): {exc}") from None
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is outside 0..WORLD_SIZE-1 (WORLD_SIZE={world_size})")
    if not 0 <= local_rank < local_world_size <= world_size:
        raise ValueError(f"LOCAL_RANK={local_rank} / LOCAL_WORLD_SIZE={local_world_size} do not fit WORLD_SIZE="
                         f"{world_size} (0 <= LOCAL_RANK < LOCAL_WORLD_SIZE <= WORLD_SIZE)")
    return Launch("env", rank, world_size, local_rank, local_world_size,
                  env.get("MASTER_ADDR", "127.0.0.1"), int(env["MASTER_PORT"]) if "MASTER_PORT" in env else None)


def select_device(choice: str, local_rank: int = 0, local_world_size: int = 1) -> torch.device:
    """The device of a rank: ``cpu``; ``cuda:<i>`` as given (one process per node); ``auto`` (CUDA when available) /
    ``cuda``: :func:`rank_gpu`."""
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(choice)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device={choice!r}: fine-tuning runs on cpu or cuda (auto | cpu | cuda | cuda:<i>)")
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        raise RuntimeError(f"--device={choice!r} was requested but CUDA is not available; use --device=cpu or auto")
    if device.index is not None:
        if local_world_size > 1:
            raise ValueError(f"--device={choice!r} names one GPU, but {local_world_size} processes run on this node; "
                             "use --device=cuda (rank i uses cuda:<local rank>) and CUDA_VISIBLE_DEVICES")
        return device
    return rank_gpu(local_rank, local_world_size, torch.cuda.device_count())


def rank_gpu(local_rank: int, local_world_size: int, visible: int) -> torch.device:
    """The GPU of local rank ``local_rank`` among ``local_world_size`` processes on a node, ``visible`` GPUs seen.

    ``cuda:<local rank>`` when the ranks share the node's GPUs (at least one per rank); ``cuda:0`` when this rank sees
    a single GPU: its own, the launcher having restricted ``CUDA_VISIBLE_DEVICES`` per rank (Slurm
    ``--gpus-per-task=1``).
    """
    if local_rank < visible and local_world_size <= visible:
        return torch.device("cuda", local_rank)
    if visible == 1:
        return torch.device("cuda", 0)
    raise RuntimeError(f"local rank {local_rank} of {local_world_size} process(es) on this node has no GPU of its "
                       f"own: {visible} GPU(s) are visible to it. Start at most one process per GPU (--world-size, "
                       "--nproc_per_node), or give each process exactly one visible GPU (CUDA_VISIBLE_DEVICES, "
                       "Slurm --gpus-per-task=1); LOCAL_WORLD_SIZE tells the processes per node")


# ----------------------------------------------------------------------------------------- the process group


@dataclass(frozen=True)
class DistContext:
    """This rank's view of the run: rank, world size, device, and the few collectives fine-tuning needs.

    With ``world_size == 1`` there is no process group and every collective is the identity.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, values: torch.Tensor | Sequence[float]) -> torch.Tensor:
        """Element-wise sum over the ranks (float64, on this rank's device for NCCL); returned on the CPU."""
        tensor = torch.as_tensor(values, dtype=torch.float64).detach().clone()
        if not self.distributed:
            return tensor.cpu()
        tensor = tensor.to(self.device if self.backend == "nccl" else "cpu")
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.cpu()

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """``obj`` of rank ``src`` on every rank (picklable objects; tensors come back on the CPU)."""
        if not self.distributed:
            return obj
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src, device=self.device if self.backend == "nccl" else None)
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


@contextlib.contextmanager
def process_group(launch: Launch, device: str = "auto",
                  timeout: datetime.timedelta = DEFAULT_TIMEOUT) -> Iterator[DistContext]:
    """This rank's context: its GPU made current (see :func:`tsvmerge.utils.device.device_scope`) and its process
    group initialized (``nccl`` on CUDA, ``gloo`` on CPU); the group is destroyed on exit, also on error."""
    chosen = select_device(device, launch.local_rank, launch.local_world_size)
    with device_scope(chosen) as dev:
        if launch.world_size == 1:
            yield DistContext(device=dev)
            return
        backend = "nccl" if dev.type == "cuda" else "gloo"
        _init_process_group(launch, backend, dev, timeout)
        try:
            yield DistContext(launch.rank, launch.world_size, launch.local_rank, launch.local_world_size, dev, backend)
        finally:
            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()


def _init_process_group(launch: Launch, backend: str, device: torch.device, timeout: datetime.timedelta) -> None:
    """Join the group; NCCL is bound to this rank's GPU (``device_id``), so collectives never guess it."""
    options: dict[str, Any] = {"device_id": device} if backend == "nccl" else {}
    if launch.kind == "spawn":
        if launch.port is None:
            raise ValueError("a spawned rank needs the port of the parent's store")
        store = dist.TCPStore(launch.host, launch.port, is_master=False, timeout=timeout)
        dist.init_process_group(backend, store=store, rank=launch.rank, world_size=launch.world_size,
                                timeout=timeout, **options)
    else:
        dist.init_process_group(backend, init_method="env://", rank=launch.rank, world_size=launch.world_size,
                                timeout=timeout, **options)


# --------------------------------------------------------------------------------------- local multi-process


def _communication_error(exc: BaseException) -> bool:
    """Whether ``exc`` is what a rank sees when a *peer* failed (connection lost, collective aborted)."""
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(marker in text for marker in (
        "Connection closed by peer", "Connection reset by peer", "remote worker", "NCCL communicator was aborted",
        "Broken pipe", "gloo/transport"))


class _Terminated(SystemExit):
    """SIGTERM from the launcher: unwind (finally blocks remove temporary files, tear the group down)."""


def install_termination_handler() -> None:
    """Turn SIGTERM into an exception so that a rank stopped by its launcher cleans up (main thread only)."""

    def handler(signum: int, frame: object) -> None:
        raise _Terminated(128 + signum)

    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def limit_cpu_threads(local_world_size: int) -> Iterator[int]:
    """Share the CPU cores among the local ranks (unless OMP_NUM_THREADS says otherwise) inside the block; the
    previous number of threads is restored after it. Yields the number of threads in use."""
    previous = torch.get_num_threads()
    if local_world_size > 1 and "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // local_world_size))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def _write_failure(folder: str, rank: int, exc: BaseException) -> None:
    record = {"rank": rank, "time": time.time(), "type": type(exc).__name__, "message": str(exc),
              "traceback": traceback.format_exc(), "communication": _communication_error(exc),
              "terminated": isinstance(exc, _Terminated), "host": socket.gethostname(), "pid": os.getpid()}
    with contextlib.suppress(OSError):
        Path(folder, f"rank{rank}.json").write_text(json.dumps(record))


def _spawn_entry(index: int, fn: Callable[..., Any], args: tuple[Any, ...], world_size: int, host: str, port: int,
                 failure_dir: str) -> None:
    """What each spawned process runs: ``fn(launch, *args)``, recording a failure for the parent."""
    install_termination_handler()
    launch = Launch("spawn", index, world_size, index, world_size, host, port)
    try:
        fn(launch, *args)
    except BaseException as exc:
        _write_failure(failure_dir, index, exc)
        raise


def _root_cause(failure_dir: Path, fallback: BaseException) -> DistributedRunError:
    records = []
    for path in failure_dir.glob("rank*.json"):
        with contextlib.suppress(OSError, ValueError):
            records.append(json.loads(path.read_text()))
    failed = getattr(fallback, "error_index", None)  # the process whose exit the launcher saw first
    if failed is not None and not any(r.get("rank") == failed for r in records):
        records.append({"rank": failed, "time": 0.0, "type": type(fallback).__name__,
                        "message": str(fallback).strip(), "communication": False, "terminated": False,
                        "traceback": "(none: the process ended without a Python exception, e.g. killed by a signal "
                                     "or by the out-of-memory killer)"})
    if not records:
        return DistributedRunError(f"a rank failed without reporting an error: {fallback}".strip())
    # The first rank that failed on its own is the cause; the others lost their peer (or were stopped).
    records.sort(key=lambda r: (r["terminated"], r["communication"], r["time"]))
    cause = records[0]
    others = [r for r in records[1:] if not r["terminated"]]
    lines = [f"rank {cause['rank']} failed: {cause['type']}: {cause['message']}"]
    if others:
        consequences = ", ".join(f"rank {r['rank']} ({r['type']})" for r in sorted(others, key=lambda r: r["rank"]))
        lines.append(f"then {consequences} failed as a consequence")
    lines.append("the other ranks were stopped (checkpoints are written atomically: none is left half-written).")
    lines.append(f"\ntraceback of rank {cause['rank']}:\n{cause['traceback'].rstrip()}")
    return DistributedRunError("\n".join(lines), rank=cause["rank"])


def launch_local(fn: Callable[..., Any], args: tuple[Any, ...], world_size: int, *, port: int | None = None,
                 host: str = "127.0.0.1", grace_period: float = 5.0,
                 timeout: datetime.timedelta = DEFAULT_TIMEOUT) -> None:
    """Run ``fn(launch, *args)`` in ``world_size`` spawned processes on this machine; return when all succeeded.

    ``fn`` must be importable (a module-level function). The parent creates the rendezvous ``TCPStore`` on
    ``host:port`` (a free port when None) and keeps it for the lifetime of the run. If a rank fails, the others are
    stopped (after ``grace_period`` seconds, SIGTERM then SIGKILL) and :class:`DistributedRunError` is raised.
    """
    import torch.multiprocessing as mp

    if world_size < 1:
        raise ValueError(f"--world-size must be >= 1, got {world_size}")
    try:
        store = dist.TCPStore(host, port or 0, None, is_master=True, wait_for_workers=False, timeout=timeout)
    except (RuntimeError, OSError) as exc:
        raise DistributedRunError(f"cannot open the rendezvous store on {host}:{port or 0} ({exc}); "
                                  "choose another --port or leave it unset for a free one") from None
    with tempfile.TemporaryDirectory(prefix="tsvmerge_ranks_") as failure_dir:
        context = mp.start_processes(_spawn_entry, args=(fn, args, world_size, host, store.port, failure_dir),
                                     nprocs=world_size, join=False, start_method="spawn")
        try:
            while not context.join(grace_period=grace_period):
                pass
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
            raise _root_cause(Path(failure_dir), exc) from None
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.terminate()
            for process in context.processes:
                process.join(grace_period)
                if process.is_alive():
                    process.kill()
                    process.join()
            del store
    if sys.stderr:
        sys.stderr.flush()

"""Reading an offline wandb run back: its ``run-<id>.wandb`` file holds the config, history and summary.

wandb 0.31 writes no ``files/config.yaml`` or ``files/wandb-summary.json`` for offline runs and ships no reader of
its transaction log, so this helper parses the log itself: a 7-byte header (``:W&B``, magic 0xBEE1, version),
then records in LevelDB's log framing (32 KiB blocks; each chunk a 7-byte header: CRC32, length, type FULL / FIRST /
MIDDLE / LAST), each record a ``wandb_internal_pb2.Record`` protobuf - wandb's own message, decoded by wandb's own
generated code. Tables logged by the run are JSON files under ``files/media/table/``.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BLOCK = 32768
HEADER = struct.Struct("<4sHB")
CHUNK = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    folder: Path
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def table(self, key: str) -> dict[str, Any]:
        """The JSON of the table logged under ``key`` (its file name starts with the key, '/' as '_')."""
        stem = key.replace("/", "_")
        files = sorted((self.folder / "files" / "media" / "table").rglob("*.table.json"))
        matches = [p for p in files if p.name.startswith(stem + "_") or str(p.relative_to(
            self.folder / "files" / "media" / "table")).startswith(key + "_")]
        assert len(matches) == 1, (key, files)
        return json.loads(matches[0].read_text())


def _records(raw: bytes) -> list[bytes]:
    ident, magic, _ = HEADER.unpack_from(raw, 0)
    assert ident == b":W&B" and magic == 0xBEE1, "not a wandb transaction log"
    pos, pending, out = HEADER.size, b"", []
    while pos + CHUNK.size <= len(raw):
        left = BLOCK - pos % BLOCK
        if left < CHUNK.size:  # the block's tail is padding
            pos += left
            continue
        _, length, kind = CHUNK.unpack_from(raw, pos)
        if kind == 0 and length == 0:  # zero-filled rest of a block
            pos += left
            continue
        data = raw[pos + CHUNK.size:pos + CHUNK.size + length]
        pos += CHUNK.size + length
        pending = data if kind in (FULL, FIRST) else pending + data
        if kind in (FULL, LAST):
            out.append(pending)
            pending = b""
    return out


def _key(item: Any) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def read_offline_run(folder: Path) -> OfflineRun:
    """The config (from the run record and config updates), the history rows and the final summary values."""
    from wandb.proto import wandb_internal_pb2 as pb

    (log_file,) = folder.glob("run-*.wandb")
    run = OfflineRun(folder)
    for data in _records(log_file.read_bytes()):
        record = pb.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.config.update({_key(u): json.loads(u.value_json) for u in record.run.config.update})
        elif kind == "config":
            run.config.update({_key(u): json.loads(u.value_json) for u in record.config.update})
        elif kind == "history":
            run.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            run.summary.update({_key(u): json.loads(u.value_json) for u in record.summary.update})
    return run

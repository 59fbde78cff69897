"""The streamed safetensors writer produces the file safetensors itself writes, and refuses out-of-plan tensors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tsvmerge.checkpoints.safetensors_stream import SafetensorsStreamWriter


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(5, 3, generator=g).to(torch.bfloat16), "b.bias": torch.randn(7, generator=g),
            "c.ids": torch.arange(4), "d.scalar": torch.tensor(2.5, dtype=torch.float16),
            "e.mask": torch.tensor([True, False, True]), "f.empty": torch.zeros(0, 4)}


def test_same_bytes_as_save_file(tmp_path: Path) -> None:
    tensors = _tensors()
    ours, theirs = tmp_path / "ours.safetensors", tmp_path / "theirs.safetensors"
    layout = [(k, tuple(v.shape), v.dtype) for k, v in sorted(tensors.items())]
    with SafetensorsStreamWriter(ours, layout, {"format": "pt"}) as writer:
        for key, _, _ in layout:
            writer.write(key, tensors[key])
    save_file(tensors, str(theirs), metadata={"format": "pt"})
    with safe_open(str(ours), "pt") as f, safe_open(str(theirs), "pt") as g:
        assert f.metadata() == g.metadata() == {"format": "pt"}
        assert set(f.keys()) == set(g.keys()) == set(tensors)
        for key in tensors:
            assert torch.equal(f.get_tensor(key), g.get_tensor(key)) and f.get_tensor(key).dtype == tensors[key].dtype


def test_out_of_plan_and_incomplete_files_are_errors(tmp_path: Path) -> None:
    layout = [("x", (2,), torch.float32), ("y", (3,), torch.float32)]
    with pytest.raises(ValueError, match="expected x"):
        with SafetensorsStreamWriter(tmp_path / "a.safetensors", layout) as writer:
            writer.write("y", torch.zeros(3))
    with pytest.raises(ValueError, match=r"expected x \[2\] torch.float32, got x \[2\] torch.float64"):
        with SafetensorsStreamWriter(tmp_path / "b.safetensors", layout) as writer:
            writer.write("x", torch.zeros(2, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="1 tensor\\(s\\) not written, from y"):
        with SafetensorsStreamWriter(tmp_path / "c.safetensors", layout) as writer:
            writer.write("x", torch.zeros(2))

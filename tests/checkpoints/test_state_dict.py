"""Lazy state-dict files, safetensors/.pt round trips, compatibility checks."""

import pickle
from pathlib import Path

import pytest
import torch

from tsvmerge.checkpoints import (
    CHECKPOINT_HELP,
    CheckpointFormatError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    LazyStateDict,
    check_compatible,
    open_state_dict,
    save_state_dict,
)

PUBLISHED_TEXT_KEYS = {
    "model.token_embedding.weight",
    "model.positional_embedding",
    "model.ln_final.weight",
    "model.ln_final.bias",
    "model.text_projection",
    "model.logit_scale",
}


class _Encoder(torch.nn.Module):
    """The published wrapper: the CLIP model as attribute ``model``."""

    def __init__(self, model):
        super().__init__()
        self.model = model


@pytest.fixture(scope="module")
def vit_b32(tmp_path_factory):
    """A random-weight ViT-B-32 state dict with the published keys, and its torch.save file (~450 MB)."""
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    encoder = _Encoder(open_clip.create_model("ViT-B-32", pretrained=None))
    del encoder.model.transformer
    state = {k: v.detach() for k, v in encoder.state_dict().items()}
    path = tmp_path_factory.mktemp("vitb32") / "nonlinear_finetuned.pt"
    torch.save(state, path)
    return state, path


def _rss_anon_kib():
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _mapped_ranges(path):
    """Address ranges where ``path`` is memory-mapped in this process (Linux /proc/self/maps)."""
    target = str(Path(path).resolve())
    ranges = []
    with open("/proc/self/maps") as fh:
        for line in fh:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].strip() == target:
                start, end = (int(x, 16) for x in fields[0].split("-"))
                ranges.append((start, end))
    return ranges


def test_published_key_names(vit_b32):
    state, _ = vit_b32
    keys = set(state)
    assert PUBLISHED_TEXT_KEYS <= keys
    assert all(k.startswith("model.visual.") for k in keys - PUBLISHED_TEXT_KEYS)
    assert "model.visual.conv1.weight" in keys


def test_lazy_open_is_exact_and_file_backed(vit_b32):
    state, path = vit_b32
    if _rss_anon_kib() is None:
        pytest.skip("needs Linux /proc/self/status and /proc/self/maps")
    before = _rss_anon_kib()
    lazy = open_state_dict(path)
    assert isinstance(lazy, LazyStateDict) and lazy.file_backed and lazy.path == Path(path)
    assert list(lazy) == list(state) and len(lazy) == len(state)
    ranges = _mapped_ranges(path)
    assert ranges, "the checkpoint is not memory-mapped"
    for key, value in state.items():
        assert lazy.shape(key) == value.shape and lazy.dtype(key) == value.dtype
        tensor = lazy[key]
        assert torch.equal(tensor, value), key
        # The tensor's bytes are the file's pages, not a copy on the heap.
        ptr, nbytes = tensor.data_ptr(), tensor.numel() * tensor.element_size()
        assert any(lo <= ptr and ptr + nbytes <= hi for lo, hi in ranges), key
    # Every byte was read, yet anonymous memory barely moved (a copy would add ~450 MB).
    assert Path(path).stat().st_size > 400 * 2**20
    assert (_rss_anon_kib() - before) / 1024 < 64
    del tensor, lazy


def test_missing_file_error_explains_how_to_get_checkpoints(tmp_path):
    missing = tmp_path / "ViT-B-32" / "MNISTVal" / "nonlinear_finetuned.pt"
    with pytest.raises(CheckpointNotFoundError) as info:
        open_state_dict(missing)
    assert isinstance(info.value, FileNotFoundError)
    assert str(missing) in str(info.value) and CHECKPOINT_HELP in str(info.value)


def _small_state():
    torch.manual_seed(1)
    base = torch.randn(6, 4)
    return {
        "a.weight": base,
        "a.view": base[:, 1],  # non-contiguous view sharing storage with a.weight
        "b.bias": torch.randn(3, dtype=torch.bfloat16),
        "c.count": torch.tensor(7, dtype=torch.int64),
        "d.empty": torch.zeros(0, 5),
    }


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_round_trip(tmp_path, suffix):
    state = _small_state()
    path = tmp_path / "out" / f"sd{suffix}"
    save_state_dict(state, path)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left behind
    with open_state_dict(path) as lazy:
        assert set(lazy) == set(state)
        for key, value in state.items():
            assert lazy.shape(key) == value.shape and lazy.dtype(key) == value.dtype
            assert torch.equal(lazy[key], value)
        with pytest.raises(KeyError, match="nope"):
            lazy["nope"]


def test_save_overwrites_atomically(tmp_path):
    path = tmp_path / "sd.safetensors"
    save_state_dict({"x": torch.zeros(2)}, path)
    save_state_dict({"x": torch.ones(2)}, path)
    assert torch.equal(open_state_dict(path)["x"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["sd.safetensors"]


def test_save_rejects_non_tensors(tmp_path):
    with pytest.raises(TypeError, match="bad"):
        save_state_dict({"bad": 3}, tmp_path / "sd.pt")
    assert not any(tmp_path.iterdir())


def test_legacy_torch_and_plain_pickle_files_load_with_warning(tmp_path):
    state = {"w": torch.randn(3, 2), "b": torch.randn(3)}
    legacy, plain = tmp_path / "legacy.pt", tmp_path / "plain.pt"
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    with open(plain, "wb") as fh:
        pickle.dump(state, fh)
    for path in (legacy, plain):
        with pytest.warns(UserWarning, match="cannot be memory-mapped"):
            lazy = open_state_dict(path)
        assert not lazy.file_backed
        assert all(torch.equal(lazy[k], v) for k, v in state.items())


def test_nested_training_checkpoint_is_explained(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "state_dict": {"w": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointFormatError, match="nested under 'state_dict'"):
        open_state_dict(path)
    torch.save({"w": torch.zeros(1), "step": 5}, path)
    with pytest.raises(CheckpointFormatError, match=r"step \(int\)"):
        open_state_dict(path)


def test_mismatch_error_names_files_keys_and_shapes(tmp_path):
    ref = {"model.a": torch.zeros(4, 3), "model.b": torch.zeros(3), "model.c": torch.zeros(2)}
    good = {k: v.clone() for k, v in ref.items()}
    bad = {"model.a": torch.zeros(4, 5), "model.b": torch.zeros(3), "model.extra": torch.zeros(1)}
    path = tmp_path / "bad.safetensors"
    save_state_dict(bad, path)
    check_compatible(ref, [good], ["good.pt"])
    with pytest.raises(CheckpointMismatchError) as info:
        check_compatible(ref, [good, open_state_dict(path)], ["good.pt", str(path)])
    msg = str(info.value)
    assert str(path) in msg and "good.pt" not in msg
    assert "model.c" in msg and "model.extra" in msg
    assert "model.a" in msg and "[4, 5]" in msg and "[4, 3]" in msg
    assert isinstance(info.value, ValueError)


def test_mismatch_error_truncates_long_key_lists():
    ref = {f"k{i:03d}": torch.zeros(1) for i in range(50)}
    with pytest.raises(CheckpointMismatchError) as info:
        check_compatible(ref, [{}], ["empty.pt"])
    assert "50 missing keys" in str(info.value) and "and 40 more" in str(info.value)

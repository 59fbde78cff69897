"""TALL mask files: published format, restricted unpickling."""

import os

import numpy as np
import pytest

from tsvmerge.checkpoints import UnsafeCheckpointError, load_tall_masks, save_tall_masks


def _masks(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    return {name: rng.random(n) > 0.5 for name in ("MNIST", "DTD", "Cars")}


def test_round_trip_and_no_temp_files(tmp_path):
    masks = _masks()
    path = tmp_path / "tall_masks" / "ViT-B-32" / "TALL_mask_3task.npy"
    save_tall_masks(path, masks)
    names = sorted(p.name for p in path.parent.iterdir())
    assert names in ([path.name], [path.name, path.name + ".json"])  # the mask file and, beside it, its record
    loaded = load_tall_masks(path, num_entries=1000)
    assert loaded.keys() == masks.keys()
    for name, mask in masks.items():
        assert loaded[name].dtype == np.bool_
        np.testing.assert_array_equal(loaded[name], mask)


def test_file_is_the_published_np_save_of_packbits(tmp_path):
    masks = _masks(n=37)
    ours, theirs = tmp_path / "ours.npy", tmp_path / "theirs.npy"
    save_tall_masks(ours, masks)
    np.save(theirs, {k: np.packbits(v) for k, v in masks.items()})
    assert ours.read_bytes() == theirs.read_bytes()
    # The published reader's view of our file.
    published = np.load(ours, allow_pickle=True).item()
    for name, mask in masks.items():
        np.testing.assert_array_equal(np.unpackbits(published[name])[:37].astype(bool), mask)
    # Our reader on the published file; without num_entries the padding bits are kept.
    loaded = load_tall_masks(theirs)
    assert all(v.size == 40 for v in loaded.values())
    np.testing.assert_array_equal(load_tall_masks(theirs, 37)["DTD"], masks["DTD"])


def test_wrong_model_size_is_reported(tmp_path):
    path = tmp_path / "m.npy"
    save_tall_masks(path, _masks(n=100))
    with pytest.raises(ValueError, match="another model"):
        load_tall_masks(path, num_entries=1000)


def test_save_rejects_non_flat_bool(tmp_path):
    with pytest.raises(TypeError):
        save_tall_masks(tmp_path / "m.npy", {"MNIST": np.zeros(8, dtype=np.uint8)})
    with pytest.raises(TypeError):
        save_tall_masks(tmp_path / "m.npy", {"MNIST": np.zeros((2, 4), dtype=bool)})


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_forbidden_global_in_payload_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npy"
    np.save(path, {"MNIST": np.packbits(np.ones(8, bool)), "x": _Evil(marker)}, allow_pickle=True)
    with pytest.raises(UnsafeCheckpointError, match="system") as info:
        load_tall_masks(path)
    assert info.value.global_name in ("posix.system", "nt.system")
    assert not marker.exists()


def test_object_array_from_raw_bytes_is_refused(tmp_path):
    # Hand-written payload: an object-dtype array whose state is raw bytes (would forge PyObject pointers).
    class Forged:
        def __reduce__(self):
            from numpy._core.multiarray import _reconstruct

            return (_reconstruct, (np.ndarray, (0,), b"b"), (1, (1,), np.dtype(object), False, b"\x41" * 8))

    path = tmp_path / "forged.npy"
    np.save(path, {"MNIST": Forged()}, allow_pickle=True)
    with pytest.raises(ValueError, match="corrupt TALL mask payload"):  # numpy: "object pickle not returning list"
        load_tall_masks(path)


def test_plain_array_is_not_a_mask_file(tmp_path):
    path = tmp_path / "plain.npy"
    np.save(path, np.ones(16, dtype=bool))
    with pytest.raises(ValueError, match="not a TALL mask file"):
        load_tall_masks(path)

"""Published checkpoint layout (SPEC §1)."""

from pathlib import Path

import pytest

from tsvmerge.checkpoints import (
    CHECKPOINT_HELP,
    CheckpointNotFoundError,
    find_zeroshot_checkpoint,
    finetuned_checkpoint_path,
    head_path,
    single_task_accuracy_path,
    tall_mask_paths,
    zeroshot_checkpoint_path,
)
from tsvmerge.utils.files import atomic_write


@pytest.mark.parametrize("dataset", ["MNIST", "MNISTVal"])
def test_checkpoint_paths_accept_val_suffix(dataset):
    root = "models/checkpoints"
    assert finetuned_checkpoint_path(root, "ViT-B-32", dataset) == Path(
        "models/checkpoints/ViT-B-32/MNISTVal/nonlinear_finetuned.pt"
    )
    assert zeroshot_checkpoint_path(root, "ViT-B-32", dataset) == Path(
        "models/checkpoints/ViT-B-32/MNISTVal/nonlinear_zeroshot.pt"
    )
    assert head_path(root, "ViT-B-32", dataset) == Path("models/checkpoints/ViT-B-32/head_MNISTVal.pt")


def test_zeroshot_defaults_to_mnist():
    assert zeroshot_checkpoint_path("m", "ViT-L-14") == Path("m/ViT-L-14/MNISTVal/nonlinear_zeroshot.pt")


def test_tall_mask_paths():
    assert tall_mask_paths("/data/models/checkpoints", "ViT-B-32", 8) == [
        Path("/data/models/tall_masks/ViT-B-32/TALL_mask_8task.npy")
    ]
    assert tall_mask_paths("models/checkpoints", "ViT-B-16", 14, use_ties=True, ties_agg="sum") == [
        Path("models/tall_masks/ViT-B-16/TALL_mask_14task_use_ties_sum.npy"),
        Path("models/tall_masks/ViT-B-16/TALL_mask_14task_use_ties.npy"),
    ]


def test_single_task_accuracy_path():
    assert single_task_accuracy_path("results", "ViT-B-32") == Path(
        "results/single_task/ViT-B-32/nonlinear_ft_accuracies.json"
    )


@pytest.mark.parametrize("bad", ["", "..", "a/b"])
def test_rejects_names_that_escape_the_layout(bad):
    with pytest.raises(ValueError):
        finetuned_checkpoint_path("m", bad, "MNIST")
    with pytest.raises(ValueError):
        head_path("m", "ViT-B-32", bad)


def test_help_mentions_all_ways_to_get_checkpoints():
    for needle in ("nik-dim/tall_masks", "single_task/<model>/<Dataset>Val", "make demo"):
        assert needle in CHECKPOINT_HELP
    assert issubclass(CheckpointNotFoundError, FileNotFoundError)


def test_atomic_write_failure_keeps_old_file_and_no_temp(tmp_path):
    target = tmp_path / "sub" / "f.bin"
    atomic_write(target, lambda tmp: tmp.write_bytes(b"old"))

    def broken(tmp):
        tmp.write_bytes(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old"
    assert [p.name for p in target.parent.iterdir()] == ["f.bin"]


def test_zeroshot_checkpoint_prefers_mnist_then_any_task(tmp_path: Path) -> None:
    # Nothing on disk: the path to report is MNISTVal's when MNIST is a task (the published convention)...
    assert find_zeroshot_checkpoint(tmp_path, "m", ["Cars", "MNIST"]) == zeroshot_checkpoint_path(tmp_path, "m")
    # ... else the first task's (a model whose benchmark has no MNIST, like the demo).
    assert find_zeroshot_checkpoint(tmp_path, "m", ["Digits", "Shapes"]) == zeroshot_checkpoint_path(
        tmp_path, "m", "Digits")
    shapes = zeroshot_checkpoint_path(tmp_path, "m", "Shapes")
    shapes.parent.mkdir(parents=True)
    shapes.write_bytes(b"x")
    assert find_zeroshot_checkpoint(tmp_path, "m", ["Digits", "Shapes"]) == shapes  # any existing copy serves
    mnist = zeroshot_checkpoint_path(tmp_path, "m")
    mnist.parent.mkdir(parents=True)
    mnist.write_bytes(b"x")
    assert find_zeroshot_checkpoint(tmp_path, "m", ["Digits", "Shapes"]) == mnist

"""The generated demo tasks: deterministic, cached atomically, class-balanced, registered, and actually informative."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from tsvmerge.data import REGISTRY, class_synonyms, classnames, get_dataset, templates
from tsvmerge.data.datasets import synthetic, synthetic_images
from tsvmerge.data.datasets.synthetic import (
    GENERATOR_VERSION,
    IMAGE_SIZE,
    SPLIT_SIZES,
    SYNTHETIC_TASKS,
    cache_path,
    generate_all,
    generate_split,
    load_split,
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every split of every task, generated once into a fresh data location (about 2 s)."""
    root = tmp_path_factory.mktemp("synthetic_location")
    generate_all(root, disable=True)
    return root


def test_the_eight_tasks() -> None:
    assert SYNTHETIC_TASKS == ("Digits", "Letters", "Shapes", "Colors", "Stripes", "Counting", "Position", "Sizes")
    assert dict(SPLIT_SIZES) == {"train": 1000, "val": 200, "test": 500, "pretrain": 1000}


def test_generation_is_deterministic_and_splits_differ() -> None:
    images, labels = generate_split("Counting", "val")
    generate_split("Shapes", "val")  # generating something else first changes nothing
    again, again_labels = generate_split("Counting", "val")
    assert images.tobytes() == again.tobytes() and labels.tobytes() == again_labels.tobytes()
    test_images, _ = generate_split("Counting", "test")
    assert not np.array_equal(images, test_images[: len(images)])
    other, _ = generate_split("Sizes", "val")
    assert not np.array_equal(images, other)


def test_all_splits_have_the_right_shape_and_are_balanced(built: Path) -> None:
    for name in SYNTHETIC_TASKS:
        for split, n in SPLIT_SIZES.items():
            assert cache_path(built, name, split).is_file()
            images, labels = load_split(built, name, split)
            assert images.shape == (n, IMAGE_SIZE, IMAGE_SIZE, 3) and images.dtype == np.uint8
            assert labels.shape == (n,) and labels.dtype == np.int64
            assert labels.min() == 0 and labels.max() == 9
            assert np.bincount(labels, minlength=10).tolist() == [n // 10] * 10
            assert images.std() > 10  # noisy backgrounds, not blank images
    pretrain, _ = load_split(built, "Digits", "pretrain")
    train, _ = load_split(built, "Digits", "train")
    assert not np.array_equal(pretrain, train)
    assert not list(built.rglob("*.tmp"))


def test_cache_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, labels = load_split(tmp_path, "Letters", "val")
    path = tmp_path / "synthetic" / "Letters" / "val.npz"
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["val.npz"]
    mtime = path.stat().st_mtime_ns

    def fail(*args: object) -> None:
        raise AssertionError("regenerated although cached")

    monkeypatch.setattr(synthetic, "generate_split", fail)
    cached, cached_labels = load_split(tmp_path, "Letters", "val")
    assert np.array_equal(cached, images) and np.array_equal(cached_labels, labels)
    assert path.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("stale", ["old_version", "corrupt", "wrong_size"])
def test_stale_or_broken_cache_is_regenerated(tmp_path: Path, stale: str) -> None:
    path = cache_path(tmp_path, "Sizes", "val")
    path.parent.mkdir(parents=True)
    zeros = np.zeros((200, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    if stale == "old_version":
        np.savez(path, images=zeros, labels=np.zeros(200, np.int64), version=np.int64(GENERATOR_VERSION - 1))
    elif stale == "corrupt":
        path.write_bytes(b"not an npz file")
    else:
        np.savez(path, images=zeros[:10], labels=np.zeros(10, np.int64), version=np.int64(GENERATOR_VERSION))
    images, labels = load_split(tmp_path, "Sizes", "val")
    expected, expected_labels = generate_split("Sizes", "val")
    assert np.array_equal(images, expected) and np.array_equal(labels, expected_labels)
    with np.load(path) as data:
        assert int(data["version"]) == GENERATOR_VERSION and np.array_equal(data["images"], expected)


def test_unknown_task_or_split(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Unknown synthetic task"):
        load_split(tmp_path, "MNIST", "train")
    with pytest.raises(ValueError, match="Unknown split"):
        generate_split("Digits", "holdout")


def test_registered_with_their_own_val_split(built: Path) -> None:
    for name in SYNTHETIC_TASKS:
        assert REGISTRY[name].has_val and list(REGISTRY[name].paths(built, "train")) == []

    val = get_dataset("DigitsVal", T.ToTensor(), built, num_workers=0)
    assert len(val.train_dataset) == 1000 and len(val.test_dataset) == 200
    assert val.test_dataset.targets == load_split(built, "Digits", "val")[1].tolist()
    assert val.train_dataset.targets == load_split(built, "Digits", "train")[1].tolist()
    assert val.classnames == [str(i) for i in range(10)]
    image, label = val.test_dataset[3]
    assert isinstance(image, torch.Tensor) and image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert type(label) is int and label == val.test_dataset.targets[3]
    raw = load_split(built, "Digits", "val")[0][3]
    assert torch.equal((image * 255).round().to(torch.uint8), torch.from_numpy(raw).permute(2, 0, 1))

    test = get_dataset("Digits", T.ToTensor(), built, num_workers=0)
    assert len(test.test_dataset) == 500
    assert test.test_dataset.targets == load_split(built, "Digits", "test")[1].tolist()
    assert test.test_dataset.classes == classnames("Digits")


def test_generated_on_first_access(tmp_path: Path) -> None:
    task = get_dataset("ColorsVal", None, tmp_path, num_workers=0)
    image, label = task.test_dataset[0]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (32, 32)
    assert cache_path(tmp_path, "Colors", "val").is_file() and not cache_path(tmp_path, "Colors", "test").exists()
    assert os.listdir(tmp_path / "synthetic") == ["Colors"]


def test_templates_and_classnames() -> None:
    assert classnames("Shapes") == list(synthetic.SYNTHETIC_CLASSNAMES["Shapes"]) and len(classnames("Shapes")) == 10
    assert class_synonyms("ShapesVal")[0] == ["circle"]
    prompts = set()
    for name in SYNTHETIC_TASKS:
        names, ts = classnames(name), templates(name + "Val")
        assert len(names) == len(set(names)) == 10 and 2 <= len(ts) <= 4 and all("{}" in t for t in ts)
        task_prompts = {t.format(c) for t in ts for c in names}
        assert len(task_prompts) == len(ts) * 10 and prompts.isdisjoint(task_prompts)
        prompts |= task_prompts
    assert classnames("Counting")[0] == "one" and classnames("Stripes")[1] == "18 degrees"
    assert classnames("Position")[0] == "top far left" and classnames("Sizes")[-1] == "huge"


def _softmax_regression_accuracy(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> float:
    """Multinomial logistic regression on standardized raw pixels (2×2-averaged, for speed), full-batch gradient
    descent."""

    def features(images: np.ndarray) -> np.ndarray:
        pooled = (images.astype(np.float32) / 255.0).reshape(len(images), 16, 2, 16, 2, 3).mean((2, 4))
        return pooled.reshape(len(images), -1)

    x, y, x_test = features(train[0]), train[1], features(test[0])
    mean, std = x.mean(0), x.std(0) + 1e-6
    x, x_test = (x - mean) / std, (x_test - mean) / std
    w, b = np.zeros((x.shape[1], 10), np.float32), np.zeros(10, np.float32)
    onehot = np.eye(10, dtype=np.float32)[y]
    step = 0.5 / np.sqrt(x.shape[1])
    for _ in range(200):
        z = x @ w + b
        p = np.exp(z - z.max(1, keepdims=True))
        grad = (p / p.sum(1, keepdims=True) - onehot) / len(x)
        w -= step * (x.T @ grad + 1e-3 * w)
        b -= 0.5 * grad.sum(0)
    return float(((x_test @ w + b).argmax(1) == test[1]).mean())


@pytest.mark.parametrize("name", ["Colors", "Position", "Sizes"])
def test_labels_are_visible_in_the_pixels(built: Path, name: str) -> None:
    # Catches a generator whose images do not depend on the label (chance = 10%); see docs/data.md for the rest.
    accuracy = _softmax_regression_accuracy(load_split(built, name, "train"), load_split(built, name, "test"))
    assert accuracy >= 0.3


def _pooled(images: np.ndarray) -> np.ndarray:
    """4x4-pooled colours divided by their mean: the pattern and hue of a background, whatever its brightness."""
    pooled = images.reshape(len(images), 8, 4, 8, 4, 3).mean((2, 4)).reshape(len(images), -1)
    return pooled / pooled.mean(1, keepdims=True)


def test_each_domain_has_its_own_look_and_none_is_a_colors_class() -> None:
    rng = np.random.default_rng(0)
    train = {d: _pooled(synthetic_images._domain_backgrounds(d, rng, 100)) for d in synthetic_images.DOMAINS}
    centroids = np.stack([train[d].mean(0) for d in synthetic_images.DOMAINS])
    for i, domain in enumerate(synthetic_images.DOMAINS):
        backgrounds = synthetic_images._domain_backgrounds(domain, rng, 100)
        assert backgrounds.shape == (100, IMAGE_SIZE, IMAGE_SIZE, 3) and backgrounds.dtype == np.float32
        nearest = ((_pooled(backgrounds)[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
        assert (nearest == i).mean() >= 0.85, domain  # measured: 0.88 (plain) to 1.0
        # Dark enough for any bright object to stand out, and far from every named colour of the Colors task.
        mean = backgrounds.reshape(-1, 3).mean(0)
        assert mean.max() < 110
        assert np.linalg.norm(synthetic_images._PALETTE - mean, axis=1).min() > 60
    with pytest.raises(ValueError, match="unknown domain"):
        synthetic_images._domain_backgrounds("marble", rng, 1)


def test_every_task_draws_on_its_own_domain(monkeypatch: pytest.MonkeyPatch) -> None:
    used: list[str] = []
    original = synthetic_images._domain_backgrounds

    def spy(domain: str, rng: np.random.Generator, n: int) -> np.ndarray:
        used.append(domain)
        return original(domain, rng, n)

    monkeypatch.setattr(synthetic_images, "_domain_backgrounds", spy)
    for name in SYNTHETIC_TASKS:
        generate_split(name, "val")
        assert used[-1] == synthetic_images.TASK_DOMAINS[name]
    assert sorted(synthetic_images.TASK_DOMAINS) == sorted(SYNTHETIC_TASKS)
    assert len(set(synthetic_images.DOMAINS)) == len(SYNTHETIC_TASKS)

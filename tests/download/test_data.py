"""``tsvmerge download data`` end to end, offline: local copies of the 20 hub mirrors (parquet in the mirrors'
schemas, a few tiny images per class) -> ``download data`` -> the project's 20 loaders.

Every image encodes its mirror label and mirror split in its pixels, so the tests check, through ``get_dataset``,
that each image lands in the right split and that its label is the published class of the mirror's label.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tsvmerge.cli import main as cli_main
from tsvmerge.data.datasets.hub import MARKER, hub_folder, read_marker
from tsvmerge.data.registry import BENCHMARK_DATASETS, REGISTRY, get_dataset
from tsvmerge.data.splits import val_size
from tsvmerge.data.templates import classnames, rule_classnames
from tsvmerge.download import data as dl
from tsvmerge.download.mirrors import EUROSAT_FOLDERS, EXPECTED_SIZES, MIRRORS, NUM_CLASSES, Mirror
from tsvmerge.evaluation.preflight import dataset_problems

datasets = pytest.importorskip("datasets")

PER_CLASS = {"train": 2, "test": 1, "validation": 1, "contrast": 1}
SPLIT_CODE = {"train": 10, "test": 20, "validation": 30, "contrast": 40}  # blue channel of every fixture image


# ------------------------------------------------------------------------------------ mirror-format class names


def mirror_names(name: str) -> list[str] | None:
    """Class names as the mirror spells them, in the mirror's label order (None: plain integer labels).

    'sorted' datasets get a deliberately unsorted order, so that the label remapping is exercised.
    """
    n = NUM_CLASSES[name]
    if name in ("EMNIST", "FER2013"):
        return None
    if name == "EuroSAT":  # the mirror spells the published names; reversed order
        return rule_classnames("EuroSAT", list(EUROSAT_FOLDERS))[::-1]
    if name in ("MNIST", "SVHN"):
        return [str(i) for i in range(10)]
    if name == "RESISC45":
        return [c.replace(" ", "_") for c in classnames("RESISC45")][::-1]
    if name == "RenderedSST2":
        return ["negative", "positive"]
    if name == "SUN397":
        return [f"scene {i:03d} indoor" for i in range(n)][::-1]
    if name == "OxfordIIITPet":
        return [f"breed_{chr(97 + i % 26)}{i:02d}" for i in range(n)]
    if name in ("CIFAR100", "Food101"):
        return [f"thing {i:03d}" for i in range(n)][::-1]
    if name == "DTD":
        return [f"texture-{i:02d}" for i in range(n)][::-1]
    return [f"{name.lower()} class {i}" for i in range(n)]


def expected_class_name(name: str, mirror_label: int) -> str:
    """The published class name the image of ``mirror_label`` must carry, computed independently of the code."""
    names = mirror_names(name)
    if names is None or name not in ("EuroSAT", "RESISC45", "SUN397", "CIFAR100", "Food101", "DTD",
                                     "OxfordIIITPet", "Cars", "STL10"):
        # Names listed in the json / torchvision constants: the mirror's label order is the published order.
        return classnames(name)[mirror_label]
    m = names[mirror_label]
    return {
        "EuroSAT": lambda: m,
        "RESISC45": lambda: m.replace("_", " "),
        "SUN397": lambda: m,
        "CIFAR100": lambda: m.replace(" ", "_"),
        "Food101": lambda: m.replace(" ", "_"),
        "DTD": lambda: m,
        "OxfordIIITPet": lambda: " ".join(p.title() for p in m.split("_")),
        "Cars": lambda: m,
        "STL10": lambda: m,
    }[name]()


# ---------------------------------------------------------------------------------------------- fixture mirrors


def per_class(name: str, split: str) -> int:
    """Images per class in a fixture split: a train split of at least 10 images, to carve a validation split from."""
    return max(PER_CLASS[split], -(-10 // NUM_CLASSES[name])) if split == "train" else PER_CLASS[split]


def _png(label: int, split: str) -> bytes:
    image = Image.new("RGB", (8, 8), (label % 256, label // 256, SPLIT_CODE[split]))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _split_table(mirror: Mirror, split: str) -> Any:
    names = mirror_names(mirror.name)
    n = NUM_CLASSES[mirror.name]
    labels = [c for c in range(n) for _ in range(per_class(mirror.name, split))]
    images = [_png(c, split) for c in labels]
    if mirror.name == "FER2013":  # Jeneral/fer-2013: PNG bytes and integer labels
        features = datasets.Features({"img_bytes": datasets.Value("binary"), "labels": datasets.Value("int64")})
        return datasets.Dataset.from_dict({"img_bytes": images, "labels": labels}, features=features)
    label_feature = datasets.Value("int64") if names is None else datasets.ClassLabel(names=names)
    features = datasets.Features({"image": datasets.Image(), "label": label_feature})
    rows = {"image": [{"bytes": b, "path": None} for b in images], "label": labels}
    return datasets.Dataset.from_dict(rows, features=features)


def write_mirror(root: Path, mirror: Mirror, extra_splits: tuple[str, ...] = ()) -> Path:
    """A local copy of ``mirror``'s hub repository under ``root/<owner>/<name>``, laid out as on the hub."""
    repo = root / mirror.repo
    splits = sorted({*mirror.splits.values(), *extra_splits})
    folder = mirror.config or "data"
    for split in splits:
        path = repo / folder / f"{split}-00000-of-00001.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        _split_table(mirror, split).to_parquet(str(path))
    if mirror.config:  # a named configuration, declared as on the hub
        files = "\n".join(f"  - split: {s}\n    path: {folder}/{s}-*" for s in splits)
        (repo / "README.md").write_text(f"---\nconfigs:\n- config_name: {mirror.config}\n  data_files:\n{files}\n---\n")
    return repo


@pytest.fixture(scope="module")
def mirror_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mirrors")
    for mirror in MIRRORS.values():
        # tanganke repos also ship corrupted copies of the test split, which data_files must keep out.
        write_mirror(root, mirror, extra_splits=("contrast",) if mirror.data_files else ())
    return root


@pytest.fixture(scope="module")
def downloaded(mirror_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    to = tmp_path_factory.mktemp("data")
    failed = dl.download_datasets(list(BENCHMARK_DATASETS), to, mirror_root=mirror_root,
                                  cache_dir=to.parent / "hf-cache", progress=False, log=lambda _: None)
    assert failed == {}
    return to


def fixture_sizes(name: str) -> dict[str, int]:
    """Split sizes of the fixture copy, as written under the data location."""
    mirror, n = MIRRORS[name], NUM_CLASSES[name]
    sizes = {ours: n * per_class(name, theirs) for ours, theirs in mirror.splits.items()}
    if mirror.derive_val:
        size = val_size(sizes["train"])
        sizes["train"], sizes["val"] = sizes["train"] - size, size
    return sizes


def _decode(image: Image.Image) -> tuple[int, int]:
    r, g, b = image.convert("RGB").getpixel((0, 0))
    return r + 256 * g, b


# ------------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", BENCHMARK_DATASETS)
def test_loaders_read_the_download(downloaded: Path, name: str) -> None:
    mirror = MIRRORS[name]
    sizes = fixture_sizes(name)
    task = get_dataset(name, None, downloaded, num_workers=0)
    assert len(task.classnames) == NUM_CLASSES[name]
    assert len(task.test_dataset) == sizes["test"]
    for image, label in task.test_dataset:
        mirror_label, code = _decode(image)
        assert code == SPLIT_CODE[mirror.splits["test"]]
        assert task.classnames[label] == expected_class_name(name, mirror_label)

    val = get_dataset(f"{name}Val", None, downloaded, num_workers=0)
    if REGISTRY[name].has_val:
        assert len(val.test_dataset) == sizes["val"]
        own = "train" if mirror.derive_val else mirror.splits["val"]
        assert {_decode(img)[1] for img, _ in val.test_dataset} == {SPLIT_CODE[own]}
    else:  # the seeded 10% of the train split
        assert len(val.test_dataset) == val_size(sizes["train"])
        assert len(val.train_dataset) == sizes["train"] - val_size(sizes["train"])
        assert {_decode(img)[1] for img, _ in val.test_dataset} == {SPLIT_CODE["train"]}


def test_emnist_copy_is_rotated_back_like_the_torchvision_loader(downloaded: Path) -> None:
    meta = read_marker(downloaded, "EMNIST")
    assert meta is not None and meta["transposed"]
    assert "EMNISTOrientation" in repr(REGISTRY["EMNIST"].open(downloaded, "test", None).transform)
    assert "EMNISTOrientation" not in repr(REGISTRY["KMNIST"].open(downloaded, "test", None).transform)


def test_preflight_accepts_the_download(downloaded: Path, tmp_path: Path) -> None:
    assert dataset_problems(downloaded, list(BENCHMARK_DATASETS)) == []
    assert len(dataset_problems(tmp_path, ["DTD", "EuroSAT"])) == 2


def test_corrupted_test_copies_are_not_fetched(downloaded: Path) -> None:
    meta = read_marker(downloaded, "Cars")
    assert meta is not None and set(meta["splits"]) == {"train", "test"}
    assert sorted(p.name for p in hub_folder(downloaded, "Cars").iterdir()) == [MARKER, "test", "train"]


def test_size_check_passes_with_fixture_sizes_and_reports_published_mismatch(downloaded: Path) -> None:
    names = list(BENCHMARK_DATASETS)
    tiny = {n: {s: v for s, v in fixture_sizes(n).items()} for n in names}
    # expected_split_sizes re-derives train/val of a derived val from the full train size.
    tiny["EuroSAT"] = {"train": NUM_CLASSES["EuroSAT"] * PER_CLASS["train"], "test": 10}
    rows = dl.check_sizes(names, downloaded, expected=tiny)
    assert [r for r in rows if not r.ok] == []
    published = dl.check_sizes(["DTD"], downloaded)
    assert {(r.split, r.found, r.expected, r.ok) for r in published} == {
        ("train", 94, EXPECTED_SIZES["DTD"]["train"], False), ("test", 47, EXPECTED_SIZES["DTD"]["test"], False)}


def test_cli_check_only_reports_mismatch_and_missing(downloaded: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["download", "data", "--datasets", "DTD", "--to", str(downloaded), "--check-only"]) == 1
    out, err = capsys.readouterr()
    assert re.search(r"DTD\s+train\s+94\s+3760\s+size differs", out)
    assert "DTD" in err
    assert cli_main(["download", "data", "--datasets", "MNIST", "--to", str(tmp_path), "--check-only"]) == 1
    assert re.search(r"MNIST\s+train\s+-\s+60000\s+missing", capsys.readouterr().out)


def test_complete_dataset_is_skipped(downloaded: Path, mirror_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("a complete dataset was fetched again")

    monkeypatch.setattr(datasets, "load_dataset", no_load)
    logs: list[str] = []
    assert dl.download_datasets(["DTD", "MNIST"], downloaded, mirror_root=mirror_root, progress=False,
                                log=logs.append) == {}
    assert all("already complete" in line for line in logs) and len(logs) == 2


def test_interrupted_download_is_not_complete_and_resumes(mirror_root: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    to = tmp_path / "data"
    calls: list[str] = []
    real = datasets.load_dataset

    def failing_test_split(path: str, **kwargs: Any) -> Any:
        calls.append(kwargs["split"])
        if kwargs["split"] == "test":
            raise ConnectionError("connection reset")
        return real(path, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", failing_test_split)
    failed = dl.download_datasets(["DTD"], to, mirror_root=mirror_root, cache_dir=tmp_path / "c", progress=False,
                                  log=lambda _: None)
    assert "network failure" in failed["DTD"] and "rerun" in failed["DTD"]
    assert read_marker(to, "DTD") is None
    assert dataset_problems(to, ["DTD"])  # a partial copy is never taken for a dataset
    (hub_folder(to, "DTD") / ".tmp-test-1").mkdir()  # debris of a killed run

    calls.clear()
    monkeypatch.setattr(datasets, "load_dataset", lambda path, **kw: calls.append(kw["split"]) or real(path, **kw))
    assert dl.download_datasets(["DTD"], to, mirror_root=mirror_root, cache_dir=tmp_path / "c", progress=False,
                                log=lambda _: None) == {}
    assert calls == ["test"]  # the finished train split was kept
    assert not list(hub_folder(to, "DTD").glob(".tmp-*"))
    assert dataset_problems(to, ["DTD"]) == []


def test_missing_mirror_and_offline_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "no-mirrors"
    empty.mkdir()
    failed = dl.download_datasets(["DTD"], tmp_path / "d1", mirror_root=empty, cache_dir=tmp_path / "c",
                                  progress=False, log=lambda _: None)
    assert "not found" in failed["DTD"] and "docs/data.md" in failed["DTD"]

    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    failed = dl.download_datasets(["DTD"], tmp_path / "d2", cache_dir=tmp_path / "empty-cache", progress=False,
                                  log=lambda _: None)
    assert "offline mode is on" in failed["DTD"] and "tanganke/dtd" in failed["DTD"]


def test_offline_download_from_local_mirror(mirror_root: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert dl.download_datasets(["MNIST"], tmp_path, mirror_root=mirror_root, cache_dir=tmp_path / "c",
                                progress=False, log=lambda _: None) == {}


def test_class_count_and_names_are_verified() -> None:
    with pytest.raises(dl.DownloadError, match="287 classes, the published dataset 397"):
        dl.class_layout("SUN397", MIRRORS["SUN397"], [f"scene {i}" for i in range(287)])
    wrong = [str(i) for i in range(10)][::-1]
    with pytest.raises(dl.DownloadError, match="class names differ"):
        dl.class_layout("MNIST", MIRRORS["MNIST"], wrong)
    raw, label_map = dl.class_layout("DTD", MIRRORS["DTD"], ["b", "a", *[f"z{i:02d}" for i in range(45)]])
    assert raw[:2] == ["a", "b"] and label_map is not None and label_map[:2] == [1, 0]


def test_space_check_names_the_shortfall(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dl.shutil, "disk_usage", lambda p: type("U", (), {"free": 10 * 1024**3})())
    problem = dl.space_problem(["SUN397"], tmp_path, tmp_path / "cache")
    assert problem is not None and "SUN397" in problem and "10.0 GB are free" in problem
    assert dl.space_problem(["MNIST"], tmp_path, tmp_path / "cache") is None


def test_benchmark_selection() -> None:
    assert dl.select_datasets(8, None) == list(BENCHMARK_DATASETS[:8])
    with pytest.raises(ValueError, match="unknown dataset"):
        dl.select_datasets(None, ["Imagenet"])



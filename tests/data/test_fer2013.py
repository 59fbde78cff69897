from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tsvmerge.data import DatasetNotFoundError, get_dataset


def test_reads_the_hugging_face_cache_layout(data_location: Path, tmp_path: Path, preprocess) -> None:
    # load_dataset("Jeneral/fer-2013", cache_dir=...) leaves <cache>/Jeneral___fer-2013/<config>/<version>/<hash>/.
    copy = tmp_path / "Jeneral___fer-2013" / "default" / "0.0.0" / "0123abcd"
    copy.mkdir(parents=True)
    for split in ("train", "test"):
        (arrow,) = (data_location / "fer2013" / split).glob("*.arrow")
        shutil.copy(arrow, copy / f"fer-2013-{split}.arrow")
    task = get_dataset("FER2013", preprocess, tmp_path)
    assert (len(task.train_dataset), len(task.test_dataset)) == (20, 10)
    image, label = task.test_dataset[3]
    assert image.shape == (3, 16, 16) and label == 3


def test_error_names_the_local_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from datasets import config

    monkeypatch.setattr(config, "HF_DATASETS_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(DatasetNotFoundError, match=r"fer2013/test(.|\n)*save_to_disk"):
        get_dataset("FER2013", None, tmp_path)

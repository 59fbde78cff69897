from __future__ import annotations

import json
from pathlib import Path

import pytest

from tsvmerge.data import BENCHMARK_DATASETS, class_synonyms, classnames, get_classnames, templates
from tsvmerge.data.templates import rule_classnames

REFERENCE = Path("/work/shared/reference/classnames_templates.json")


@pytest.mark.parametrize("name", BENCHMARK_DATASETS)
def test_every_dataset_has_templates(name: str) -> None:
    ts = templates(name)
    assert ts and all("{}" in t for t in ts)
    assert templates(name + "Val") == ts


@pytest.mark.skipif(not REFERENCE.exists(), reason="reference file not available")
def test_package_copy_equals_reference() -> None:
    from importlib import resources

    packaged = json.loads(resources.files("tsvmerge.data").joinpath("classnames_templates.json").read_text())
    assert packaged == json.loads(REFERENCE.read_text())


def test_listed_classnames() -> None:
    assert classnames("MNIST") == [str(i) for i in range(10)]
    assert len(classnames("GTSRB")) == 43 and len(classnames("RESISC45")) == 45
    assert len(classnames("Flowers102Val")) == 102


def test_fer2013_synonyms() -> None:
    assert classnames("FER2013") == ["angry", "disgusted", "fearful", "happy", "sad", "surprised", "neutral"]
    assert class_synonyms("FER2013")[3] == ["happy", "smiling"]
    assert class_synonyms("MNIST")[0] == ["0"]


def test_torchvision_constant_classnames() -> None:
    assert classnames("EMNIST") == [str(i) for i in range(10)]
    assert classnames("RenderedSST2") == ["negative", "positive"]
    assert classnames("FashionMNIST")[0] == "T-shirt/top"
    assert len(classnames("KMNIST")) == 10


@pytest.mark.parametrize("name", ["Cars", "DTD", "EuroSAT", "SUN397", "CIFAR100", "STL10", "OxfordIIITPet", "Food101"])
def test_file_derived_classnames_need_the_dataset(name: str) -> None:
    with pytest.raises(LookupError, match="get_classnames"):
        classnames(name)


def test_classname_rules() -> None:
    eurosat = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture", "PermanentCrop",
               "Residential", "River", "SeaLake"]
    assert rule_classnames("EuroSAT", eurosat) == [
        "annual crop land", "forest", "brushland or shrubland", "highway or road",
        "industrial buildings or commercial buildings", "pasture land", "permanent crop land",
        "residential buildings or homes or apartments", "river", "lake or sea",
    ]
    assert rule_classnames("DTD", ["polka_dotted", "banded"]) == ["polka dotted", "banded"]
    assert rule_classnames("SUN397", ["a_abbey", "b_bakery_shop"]) == ["abbey", "bakery shop"]
    assert rule_classnames("Food101", ["apple_pie"]) == ["apple_pie"]


def test_get_classnames_reads_files_only_when_needed(data_location: Path, tmp_path: Path) -> None:
    assert get_classnames("MNIST", tmp_path) == classnames("MNIST")  # no files needed
    assert get_classnames("SUN397Val", data_location) == ["abbey", "airplane cabin", "bakery shop"]
    assert get_classnames("Cars", data_location)[0] == "AM General Hummer SUV 2000"
    assert get_classnames("OxfordIIITPet", data_location) == ["Abyssinian", "American Bulldog", "Bengal"]

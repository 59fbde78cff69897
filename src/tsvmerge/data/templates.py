"""Zero-shot prompt templates and class names of the 20 benchmark datasets and of the synthetic demo tasks.

The benchmark's data lives in the package file ``classnames_templates.json`` (a copy of the published experiments'
prompts, kept verbatim); the synthetic tasks' class names and templates are defined next to their generator
(``datasets/synthetic.py``) and merged in, so that one table answers for every registered dataset. Some
class names are listed there; the others are derived by a named rule (``classname_rules``) from the dataset's own
class list: :func:`classnames` returns those that need no files on disk, :func:`rule_classnames` applies a rule to a
dataset's raw class list (folder names, torchvision ``.classes``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from types import MappingProxyType
from typing import Any

from torchvision.datasets import EMNIST, KMNIST, FashionMNIST

from .datasets.synthetic import SYNTHETIC_CLASSNAMES, SYNTHETIC_TEMPLATES

# Class lists torchvision defines as constants (no files needed), per classname_rules "torchvision X .classes".
_TORCHVISION_CONSTANT_CLASSES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "FashionMNIST": tuple(FashionMNIST.classes),
        "KMNIST": tuple(KMNIST.classes),
        "EMNIST": tuple(EMNIST.classes_split_dict["digits"]),
        "RenderedSST2": ("negative", "positive"),  # set in torchvision RenderedSST2.__init__
    }
)


def base_name(name: str) -> str:
    """``'MNISTVal'`` -> ``'MNIST'``: templates and class names are shared by a dataset's splits."""
    return name[: -len("Val")] if name.endswith("Val") else name


@lru_cache(maxsize=1)
def _table() -> dict[str, Any]:
    text = resources.files("tsvmerge.data").joinpath("classnames_templates.json").read_text(encoding="utf-8")
    table = json.loads(text)
    table["templates"].update({name: list(ts) for name, ts in SYNTHETIC_TEMPLATES.items()})
    table["classnames"].update({name: list(cs) for name, cs in SYNTHETIC_CLASSNAMES.items()})
    return table


def templates(name: str) -> list[str]:
    """Prompt templates of ``name`` (``'{}'`` marks the class name)."""
    table = _table()["templates"]
    key = base_name(name)
    if key not in table:
        raise KeyError(f"No templates for dataset {name!r}; known: {sorted(table)}")
    return list(table[key])


def class_synonyms(name: str) -> list[list[str]]:
    """Per class, the list of names a zero-shot head is built from (several only for FER2013, per the json)."""
    key = base_name(name)
    listed = _table()["classnames"].get(key)
    if listed is None:
        return [[c] for c in classnames(name)]
    return [list(c) if isinstance(c, list) else [c] for c in listed]


def classnames(name: str) -> list[str]:
    """Class names of ``name`` in label order, for the datasets whose names need no files on disk.

    FER2013 lists synonyms per class; this returns the first (canonical) one, see :func:`class_synonyms`. For the
    datasets whose names come from their files (Cars, DTD, EuroSAT, SUN397, CIFAR100, STL10, OxfordIIITPet, Food101)
    raise LookupError: use ``tsvmerge.data.get_classnames(name, location)`` or ``get_dataset(...).classnames``.
    """
    key = base_name(name)
    table = _table()
    listed = table["classnames"].get(key)
    if listed is not None:
        return [c[0] if isinstance(c, list) else c for c in listed]
    if key in _TORCHVISION_CONSTANT_CLASSES:
        return list(_TORCHVISION_CONSTANT_CLASSES[key])
    rule = table["classname_rules"].get(key)
    if rule is None:
        raise KeyError(f"No class names for dataset {name!r}")
    raise LookupError(
        f"Class names of {key} are derived from its files ({_rule_text(rule)}); "
        "use tsvmerge.data.get_classnames(name, location)"
    )


def rule_classnames(name: str, raw_classes: list[str]) -> list[str]:
    """Class names of ``name`` from its raw class list (ImageFolder folder names or torchvision ``.classes``)."""
    key = base_name(name)
    if key == "EuroSAT":
        table = _table()["classname_rules"]["EuroSAT"]["map"]
        return [table.get(p, p) for p in map(_split_camel_case, raw_classes)]
    if key == "DTD":
        return [c.replace("_", " ") for c in raw_classes]
    if key == "SUN397":
        return [c[2:].replace("_", " ") for c in raw_classes]
    return list(raw_classes)


def _split_camel_case(folder: str) -> str:
    """EuroSAT folder to words: 'HerbaceousVegetation' -> 'herbaceous vegetation', 'Industrial' -> 'industrial area'."""
    words = re.findall(r"[A-Z](?:[a-z]+|[A-Z]*(?=[A-Z]|$))", folder)
    out = " ".join(w.lower() for w in words)
    return out + " area" if out.endswith("al") else out


def _rule_text(rule: Any) -> str:
    return rule["rule"] if isinstance(rule, dict) else str(rule)

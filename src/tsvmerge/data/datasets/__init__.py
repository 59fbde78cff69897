"""One module per dataset family; each exposes ``DatasetSource`` objects collected by ``tsvmerge.data.registry``.

The 20 benchmark datasets, then the 8 generated tasks of the demo (``synthetic``)."""

from __future__ import annotations

from . import cars, fer2013, folder_sets, gtsrb, resisc45, synthetic, torchvision_sets
from .base import DatasetSource

ALL_SOURCES: tuple[DatasetSource, ...] = (
    *torchvision_sets.SOURCES,
    *folder_sets.SOURCES,
    cars.SOURCE,
    gtsrb.SOURCE,
    resisc45.SOURCE,
    fer2013.SOURCE,
    *synthetic.SOURCES,
)

__all__ = ["ALL_SOURCES", "DatasetSource"]

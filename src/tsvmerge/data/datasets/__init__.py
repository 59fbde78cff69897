"""One module per dataset family; each exposes ``DatasetSource`` objects collected by ``tsvmerge.data.registry``.

The 20 benchmark datasets, then the 8 generated tasks of the demo (``synthetic``; their images are drawn by
``synthetic_images``). Each benchmark source reads a complete ``tsvmerge download data`` copy
(``<location>/hub/<Name>``, see ``hub``) where there is one, else the published layout."""

from __future__ import annotations

from . import cars, fer2013, folder_sets, gtsrb, resisc45, synthetic, torchvision_sets
from .base import DatasetSource
from .hub import with_hub_copy

ALL_SOURCES: tuple[DatasetSource, ...] = (
    *(with_hub_copy(s) for s in (
        *torchvision_sets.SOURCES,
        *folder_sets.SOURCES,
        cars.SOURCE,
        gtsrb.SOURCE,
        resisc45.SOURCE,
        fer2013.SOURCE,
    )),
    *synthetic.SOURCES,
)

__all__ = ["ALL_SOURCES", "DatasetSource"]

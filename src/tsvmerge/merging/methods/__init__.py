"""Every built-in merge method, one module per family; importing this package registers them all.

- :mod:`.arithmetic`: the pre-trained model (``zeroshot``), weight averaging, Task Arithmetic (``sum``), TIES-Merging;
- :mod:`.masks`: magnitude masking, TALL masks, Consensus merging and the saved TALL-mask files they share;
- :mod:`.tsv`: TSV-M, TSV-M with whitening, the two ablations of Table 4, TSV-C;
- :mod:`.isotropic`: Iso-C, Iso-CTS;
- :mod:`.dc_merge`: DC-Merge;
- :mod:`.cart`: CART;
- :mod:`.data_aware`: ESM and RegMean, the merges that look at a few samples per task.

Each class declares what users see of it (label, reference, colour, table rows) as traits of
:class:`~tsvmerge.merging.registry.MergeMethod`; the math lives in the pure tensor modules of ``tsvmerge.merging``.
"""

from __future__ import annotations

from .arithmetic import Average, TaskArithmetic, Ties, ZeroShot
from .cart import CART_PUBLISHED_MODEL, Cart
from .data_aware import ESM, RegMean
from .dc_merge import DCMerge
from .isotropic import IsoC, IsoCTS
from .masks import Consensus, MagnitudeMasking, TallMask
from .tsv import TSVC, TSVM, InterferenceReductionOnly, LowRankOnly, TSVMWhitening, tsvc_storage

__all__ = [
    "CART_PUBLISHED_MODEL", "ESM", "TSVC", "TSVM", "Average", "Cart", "Consensus", "DCMerge",
    "InterferenceReductionOnly", "IsoC", "IsoCTS", "LowRankOnly", "MagnitudeMasking", "RegMean", "TSVMWhitening",
    "TallMask", "TaskArithmetic", "Ties", "ZeroShot", "tsvc_storage",
]

from __future__ import annotations

import pytest
import torch
from torch.utils.data import random_split

from tsvmerge.data.splits import split_train_val, val_size


def test_mnist_split_matches_published_code() -> None:
    # The published split_train_into_train_val asserts this first index for MNISTVal.
    train, val = split_train_val(range(60000))
    assert (len(train), len(val)) == (55000, 5000)
    assert train.indices[0] == 36044


def test_split_is_random_split_with_seed_zero() -> None:
    train, val = split_train_val(range(1234))
    ref_train, ref_val = random_split(range(1234), [1111, 123], generator=torch.Generator().manual_seed(0))
    assert list(train.indices) == list(ref_train.indices)
    assert list(val.indices) == list(ref_val.indices)


@pytest.mark.parametrize(("n", "expected"), [(20, 2), (1020, 102), (73257, 5000), (50001, 5000), (49999, 4999)])
def test_val_size_is_ten_percent_capped(n: int, expected: int) -> None:
    assert val_size(n) == expected


def test_val_size_rejects_degenerate_splits() -> None:
    with pytest.raises(ValueError):
        val_size(5)
    with pytest.raises(ValueError):
        val_size(100, val_fraction=1.0)

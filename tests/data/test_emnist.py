from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as F
from PIL import Image
from torchvision import transforms as T
from torchvision.datasets import EMNIST

from tsvmerge.data import get_dataset
from tsvmerge.data.transforms import EMNISTOrientation


def test_orientation_is_rotate_minus_90_then_hflip() -> None:
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(2, 4, 4)  # asymmetric
    fixed = EMNISTOrientation()(x)
    assert torch.equal(fixed, F.hflip(F.rotate(x, -90)))
    assert torch.equal(fixed, x.transpose(1, 2))  # on square images: a transpose
    assert fixed[0, 0, 1] == x[0, 1, 0]


def test_orientation_on_pil_matches_tensor() -> None:
    pixels = np.arange(12, dtype=np.uint8).reshape(3, 4)
    fixed = np.asarray(EMNISTOrientation()(Image.fromarray(pixels)))
    assert np.array_equal(fixed, pixels.T)


def test_emnist_digits_come_out_upright(data_location: Path) -> None:
    # EMNIST stores images transposed; after the fix the image equals the transpose of the stored array.
    task = get_dataset("EMNIST", T.ToTensor(), data_location)
    stored = EMNIST(str(data_location), split="digits", train=False).data[0]
    image, _ = task.test_dataset[0]
    expected = stored.T.float() / 255
    assert image.shape == (3, 28, 28)
    assert torch.allclose(image[0], expected) and torch.allclose(image[2], expected)
    assert not torch.allclose(image[0], stored.float() / 255)

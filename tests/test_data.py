"""Batched augmentation and the Splits' train batches."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sddkit import data

torch.set_num_threads(1)
PAD = 4


def views(image: torch.Tensor) -> list[tuple[int, int, bool, torch.Tensor]]:
    """Every crop of the zero-padded image shifted by at most PAD, unflipped and flipped."""
    _, h, w = image.shape
    padded = F.pad(image, (PAD, PAD, PAD, PAD))
    out = []
    for dy in range(2 * PAD + 1):
        for dx in range(2 * PAD + 1):
            crop = padded[:, dy:dy + h, dx:dx + w]
            out += [(dy - PAD, dx - PAD, False, crop), (dy - PAD, dx - PAD, True, crop.flip(-1))]
    return out


def matching_view(image: torch.Tensor, augmented: torch.Tensor) -> tuple[int, int, bool] | None:
    return next(((dy, dx, flip) for dy, dx, flip, view in views(image) if torch.equal(view, augmented)), None)


def test_crop_flip_is_a_shifted_possibly_flipped_view():
    images = torch.randint(0, 256, (64, 3, 12, 10), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = data.crop_flip(images, torch.Generator().manual_seed(1), pad=PAD)
    assert out.shape == images.shape and out.dtype == torch.uint8
    found = [matching_view(x, y) for x, y in zip(images, out)]
    assert None not in found
    # Over 64 images the draw covers both flips and many shifts, not one fixed view.
    assert {flip for _, _, flip in found} == {False, True}
    assert len({dy for dy, _, _ in found}) >= 6 and len({dx for _, dx, _ in found}) >= 6


def test_crop_flip_same_seed_same_batch():
    images = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    first = data.crop_flip(images, torch.Generator().manual_seed(5))
    assert torch.equal(first, data.crop_flip(images, torch.Generator().manual_seed(5)))
    assert not torch.equal(first, data.crop_flip(images, torch.Generator().manual_seed(6)))
    assert first.dtype == torch.float32


def test_train_batch_pads_with_black_before_normalising():
    # All-white uint8 images: a pixel of the picture normalises to +2, a padded (black) pixel to -2.
    white = torch.full((32, 3, 8, 8), 255, dtype=torch.uint8)
    splits = data.Splits(white, torch.zeros(32, dtype=torch.int64), white[:4], torch.zeros(4, dtype=torch.int64), 2,
                         torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.25), augment=True)
    batch = splits.train_batch(torch.arange(32), torch.Generator().manual_seed(0))
    assert batch.dtype == torch.float32 and batch.shape == (32, 3, 8, 8)
    assert set(batch.unique().tolist()) == {-2.0, 2.0}
    plain = splits.train_batch(torch.arange(32), None)  # no generator: no augmentation
    assert torch.equal(plain, torch.full_like(plain, 2.0))


def test_downsample_in_chunks_equals_pooling_the_whole():
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pooled = data.downsample(images, 2, chunk=3)
    assert pooled.shape == (10, 3, 4, 4) and pooled.dtype == torch.float32
    assert torch.equal(pooled, F.avg_pool2d(images.float() / 255.0, 2))
    assert pooled[0, 1, 0, 0] == images[0, 1, :2, :2].float().div(255).mean()

"""Batched augmentation and the Splits' train batches."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sddkit import data
from sddkit.config import ConfigError, DataConfig, load_config

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


# ---------------------------------------------------------------- normalisation statistics

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def colour_images(n: int = 16, side: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_imagenet_statistics_normalise_as_torchvisions_normalize():
    x = colour_images()
    mean, std = data.normalisation(DataConfig(name="cifar10", norm_stats="imagenet"), x)
    splits = data.Splits(x, torch.zeros(16, dtype=torch.long), x, torch.zeros(16, dtype=torch.long), 10,
                         mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1))
    # The paper's loaders: ToTensor (x / 255), then Normalize(ImageNet mean, std), per channel.
    expected = (x.float() / 255 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(splits.normalise(x), expected, rtol=0, atol=1e-6)
    assert splits.normalise(x)[0, 1, 0, 0] == pytest.approx((x[0, 1, 0, 0].item() / 255 - 0.456) / 0.224, abs=1e-6)


def test_norm_stats_default_stays_the_train_splits_own_and_mnist_takes_its_constants():
    x = colour_images()
    own = data.normalisation(DataConfig(name="cifar10"), x)
    assert all(torch.equal(a, b) for a, b in zip(own, data.channel_stats(x)))
    grey = x[:, :1]
    assert [t.tolist() for t in data.normalisation(DataConfig(name="mnist", norm_stats="mnist"), grey)] == [
        pytest.approx([0.1307]), pytest.approx([0.3081])]
    off = data.normalisation(DataConfig(name="cifar10", norm_stats="imagenet", standardize=False), x)
    assert [t.tolist() for t in off] == [[0.0], [1.0]]  # standardize: false still means no normalisation


def test_norm_stats_must_match_the_datasets_channels():
    with pytest.raises(ConfigError, match=r"^data.norm_stats = 'imagenet': has 3 channel\(s\), mnist5k has 1; use "
                                          r"train or mnist$"):
        load_config(preset="quick", overrides={"data.norm_stats": "imagenet"})


# ---------------------------------------------------------------- Tiny ImageNet's transforms, batched

def test_resized_crop_boxes_follow_torchvisions_law():
    n, side = 4000, 64
    top, left, h, w = data.resized_crop_boxes(n, side, side, torch.Generator().manual_seed(0))
    area, aspect = (h * w).double() / side ** 2, w.double() / h.double()
    assert bool(((top >= 0) & (left >= 0) & (top + h <= side) & (left + w <= side)).all())  # inside the image
    # Area in [0.08, 1] of the image and aspect in [3/4, 4/3], up to rounding a side to whole pixels.
    assert area.min() >= 0.08 * 0.9 and area.max() <= 1.0
    assert aspect.min() >= 0.75 * 0.95 and aspect.max() <= 4 / 3 * 1.05
    # The same law as torchvision's own draws (large boxes of uneven aspect do not fit, hence a mean below 0.54).
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(0)
    image = torch.zeros(3, side, side)
    theirs = torch.tensor([RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n)])
    their_area = (theirs[:, 2] * theirs[:, 3]).double() / side ** 2
    assert area.mean() == pytest.approx(their_area.mean(), abs=0.015)
    assert area.std() == pytest.approx(their_area.std(), abs=0.015)
    assert (h == side).double().mean() == pytest.approx((theirs[:, 2] == side).double().mean(), abs=0.015)
    assert len(set(zip(top.tolist(), left.tolist()))) > 1000  # positions spread over the image
    again = data.resized_crop_boxes(n, side, side, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip((top, left, h, w), again))


def test_resized_crop_falls_back_to_the_central_crop_when_no_box_fits():
    # A 4x64 strip: no box of area >= 0.9 with aspect <= 4/3 fits, so torchvision takes the central crop of
    # aspect 4/3: height 4, width round(4 * 4/3) = 5, at ((4 - 4) // 2, (64 - 5) // 2).
    boxes = data.resized_crop_boxes(3, 4, 64, torch.Generator().manual_seed(0), scale=(0.9, 1.0))
    assert [b.tolist() for b in boxes] == [[0] * 3, [29] * 3, [4] * 3, [5] * 3]


def pil_images(x: torch.Tensor):
    from PIL import Image

    return [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in x]


def as_tensor(image) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


def test_resample_matches_pils_resized_crop_within_two_grey_levels():
    import torchvision.transforms.functional as TF

    x = colour_images(64, 64, seed=1)
    top, left, h, w = data.resized_crop_boxes(64, 64, 64, torch.Generator().manual_seed(2))
    ours = data.resample(x, top, left, h, w, 32)
    assert ours.dtype == torch.uint8 and ours.shape == (64, 3, 32, 32)
    reference = torch.stack([as_tensor(TF.resized_crop(image, *box, [32, 32]))  # the paper's PIL path
                             for image, box in zip(pil_images(x), zip(*(b.tolist() for b in (top, left, h, w))))])
    difference = (ours.int() - reference.int()).abs()
    assert difference.max() <= 2 and difference.float().mean() < 0.5


def test_the_test_view_is_resize_45_and_centre_crop_32_as_pil_within_one_grey_level():
    import torchvision.transforms as T

    x = colour_images(32, 64, seed=3)
    splits = data.Splits(x, torch.zeros(32, dtype=torch.long), x, torch.zeros(32, dtype=torch.long), 200,
                         torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1), crop_size=32, test_resize=45)
    view = splits.eval_view(x)
    paper = T.Compose([T.Resize(45), T.CenterCrop(32)])  # the paper's Tiny ImageNet test transform
    reference = torch.stack([as_tensor(paper(image)) for image in pil_images(x)])
    assert view.shape == (32, 3, 32, 32) and view.dtype == torch.uint8
    difference = (view.int() - reference.int()).abs()
    assert difference.max() <= 1 and (difference > 0).float().mean() < 0.05
    # CenterCrop(32) of a 45-pixel image starts at round(6.5) = 6, Python's rounding, as torchvision's.
    ramp = torch.arange(45.0).expand(1, 1, 45, 45)
    assert data.centre_crop(ramp, 32)[0, 0, 0, [0, -1]].tolist() == [6.0, 37.0]
    assert torch.equal(splits.eval_batch(x), splits.normalise(view))


def test_resample_keeps_a_constant_image_and_a_ramp_linear():
    flat = torch.full((5, 3, 64, 64), 77, dtype=torch.uint8)
    top, left, h, w = data.resized_crop_boxes(5, 64, 64, torch.Generator().manual_seed(4))
    assert torch.equal(data.resample(flat, top, left, h, w, 32), torch.full((5, 3, 32, 32), 77, dtype=torch.uint8))
    # Shrinking a ramp by 2 (a 64-wide box to 32): output pixel i is centred at 2i + 1, where the ramp is 2i + 0.5.
    ramp = torch.arange(64.0).expand(1, 1, 64, 64).clone()
    zero, whole = torch.zeros(1, dtype=torch.long), torch.full((1,), 64)
    out = data.resample(ramp, zero, zero, whole, whole, 32)
    torch.testing.assert_close(out[0, 0, 5, 1:-1], torch.arange(1, 31.0) * 2 + 0.5)


def test_a_tinyimagenet_batch_trains_on_resized_crops_and_evaluates_on_the_test_view():
    x = colour_images(16, 64, seed=5)
    y = torch.zeros(16, dtype=torch.long)
    splits = data.Splits(x, y, x, y, 200, torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.25),
                         augment="resized_crop_flip", crop_size=32, test_resize=45)
    assert splits.input_shape == (3, 32, 32)
    idx = torch.arange(16)
    batch = splits.train_batch(idx, torch.Generator().manual_seed(6))
    assert batch.shape == (16, 3, 32, 32) and batch.dtype == torch.float32
    assert torch.equal(batch, splits.train_batch(idx, torch.Generator().manual_seed(6)))  # seeded, reproducible
    assert not torch.equal(batch, splits.train_batch(idx, torch.Generator().manual_seed(7)))
    # Without a generator (as for the gradient criterion) a train image is seen as a test image.
    assert torch.equal(splits.train_batch(idx, None), splits.eval_batch(x))


def test_resized_crop_flip_flips_about_half_and_only_mirrors():
    x = colour_images(400, 64, seed=8)
    gen = lambda: torch.Generator().manual_seed(9)  # noqa: E731
    out = data.resized_crop_flip(x, gen(), 32)
    boxes = data.resized_crop_boxes(400, 64, 64, gen())
    plain = data.resample(x, *boxes, 32)
    flipped = [not torch.equal(o, p) for o, p in zip(out, plain)]
    assert all(torch.equal(o, p.flip(-1)) for o, p, f in zip(out, plain, flipped) if f)
    assert 0.4 < sum(flipped) / 400 < 0.6


def test_crop_and_resize_settings_are_checked_against_the_images():
    base = {"data.name": "tinyimagenet", "noise.kind": "none", "model.arch": "resnet18", "data.downsample": 1}
    with pytest.raises(ConfigError, match=r"^data.crop_size = 40: larger than the 32x32 images of tinyimagenet"):
        load_config(preset="quick", overrides={**base, "data.downsample": 2, "data.crop_size": 40})
    with pytest.raises(ConfigError, match=r"^data.test_resize = 30: smaller than the 32-pixel centre crop"):
        load_config(preset="quick", overrides={**base, "data.crop_size": 32, "data.test_resize": 30,
                                               "data.augment": "none"})
    with pytest.raises(ConfigError, match=r"^data.crop_size = 32 with data.augment = 'auto': crop\+flip keeps the "
                                          r"64x64 side.*use data.augment = resized_crop_flip"):
        load_config(preset="quick", overrides={**base, "data.crop_size": 32, "data.augment": "auto"})
    assert load_config(preset="quick", overrides={**base, "data.crop_size": 32, "data.test_resize": 45,
                                                  "data.augment": "resized_crop_flip"})
    assert load_config(preset="quick", overrides={**base, "data.crop_size": 32, "data.augment": "none"})

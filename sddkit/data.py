"""Splits on the training device, and batched preprocessing there with seeded generators (no DataLoader,
no workers, no per-image PIL)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sddkit import noise, sources
from sddkit.config import NORM_STATS, Config, ConfigError, DataConfig


@dataclass
class Splits:
    x_train: torch.Tensor       # (N, C, H, W), uint8 or float32, on the device
    y_train_clean: torch.Tensor  # the true labels
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: torch.Tensor          # (1, C, 1, 1) per-channel statistics (data.norm_stats), on the 0..1 scale
    std: torch.Tensor
    augment: str = "none"       # "none", "crop_flip" or "resized_crop_flip" (True and False: crop_flip, none)
    coarse_train: torch.Tensor | None = None
    channels_last: bool = False  # batches in torch.channels_last, to match a model converted to it (CUDA)
    crop_size: int = 0          # side the model sees (data.crop_size); 0: the images' own
    test_resize: int = 0        # evaluation resizes to this side before the centre crop; 0: no resize

    def __post_init__(self):
        if isinstance(self.augment, bool):  # the older flag: crop+flip or nothing
            self.augment = "crop_flip" if self.augment else "none"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        channels, height, width = self.x_train.shape[1:]
        return (channels, self.crop_size or height, self.crop_size or width)

    def eval_batch(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalise(self.eval_view(x))

    def eval_view(self, x: torch.Tensor) -> torch.Tensor:
        """torchvision's Resize(test_resize) then CenterCrop(crop_size), each when set."""
        if self.test_resize:
            x = resize(x, self.test_resize)
        return centre_crop(x, self.crop_size) if self.crop_size else x

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x
        x = (x - self.mean) / self.std
        # A batch in the model's layout spares every conv a layout conversion of its input.
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def train_batch(self, idx: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        x = self.x_train[idx]
        if gen is not None and self.augment == "crop_flip":  # raw bytes padded black: RandomCrop(padding=4)
            return self.normalise(crop_flip(x, gen))
        if gen is not None and self.augment == "resized_crop_flip":
            return self.normalise(resized_crop_flip(x, gen, self.crop_size or x.shape[-1]))
        return self.eval_batch(x)  # not augmented: the evaluation view, as the paper's unaugmented train set

    def to(self, device: torch.device) -> "Splits":
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()}
        return Splits(**moved)


def crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding ``pad`` and horizontal flip, batched."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=gen.device).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=gen.device).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    flip = torch.rand(n, generator=gen, device=gen.device).to(x.device) < 0.5
    cols = torch.where(flip[:, None, None, None], cols.flip(-1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def resized_crop_boxes(n: int, height: int, width: int, gen: torch.Generator, scale=(0.08, 1.0),
                       ratio=(3 / 4, 4 / 3), tries: int = 10) -> tuple[torch.Tensor, ...]:
    """torchvision's RandomResizedCrop.get_params for ``n`` images at once: (top, left, height, width), each (n,)
    int64 on ``gen``'s device. Each image keeps the first of ``tries`` candidate boxes that fits, else the central
    crop of the nearest allowed aspect ratio."""
    dev, area = gen.device, float(height * width)
    target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, tries, generator=gen, device=dev))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(n, tries, generator=gen, device=dev))
    w = torch.sqrt(target * aspect).round().long()
    h = torch.sqrt(target / aspect).round().long()
    fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    top = (torch.rand(n, tries, generator=gen, device=dev) * (height - h + 1).clamp_min(1)).long()
    left = (torch.rand(n, tries, generator=gen, device=dev) * (width - w + 1).clamp_min(1)).long()
    first = torch.where(fits.any(1), fits.long().argmax(1), torch.full((n,), -1, device=dev))
    pick = first.clamp_min(0)[:, None]
    out = [v.gather(1, pick)[:, 0] for v in (top, left, h, w)]
    fall_h, fall_w = _central_fallback(height, width, ratio)
    fallback = (torch.tensor([(height - fall_h) // 2, (width - fall_w) // 2, fall_h, fall_w], device=dev))
    none_fit = (first < 0)[:, None]
    return tuple(torch.where(none_fit, fallback[i], out[i][:, None])[:, 0] for i in range(4))


def _central_fallback(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    in_ratio = width / height
    if in_ratio < min(ratio):
        return int(round(width / min(ratio))), width
    if in_ratio > max(ratio):
        return height, int(round(height * max(ratio)))
    return height, width


def resized_crop_flip(x: torch.Tensor, gen: torch.Generator, size: int) -> torch.Tensor:
    """RandomResizedCrop(size) then RandomHorizontalFlip, batched."""
    n, _, height, width = x.shape
    top, left, h, w = resized_crop_boxes(n, height, width, gen)
    flip = torch.rand(n, generator=gen, device=gen.device).to(x.device) < 0.5
    out = resample(x, *(v.to(x.device) for v in (top, left, h, w)), size)
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


def resize(x: torch.Tensor, side: int) -> torch.Tensor:
    """Square images resized to ``side`` x ``side``, as torchvision's Resize."""
    if x.shape[-1] == side and x.shape[-2] == side:
        return x
    n, dev = len(x), x.device
    zero, full = torch.zeros(n, dtype=torch.long, device=dev), torch.full((n,), x.shape[-1], device=dev)
    return resample(x, zero, zero, torch.full((n,), x.shape[-2], device=dev), full, side)


def resample(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, h: torch.Tensor, w: torch.Tensor,
             size: int) -> torch.Tensor:
    """Box (top, left, h, w) of each image resized to ``size`` x ``size`` as PIL's antialiased bilinear resize
    (the paper's transforms): along the width, then the height, uint8 images rounded after each pass."""
    rows, cols = filter_weights(top, h, x.shape[-2], size), filter_weights(left, w, x.shape[-1], size)
    is_bytes = x.dtype == torch.uint8
    out = torch.einsum("nchw,nxw->nchx", x.float(), cols)
    out = out.round().clamp(0, 255) if is_bytes else out
    out = torch.einsum("nyh,nchx->ncyx", rows, out)
    return out.round().clamp(0, 255).to(torch.uint8) if is_bytes else out


def filter_weights(start: torch.Tensor, length: torch.Tensor, extent: int, size: int) -> torch.Tensor:
    """(n, size, extent) weights of PIL's bilinear resampling of pixels start..start+length-1 to ``size``: a
    triangle filter widened by the shrink factor, zero outside the box, each row summing to 1."""
    scale = (length.double() / size)[:, None, None]
    centre = start[:, None, None] + (torch.arange(size, device=start.device)[None, :, None] + 0.5) * scale
    pixel = torch.arange(extent, device=start.device)[None, None, :]
    weight = (1.0 - (pixel + 0.5 - centre).abs() / scale.clamp_min(1.0)).clamp_min(0.0)
    inside = (pixel >= start[:, None, None]) & (pixel < (start + length)[:, None, None])
    weight = weight * inside
    return (weight / weight.sum(-1, keepdim=True)).float()


def centre_crop(x: torch.Tensor, side: int) -> torch.Tensor:
    """torchvision's CenterCrop(side), with Python's rounding."""
    height, width = x.shape[-2:]
    top, left = int(round((height - side) / 2.0)), int(round((width - side) / 2.0))
    return x[..., top:top + side, left:left + side]


def stratified_subset(labels: torch.Tensor, size: int, seed: int, key: str) -> torch.Tensor:
    """A fixed, class-balanced subset of ``size`` indices (all when 0 or too big); ``key`` names it in errors."""
    n = len(labels)
    if size == 0 or size >= n:
        return torch.arange(n)
    classes = int(labels.max()) + 1
    if size % classes:
        raise ConfigError(f"{key} = {size}: use a multiple of the {classes} classes (or 0 for all)")
    idx = sources.stratified_indices(labels.numpy(), size // classes, np.random.default_rng(seed))
    return torch.from_numpy(idx)


def prepare(cfg: DataConfig, root: Path) -> Splits:
    """``cfg.name`` loaded, subset, downsampled and with its normalisation statistics, on the CPU."""
    src = sources.load(cfg.name, root / cfg.root, cfg.test_size, cfg.split_seed)
    keep = stratified_subset(src.y_train, cfg.train_size, cfg.split_seed, "data.train_size")
    x_train, x_test = src.x_train[keep], src.x_test
    if cfg.downsample > 1:
        # Pooling yields floats; keep them on the 0..1 scale so normalise() treats both paths alike.
        x_train, x_test = downsample(x_train, cfg.downsample), downsample(x_test, cfg.downsample)
    mean, std = normalisation(cfg, x_train)
    coarse = src.coarse_train[keep] if src.coarse_train is not None else None
    return Splits(x_train, src.y_train[keep], x_test, src.y_test, src.num_classes,
                  mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1), coarse_train=coarse, **transforms(cfg, x_train))


def normalisation(cfg: DataConfig, x_train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not cfg.standardize:
        return torch.zeros(1), torch.ones(1)
    if cfg.norm_stats in NORM_STATS:
        mean, std = NORM_STATS[cfg.norm_stats]
        return torch.tensor(mean), torch.tensor(std)
    return channel_stats(x_train)


def transforms(cfg: DataConfig, x_train: torch.Tensor) -> dict:
    """The Splits' transform settings; augment auto: crop+flip for colour images (the paper's CIFAR), else none."""
    augment = cfg.augment
    if augment == "auto":
        augment = "crop_flip" if x_train.shape[1] == 3 else "none"
    return {"augment": augment, "crop_size": cfg.crop_size, "test_resize": cfg.test_resize}


def load_labelled(cfg: Config, root: Path) -> tuple[Splits, torch.Tensor]:
    """The splits (on the CPU) and noisy train labels of ``cfg`` from the raw sources: what ``prepare`` pins."""
    splits = prepare(cfg.data, root)
    noisy = noise.corrupt(splits.y_train_clean, cfg.noise.kind, cfg.noise.ratio, cfg.noise_seed,
                          splits.num_classes, cfg.data.name, splits.coarse_train)
    return splits, noisy


def downsample(x: torch.Tensor, factor: int, chunk: int = 8192) -> torch.Tensor:
    """Average-pooled floats on the 0..1 scale, a chunk at a time: Tiny ImageNet never exists whole as float32."""
    return torch.cat([F.avg_pool2d(part.float() / 255.0, factor) for part in x.split(chunk)])


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x
    return x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3)).clamp_min(1e-6)

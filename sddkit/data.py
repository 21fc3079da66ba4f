"""Splits on the training device and batched preprocessing.

Small datasets live whole on the device (uint8 where the source is uint8); normalisation and augmentation
run per batch there, with a seeded generator: no DataLoader, no worker processes, no per-image PIL.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sddkit import noise, sources
from sddkit.config import Config, ConfigError, DataConfig


@dataclass
class Splits:
    x_train: torch.Tensor       # (N, C, H, W), uint8 or float32, on the device
    y_train_clean: torch.Tensor  # the true labels
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: torch.Tensor          # (1, C, 1, 1) per-channel statistics of the train split, on the 0..1 scale
    std: torch.Tensor
    augment: bool = False
    coarse_train: torch.Tensor | None = None
    channels_last: bool = False  # batches in torch.channels_last, to match a model converted to it (CUDA)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x
        x = (x - self.mean) / self.std
        # A batch in the model's layout spares every conv a layout conversion of its input.
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def train_batch(self, idx: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        """Augmented (when enabled), then normalised train images at ``idx``.

        Cropping the raw images pads them with black, as torchvision's RandomCrop(padding=4) does in the
        paper's pipeline, and moves uint8 bytes rather than floats."""
        x = self.x_train[idx]
        return self.normalise(crop_flip(x, gen) if self.augment and gen is not None else x)

    def to(self, device: torch.device) -> "Splits":
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()}
        return Splits(**moved)


def crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding ``pad`` and horizontal flip, for a whole batch at once."""
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


def stratified_subset(labels: torch.Tensor, size: int, seed: int, key: str) -> torch.Tensor:
    """A fixed, class-balanced subset of ``size`` indices (the whole range when size is 0 or too big);
    ``key`` is the config key that asked for it, named if the size does not split evenly over the classes."""
    n = len(labels)
    if size == 0 or size >= n:
        return torch.arange(n)
    classes = int(labels.max()) + 1
    if size % classes:
        raise ConfigError(f"{key} = {size}: use a multiple of the {classes} classes (or 0 for all)")
    idx = sources.stratified_indices(labels.numpy(), size // classes, np.random.default_rng(seed))
    return torch.from_numpy(idx)


def prepare(cfg: DataConfig, root: Path) -> Splits:
    """Load ``cfg.name``, subset, downsample and compute normalisation statistics (on the CPU)."""
    src = sources.load(cfg.name, root / cfg.root, cfg.test_size, cfg.split_seed)
    keep = stratified_subset(src.y_train, cfg.train_size, cfg.split_seed, "data.train_size")
    x_train, x_test = src.x_train[keep], src.x_test
    if cfg.downsample > 1:
        # Pooling yields floats; keep them on the 0..1 scale so normalise() treats both paths alike.
        x_train, x_test = downsample(x_train, cfg.downsample), downsample(x_test, cfg.downsample)
    mean, std = channel_stats(x_train) if cfg.standardize else (torch.zeros(1), torch.ones(1))
    coarse = src.coarse_train[keep] if src.coarse_train is not None else None
    return Splits(x_train, src.y_train[keep], x_test, src.y_test, src.num_classes,
                  mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1), augments(cfg, x_train.shape[1]), coarse)


def augments(cfg: DataConfig, channels: int) -> bool:
    """Crop+flip when asked, or by default for colour images (the paper's CIFAR pipeline)."""
    return cfg.augment == "crop_flip" or (cfg.augment == "auto" and channels == 3)


def load_labelled(cfg: Config, root: Path) -> tuple[Splits, torch.Tensor]:
    """The splits (on the CPU) and the noisy train labels of ``cfg``, built from the raw sources: what
    ``sddkit prepare`` pins, and what a trajectory trains on when no pinned folder is given."""
    splits = prepare(cfg.data, root)
    noisy = noise.corrupt(splits.y_train_clean, cfg.noise.kind, cfg.noise.ratio, cfg.noise_seed,
                          splits.num_classes, cfg.data.name, splits.coarse_train)
    return splits, noisy


def downsample(x: torch.Tensor, factor: int, chunk: int = 8192) -> torch.Tensor:
    """Average-pool uint8 images by ``factor`` into floats on the 0..1 scale, a chunk at a time so that
    Tiny ImageNet (100,000 x 3 x 64 x 64) never exists whole as float32."""
    return torch.cat([F.avg_pool2d(part.float() / 255.0, factor) for part in x.split(chunk)])


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x
    return x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3)).clamp_min(1e-6)

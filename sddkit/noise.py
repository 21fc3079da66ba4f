"""Label noise on the train split (the test split stays clean), by ``noise.kind``: ``random`` (a fraction ε gets
a label drawn from all K classes, maybe the true one: the paper's law), ``symmetric`` (from the K − 1 others),
``asymmetric`` (to a similar class, ``ASYMMETRIC_MAPS``; CIFAR-100: the next fine class of its super-class),
``pairflip`` (i → i + 1), ``open_lth`` (the paper's own draw, bit for bit).
"""
from __future__ import annotations

import numpy as np
import torch

from sddkit.config import ASYMMETRIC_DATASETS, ConfigError
from sddkit.files import DatasetError

ASYMMETRIC_MAPS = {
    "cifar10": {9: 1, 2: 0, 3: 5, 5: 3, 4: 7},
    "mnist": {2: 7, 3: 8, 5: 6, 6: 5},
}


def corrupt(labels: torch.Tensor, kind: str, ratio: float, seed: int, num_classes: int,
            dataset: str = "", coarse: torch.Tensor | None = None) -> torch.Tensor:
    y = labels.cpu().numpy().astype(np.int64)
    rng = np.random.default_rng(seed)
    if kind == "none" or ratio == 0.0:
        noisy = y.copy()
    elif kind in ("random", "symmetric"):
        noisy = _uniform(y, ratio, rng, num_classes, exclude_true=kind == "symmetric")
    elif kind == "pairflip":
        noisy = _flip_classes(y, ratio, rng, {c: (c + 1) % num_classes for c in range(num_classes)})
    elif kind == "open_lth":
        noisy = open_lth_labels(y, ratio, seed, num_classes)
    elif kind == "asymmetric":
        noisy = _flip_classes(y, ratio, rng, asymmetric_map(dataset, num_classes, coarse, labels))
    else:
        raise ConfigError(f"noise.kind = {kind!r}: unknown; allowed: none, random, symmetric, asymmetric, pairflip, "
                          f"open_lth")
    return torch.from_numpy(noisy)


def realised_rate(clean: torch.Tensor, noisy: torch.Tensor) -> float:
    return float((clean.cpu() != noisy.cpu()).double().mean())


def _uniform(y: np.ndarray, ratio: float, rng: np.random.Generator, k: int, exclude_true: bool) -> np.ndarray:
    noisy = y.copy()
    chosen = rng.choice(len(y), int(round(ratio * len(y))), replace=False)
    if exclude_true:  # a shift of 1..K-1 lands uniformly on every other class
        noisy[chosen] = (y[chosen] + rng.integers(1, k, len(chosen))) % k
    else:
        noisy[chosen] = rng.integers(0, k, len(chosen))
    return noisy


def open_lth_labels(y: np.ndarray, ratio: float, seed: int, k: int) -> np.ndarray:
    """open_lth's ``Dataset.randomize_labels(seed, fraction)`` statement for statement, legacy ``RandomState``
    streams included: ceil(N·ε) labels drawn from all K, placed on the first ceil(N·ε) of a permutation."""
    noisy = y.copy()
    count = np.ceil(len(y) * ratio).astype(int)
    drawn = np.random.RandomState(seed=seed).randint(k, size=count)
    chosen = np.random.RandomState(seed=seed + 1).permutation(len(y))[:count]
    noisy[chosen] = drawn
    return noisy


def _flip_classes(y: np.ndarray, ratio: float, rng: np.random.Generator, mapping: dict[int, int]) -> np.ndarray:
    """A fraction ``ratio`` of each source class flipped to its target class."""
    noisy = y.copy()
    for source, target in sorted(mapping.items()):
        members = np.flatnonzero(y == source)
        chosen = rng.choice(members, int(round(ratio * len(members))), replace=False)
        noisy[chosen] = target
    return noisy


def asymmetric_map(dataset: str, num_classes: int, coarse: torch.Tensor | None,
                   fine: torch.Tensor) -> dict[int, int]:
    if dataset == "cifar100":
        if coarse is None:
            raise DatasetError("asymmetric noise on cifar100 needs the coarse labels CIFAR-100 ships; "
                               "the cifar100 loader provides them")
        return cifar100_superclass_map(fine.cpu().numpy(), coarse.cpu().numpy())
    family = "mnist" if dataset.startswith("mnist") else dataset
    if family not in ASYMMETRIC_MAPS:
        raise ConfigError(f"noise.kind = 'asymmetric': no class map for data.name = {dataset!r}; "
                          f"defined for {', '.join(ASYMMETRIC_DATASETS)} (use pairflip or random instead)")
    return ASYMMETRIC_MAPS[family]


def cifar100_superclass_map(fine: np.ndarray, coarse: np.ndarray) -> dict[int, int]:
    """Each fine class -> the next fine class (cyclically) of its own coarse super-class."""
    pairs = np.unique(np.stack([fine, coarse]), axis=1)  # the distinct (fine, coarse) pairs
    split = np.flatnonzero(np.bincount(pairs[0]) > 1)
    if len(split):
        raise DatasetError(f"fine class {int(split[0])} carries several coarse labels; CIFAR-100 gives each "
                           f"fine class one super-class: download cifar-100-python again")
    mapping = {}
    for c in np.unique(coarse):
        members = np.unique(fine[coarse == c])
        for i, f in enumerate(members):
            mapping[int(f)] = int(members[(i + 1) % len(members)])
    return mapping

"""Label noise on the train split; the test split stays clean.

Kinds:
- ``random``: a seeded fraction ε of the samples gets a label drawn uniformly from all K classes (the
  paper's main setting; a drawn label may equal the true one, so the realised rate is about ε(1 − 1/K)).
- ``symmetric``: a fraction ε gets a label drawn uniformly from the K − 1 *other* classes.
- ``asymmetric``: a fraction ε of each source class is flipped to a similar class (CIFAR-10:
  truck→automobile, bird→airplane, cat↔dog, deer→horse; MNIST: 2→7, 3→8, 5↔6; CIFAR-100: the next fine
  class within the same coarse super-class).
- ``pairflip``: a fraction ε of the samples of every class i is flipped to class (i + 1) mod K.
- ``open_lth``: the paper's own draw, ``randomize_labels(seed, ε)`` of its open_lth fork (what its runs'
  ``--random_labels_fraction=ε --fix_all_random_seeds=1`` do, with seed 1): ceil(N·ε) labels drawn from all K
  classes by ``RandomState(seed).randint``, placed on the first ceil(N·ε) indices of
  ``RandomState(seed + 1).permutation(N)``. The same law as ``random``, but the very same noisy set as the
  paper's for the same train set in the same order (CIFAR-10/100 and MNIST as shipped).
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
    """The noisy copy of ``labels``; identical for identical (labels, kind, ratio, seed)."""
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
    """The fraction of train labels that actually differ from the truth."""
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
    """open_lth's ``Dataset.randomize_labels(seed, fraction)``, statement for statement (its legacy
    ``RandomState`` streams included): the paper's noisy labels, bit for bit."""
    noisy = y.copy()
    count = np.ceil(len(y) * ratio).astype(int)
    drawn = np.random.RandomState(seed=seed).randint(k, size=count)
    chosen = np.random.RandomState(seed=seed + 1).permutation(len(y))[:count]
    noisy[chosen] = drawn
    return noisy


def _flip_classes(y: np.ndarray, ratio: float, rng: np.random.Generator, mapping: dict[int, int]) -> np.ndarray:
    """Flip a fraction ``ratio`` of the samples of each source class to its target class."""
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
    """Each fine class -> the next fine class (cyclically, in index order) of its own coarse super-class."""
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

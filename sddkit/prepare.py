"""``sddkit prepare``: the exact data a trajectory trains on, as byte-for-byte deterministic files DVC pins by md5
(``splits.npz``, ``noisy_labels.npy``, and ``prepared.json`` naming their settings). ``sddkit run --prepared DIR``
checks them against its config and records their md5 as the run's dataset inputs, as ``dvc.lock`` lists them.
"""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from sddkit.config import NOT_IDENTITY, Config
from sddkit.files import write_atomic
from sddkit.sources import DatasetError

SPLITS, NOISY, MANIFEST = "splits.npz", "noisy_labels.npy", "prepared.json"
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # a fixed timestamp inside the npz, so its md5 depends on the arrays only


class DataFile(NamedTuple):
    path: str  # as the caller named it
    md5: str


def settings(cfg: Config) -> dict:
    """The config keys that make the prepared files (``noise.seed`` resolved)."""
    keys = {k: v for k, v in cfg.flat().items()
            if k.startswith(("data.", "noise.")) and k not in NOT_IDENTITY}
    keys["noise.seed"] = cfg.noise_seed
    return keys


def prepare(cfg: Config, root: Path, out: Path) -> list[DataFile]:
    from sddkit import data, noise

    splits, noisy = data.load_labelled(cfg, root)
    arrays = {"x_train": splits.x_train, "y_train": splits.y_train_clean, "x_test": splits.x_test,
              "y_test": splits.y_test, "mean": splits.mean, "std": splits.std}
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / SPLITS, lambda f: write_npz(f, {k: v.numpy() for k, v in arrays.items()}))
    write_atomic(out / NOISY, lambda f: np.lib.format.write_array(f, noisy.numpy(), allow_pickle=False))
    manifest = {"settings": settings(cfg), "noise_realised_rate": noise.realised_rate(splits.y_train_clean, noisy),
                "train_size": len(noisy), "test_size": len(splits.y_test), "num_classes": splits.num_classes}
    write_atomic(out / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
    return data_files(out)


def pinned(folder: Path, cfg: Config) -> list[DataFile]:
    check_settings(folder, cfg)
    return data_files(folder)


def load_pinned(folder: Path, cfg: Config):
    """The data files of ``folder`` (checked against ``cfg``) and their (splits, noisy labels), md5 and arrays
    from the same bytes read once: the md5 a run records is provably the data it trains on."""
    import torch

    from sddkit.data import Splits, transforms

    check_settings(folder, cfg)
    check_present(folder)  # a missing file is named before anything is read
    contents = {name: (folder / name).read_bytes() for name in (SPLITS, NOISY)}
    files = [DataFile(str(folder / name), hashlib.md5(content).hexdigest()) for name, content in contents.items()]
    try:
        with np.load(io.BytesIO(contents[SPLITS])) as npz:
            arrays = {k: torch.from_numpy(npz[k].copy()) for k in ("x_train", "y_train", "x_test", "y_test",
                                                                   "mean", "std")}
        noisy = torch.from_numpy(np.load(io.BytesIO(contents[NOISY])).copy())
        classes = int(json.loads((folder / MANIFEST).read_text())["num_classes"])
    except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"--prepared {folder}: its files are damaged or from an older sddkit "
                           f"({exc.__class__.__name__}: {exc}); rerun `sddkit prepare --out {folder}` "
                           f"(`dvc repro` does)") from exc
    if len(noisy) != len(arrays["y_train"]):
        raise DatasetError(f"--prepared {folder}: {NOISY} holds {len(noisy)} labels for {len(arrays['y_train'])} "
                           f"train images; rerun `sddkit prepare --out {folder}`")
    splits = Splits(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"], classes,
                    arrays["mean"], arrays["std"], **transforms(cfg.data, arrays["x_train"]))
    return files, (splits, noisy)


def check_settings(folder: Path, cfg: Config) -> None:
    # A key the manifest lacks did not exist when it was written: the data was made as its neutral default.
    made_with = {**Config().flat(), **read_settings(folder)}
    wanted = settings(cfg)
    differ = [k for k in sorted(wanted) if made_with.get(k) != wanted[k]]
    if differ:
        first = differ[0]
        raise DatasetError(f"--prepared {folder} was made with {first} = {made_with.get(first)!r} but this run "
                           f"has {first} = {wanted[first]!r}; rerun `sddkit prepare` with the same params "
                           f"(`dvc repro` does)")


def read_settings(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        raise DatasetError(f"--prepared {folder}: no {MANIFEST} there; run `sddkit prepare --out {folder}` "
                           f"(`dvc repro` does) first")
    try:
        made_with = json.loads(path.read_text())["settings"]
        if not isinstance(made_with, dict):
            raise TypeError("its settings are not a mapping")
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise DatasetError(f"--prepared {folder}: {path} is damaged ({exc.__class__.__name__}: {exc}); rerun "
                           f"`sddkit prepare --out {folder}` (`dvc repro` does)") from exc
    return made_with


def data_files(folder: Path) -> list[DataFile]:
    check_present(folder)
    return [DataFile(str(folder / name), md5(folder / name)) for name in (SPLITS, NOISY)]


def check_present(folder: Path) -> None:
    missing = [name for name in (SPLITS, NOISY) if not (folder / name).is_file()]
    if missing:
        raise DatasetError(f"{folder / missing[0]} is missing; rerun `sddkit prepare --out {folder}`")


def load(folder: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The prepared arrays and noisy labels (for checks and notebooks)."""
    with np.load(folder / SPLITS) as splits:
        return {k: splits[k] for k in splits.files}, np.load(folder / NOISY)


# ---------------------------------------------------------------- deterministic files

def write_npz(f, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez``, minus the wall-clock timestamps numpy writes into the archive."""
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            with archive.open(zipfile.ZipInfo(f"{name}.npy", ZIP_EPOCH), "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)


def md5(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()

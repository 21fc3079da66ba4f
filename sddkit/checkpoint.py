"""A round's files: the bit-packed mask and the sparse weights (the values its mask keeps, plus every tensor no
mask covers: a round costs its density). The sparse file is a ``torch.save`` dict ``{"format":
"sddkit.sparse_weights", "version": 1, "sparse": [masked names], "tensors": {name: tensor}}`` (a masked name's
values 1-D, in mask order); a dense state dict (stored before) has no ``format``. Knows nothing of MLflow.
"""
from __future__ import annotations

import hashlib
import io

import numpy as np
import torch

FORMAT, VERSION = "sddkit.sparse_weights", 1
# Bytes torch.save adds to the values (zip headers, 64-byte alignment, the pickle): measured ≈ 0.3 KB a
# tensor (36 KB for ResNet-18's 122 tensors, at any density); size_bound leaves room on both.
FILE_OVERHEAD, TENSOR_OVERHEAD = 4096, 1024

State = dict[str, torch.Tensor]


class CheckpointError(ValueError):
    """A sparse file that does not fit its mask, or is not one; the message says how."""


def to_bytes(state: State, masks: dict[str, torch.Tensor]) -> bytes:
    """``state`` (the round's weights) as a sparse file under ``masks`` (the round's mask)."""
    buffer = io.BytesIO()
    torch.save(pack(state, masks), buffer)
    return buffer.getvalue()


def pack(state: State, masks: dict[str, torch.Tensor]) -> dict:
    """The object ``to_bytes`` saves. Raises ValueError when a weight holds a value where its mask prunes it:
    that value would be lost (the mask applier keeps pruned weights at ±0, or NaN once training diverged)."""
    missing = sorted(set(masks) - set(state))
    if missing:
        raise ValueError(f"the mask covers {missing[0]!r}, which the weights lack")
    tensors = {}
    for name, value in state.items():
        value = value.detach().cpu()
        if name not in masks:
            tensors[name] = value.clone()  # its own storage: torch.save writes a view's whole storage
            continue
        keep = masks[name].cpu().bool()
        if keep.shape != value.shape:
            raise ValueError(f"{name}: mask of shape {tuple(keep.shape)}, weight of shape {tuple(value.shape)}")
        stray = value.masked_select(~keep)
        if bool((stray[~stray.isnan()] != 0).any()):
            raise ValueError(f"{name} holds non-zero values where its mask prunes it; they would be lost")
        tensors[name] = value.masked_select(keep)
    return {"format": FORMAT, "version": VERSION, "sparse": list(masks), "tensors": tensors}


def is_sparse(stored: dict) -> bool:
    """Whether ``stored`` (a loaded weights file) is in this format rather than a dense state dict."""
    marker = stored.get("format")  # a dense state dict's values are tensors: never this text
    return isinstance(marker, str) and marker == FORMAT


def unpack(stored: dict, masks: dict[str, torch.Tensor]) -> State:
    """The dense state dict of a loaded sparse file, on the CPU. Raises CheckpointError when the file is not
    a version this code reads or does not fit ``masks`` (other names, another count of kept weights): a
    mismatch is never filled in silently."""
    if stored.get("version") != VERSION:
        raise CheckpointError(f"format version {stored.get('version')!r}, this sddkit reads {VERSION}")
    tensors, sparse = stored.get("tensors"), stored.get("sparse")
    if not isinstance(tensors, dict) or not isinstance(sparse, list) or not all(isinstance(n, str) for n in sparse):
        raise CheckpointError("no 'tensors' dict or 'sparse' list of names")
    if not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise CheckpointError("a value of 'tensors' is not a tensor")
    if set(sparse) != set(masks) or not set(sparse) <= set(tensors):
        differ = sorted(set(sparse) ^ set(masks)) or sorted(set(sparse) - set(tensors))
        raise CheckpointError(f"its sparse tensors and its mask's differ ({differ[0]!r})")
    dense = {}
    for name, value in tensors.items():
        dense[name] = expand(name, value, masks[name]) if name in masks else value
    return dense


def expand(name: str, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One weight, dense: ``values`` where ``mask`` keeps, +0 elsewhere."""
    keep = mask.cpu().bool()
    kept = int(keep.sum())
    if values.dim() != 1 or values.numel() != kept:
        raise CheckpointError(f"{name}: {values.numel():,} values stored, its mask keeps {kept:,}")
    return torch.zeros(keep.shape, dtype=values.dtype).masked_scatter_(keep, values)


def payload(state: State, masks: dict[str, torch.Tensor]) -> int:
    """The bytes of the values a sparse file must hold: kept weights plus every tensor no mask covers."""
    kept = sum(int(masks[n].sum()) * t.element_size() for n, t in state.items() if n in masks)
    return kept + sum(t.numel() * t.element_size() for n, t in state.items() if n not in masks)


def size_bound(state: State, prunable, density: float = 1.0) -> int:
    """An upper bound on the bytes of a sparse file of ``state`` whose mask covers the ``prunable`` names and
    keeps ``density`` of their weights in all, as ``pruning.prune`` counts them: round(density · total) with
    scope global, round(density · numel) a tensor with scope layer; both are ≤ density · total + one a tensor."""
    prunable = set(prunable)
    masked = [t for n, t in state.items() if n in prunable]
    kept = int(density * sum(t.numel() for t in masked)) + 1 + len(masked)
    widest = max((t.element_size() for t in masked), default=0)
    rest = sum(t.numel() * t.element_size() for n, t in state.items() if n not in prunable)
    return FILE_OVERHEAD + TENSOR_OVERHEAD * len(state) + kept * widest + rest


def digest(state: State) -> str:
    """A sha256 of ``state``'s names, dtypes, shapes and values, in order: what a trajectory records of its init
    instead of the init itself (rebuilt from the seed, it must hash the same)."""
    h = hashlib.sha256()
    for name, value in state.items():
        value = value.detach().cpu().contiguous()
        h.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        h.update(value.view(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return h.hexdigest()


def pack_mask(masks: dict[str, torch.Tensor]) -> bytes:
    """Bit-packed bool masks: 1 bit a weight, with each tensor's shape alongside."""
    arrays = {}
    for name, mask in masks.items():
        arrays[f"bits:{name}"] = np.packbits(mask.cpu().numpy().astype(bool).ravel())
        arrays[f"shape:{name}"] = np.asarray(mask.shape, dtype=np.int64)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def unpack_mask(content: bytes) -> dict[str, torch.Tensor]:
    with np.load(io.BytesIO(content)) as arrays:
        out = {}
        for key in arrays.files:
            if key.startswith("shape:"):
                name, shape = key[len("shape:"):], tuple(arrays[key])
                bits = np.unpackbits(arrays[f"bits:{name}"], count=int(np.prod(shape)))
                out[name] = torch.from_numpy(bits.astype(bool).reshape(shape))
        return out


def torch_bytes(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state.items()}, buffer)
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def bytes_needed(state: State, rounds: int, prunable: list[str] | None = None, rate: float = 0.0,
                 first: int = 0) -> int:
    """An upper bound on the bytes rounds ``first`` … ``rounds`` − 1 add to the store: each round's sparse
    weights and mask, one dense state (a rewind state) and a MiB of slack. Round r keeps (1 − ``rate``)^r of the
    ``prunable`` weights; without ``prunable`` every round counts dense (still a bound, up to 1/density loose)."""
    weights = sum(t.numel() * t.element_size() for t in state.values())
    mask = sum(t.numel() for t in state.values()) // 8
    density = lambda r: (1.0 - rate) ** r if prunable else 1.0  # noqa: E731 - pruning.density_after
    rounds_bytes = sum(size_bound(state, prunable or (), density(r)) for r in range(first, rounds))
    return rounds_bytes + max(0, rounds - first) * mask + weights + 2**20

"""Sparse checkpoints: a round's weights as the values its mask keeps, plus every tensor no mask covers.

A pruned round's state dict is mostly zeros; storing it dense costs the full model every round (44.8 MB for
ResNet-18, ≈1.4 GB over a 31-round trajectory). The file written here holds, for each tensor a mask covers,
only its kept values (``masked_select``: the mask's row-major order), and every other tensor (biases,
batch-norm parameters and buffers, excluded layers) dense. With the round's mask it becomes the dense state
dict again, bit for bit on the kept weights and exact zeros elsewhere.

The format is a ``torch.save`` file (a zip archive; ``torch.load(..., weights_only=True)`` reads it) of one
dict::

    {"format": "sddkit.sparse_weights", "version": 1,
     "sparse": [names a mask covers],              # exactly the mask's keys
     "tensors": {name: tensor, ...}}               # every state-dict key, in state-dict order; a sparse
                                                   # name maps to its kept values, 1-D, in the weight's dtype

A dense state dict (what sddkit stored before) has no ``format`` key: ``is_sparse`` tells the two apart.
Knows nothing of MLflow: ``tracking`` stores and fetches the bytes.
"""
from __future__ import annotations

import hashlib
import io

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

"""Masks (a bool tensor per prunable weight, True keeps it): scoring, pruning to a density, applying them.
Knows nothing of data: the gradient criterion gets gradients ``train`` accumulated."""
from __future__ import annotations

import sys

import torch

Masks = dict[str, torch.Tensor]


def dense_masks(weights: dict[str, torch.Tensor]) -> Masks:
    return {name: torch.ones_like(w, dtype=torch.bool) for name, w in weights.items()}


def density_after(rounds: int, rate: float) -> float:
    return (1.0 - rate) ** rounds


def max_rounds(sizes: dict[str, int], rate: float) -> tuple[int, str]:
    """The most rounds after which every tensor (name -> numel) keeps round(density · numel) ≥ 1 weights (with
    scope=global: its proportional share), and the tensor that runs out first."""
    name = min(sizes, key=sizes.get)
    keeps = lambda r: round(density_after(r, rate) * sizes[name]) >= 1  # noqa: E731
    if density_after(1, rate) == 1.0:
        return sys.maxsize, name  # a rate below float resolution never removes a weight
    lo, hi = 0, 1  # keeps(lo) and, once the doubling stops, not keeps(hi)
    while keeps(hi):
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if keeps(mid) else (lo, mid)
    return lo, name


def score(weights: dict[str, torch.Tensor], criterion: str, gradients: dict[str, torch.Tensor] | None = None,
          gen: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Importance per weight: |w|, |w · ∂L/∂w| or uniform noise (one fresh draw per tensor)."""
    if criterion == "magnitude":
        return {n: w.detach().abs() for n, w in weights.items()}
    if criterion == "gradient":
        if gradients is None:
            raise ValueError("the gradient criterion needs accumulated gradients")
        return {n: (w.detach() * gradients[n]).abs() for n, w in weights.items()}
    if criterion == "random":
        # One generator drawn from in sequence: two same-shaped tensors never get the same scores.
        return {n: torch.rand(w.shape, generator=gen, device=gen.device if gen else "cpu").to(w.device)
                for n, w in weights.items()}
    raise ValueError(f"prune.criterion = {criterion!r}: unknown")


def prune(scores: dict[str, torch.Tensor], masks: Masks, density: float, scope: str) -> Masks:
    """The highest-scoring live weights, round(density · count) of all tensors (global) or of each (layer);
    pruned weights never come back."""
    live = {n: torch.where(masks[n], scores[n].float(), torch.tensor(float("-inf"), device=scores[n].device))
            for n in scores}
    if scope == "layer":
        return {n: _keep_top(s.flatten(), round(density * s.numel())).view_as(s) for n, s in live.items()}
    if scope != "global":
        raise ValueError(f"prune.scope = {scope!r}: unknown")
    flat = torch.cat([s.flatten() for s in live.values()])  # on the scores' device: no copy to the host
    keep = _keep_top(flat, round(density * flat.numel()))
    out, start = {}, 0
    for n, s in live.items():
        out[n] = keep[start:start + s.numel()].view_as(s)
        start += s.numel()
    return out


def _keep_top(scores: torch.Tensor, count: int) -> torch.Tensor:
    count = min(count, int(torch.isfinite(scores).sum()))
    keep = torch.zeros_like(scores, dtype=torch.bool)
    keep[torch.topk(scores, count, sorted=False).indices] = True
    return keep


def sparsity(masks: Masks) -> float:
    total = sum(m.numel() for m in masks.values())
    return 1.0 - sum(int(m.sum()) for m in masks.values()) / total


def layer_sparsity(masks: Masks) -> dict[str, float]:
    return {n: 1.0 - float(m.float().mean()) for n, m in masks.items()}


class MaskApplier:
    """Zeroes pruned weights with one fused multiply, called after each optimizer step."""

    def __init__(self, weights: dict[str, torch.Tensor], masks: Masks):
        self.weights = [weights[n] for n in masks]
        # empty_like keeps each weight's memory layout (channels_last on CUDA): the fused multiply only
        # takes one launch when every factor matches its weight's strides.
        self.factors = [torch.empty_like(weights[n]).copy_(m) for n, m in masks.items()]

    @torch.no_grad()
    def __call__(self) -> None:
        if self.weights:
            torch._foreach_mul_(self.weights, self.factors)

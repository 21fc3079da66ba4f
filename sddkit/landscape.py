"""Lines through weight space: linear interpolation between two solutions, the 1-D loss landscape along a
filter-normalised random direction (Li et al., 2018) and its sharpness. Builds states; the caller evaluates them."""
from __future__ import annotations

import numpy as np
import torch

State = dict[str, torch.Tensor]


# ---------------------------------------------------------------- interpolation

def alphas(step: float) -> list[float]:
    """0, step, 2·step, …, 1 (the last step may be shorter)."""
    if not 0.0 < step <= 1.0:
        raise ValueError(f"interpolation step {step}: use 0 < step ≤ 1, e.g. 0.05 (the paper used 0.01)")
    count = int(np.floor(1.0 / step + 1e-9))
    values = [round(i * step, 12) for i in range(count + 1)]
    return values if values[-1] >= 1.0 - 1e-12 else values + [1.0]


def blend(a: State, b: State, alpha: float) -> State:
    """(1 − α)·a + α·b for every floating entry, buffers included; integer entries from the nearer end."""
    out = {}
    for key, value in a.items():
        if value.is_floating_point():
            out[key] = (1.0 - alpha) * value + alpha * b[key].to(value.device)
        else:
            out[key] = (value if alpha < 0.5 else b[key]).clone()
    return out


# ---------------------------------------------------------------- 1-D landscape

def filter_normalised_direction(weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor],
                                gen: torch.Generator) -> State:
    """A Gaussian direction per weight, pruned entries 0, each filter (``w[i]``) rescaled to the norm of the
    matching one of ``weights``; drawn on the CPU, so a seed gives the same direction on every device."""
    direction = {}
    for name, w in weights.items():
        w = w.detach().float().cpu()
        d = torch.randn(w.shape, generator=gen, dtype=torch.float32)
        if name in masks:
            d = d * masks[name].cpu()
            w = w * masks[name].cpu()
        rows = d.flatten(1)  # conv (out, in, kh, kw) and linear (out, in) weights: one row per filter
        scale = w.flatten(1).norm(dim=1) / rows.norm(dim=1).clamp_min(1e-12)
        direction[name] = (rows * scale[:, None]).view(w.shape)
    return direction


def shifted(state: State, direction: State, t: float) -> State:
    """state + t·direction; entries without a direction (biases, batch norm) stay."""
    return {k: (v + t * direction[k].to(v.device, v.dtype)) if k in direction else v for k, v in state.items()}


def grid(points: int, radius: float) -> list[float]:
    """``points`` evenly spaced t in [−1, 1], plus 0 and ±radius."""
    if points < 2:
        raise ValueError(f"landscape points {points}: use at least 2 (e.g. 41)")
    values = {round(float(t), 10) for t in np.linspace(-1.0, 1.0, points)} | {0.0, -radius, radius}
    return sorted(values)


def sharpness(ts: list[float], losses: list[float], radius: float) -> float:
    """The largest rise of the loss above its value at t = 0 within |t| ≤ radius (≥ 0)."""
    if 0.0 not in ts:
        raise ValueError("sharpness needs the loss at t = 0")
    centre = losses[ts.index(0.0)]
    return max(loss - centre for t, loss in zip(ts, losses) if abs(t) <= radius + 1e-12)

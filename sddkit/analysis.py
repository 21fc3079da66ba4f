"""What the curve means: learning distance and the phases of sparse double descent.

``phases`` is the one definition used by the closing summary, ``compare`` and the tests.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def learning_distance(reference: dict[str, torch.Tensor], weights: dict[str, torch.Tensor],
                      masks: dict[str, torch.Tensor]) -> float:
    """‖w_ref − w‖₂ over the masked (prunable) weights, pruned entries of ``w`` counted as 0.

    With ``reference`` the dense initialisation this is the paper's learning distance.
    """
    total = torch.zeros((), dtype=torch.float64)
    for name, mask in masks.items():
        w = weights[name].detach().double().cpu() * mask.cpu()
        total += (reference[name].detach().double().cpu() - w).pow(2).sum()
    return float(total.sqrt())


@dataclass(frozen=True)
class Phases:
    dense: int                 # round index of each landmark
    minimum: int | None        # lowest test accuracy among rounds still interpolating the noisy labels
    peak: int | None           # highest test accuracy after the minimum
    last: int
    interpolation_threshold: int | None  # first round whose train_acc_noisy falls below the threshold

    def label(self, round_index: int) -> str:
        """light (before the minimum), critical (from the minimum while the net still interpolates),
        sweet (from the interpolation threshold up to the peak), collapse (after the peak)."""
        if self.minimum is None or round_index < self.minimum:
            return "light"
        sweet_from = max(self.minimum + 1, self.interpolation_threshold or 0)
        if round_index < sweet_from:
            return "critical"
        if self.peak is None or round_index <= self.peak:
            return "sweet"
        return "collapse"


def phases(rows: list[dict], threshold: float = 95.0) -> Phases:
    """Landmarks of a trajectory from its per-round rows (``test_acc``, ``train_acc_noisy``)."""
    if not rows:
        raise ValueError("a trajectory with no rounds has no phases")
    interpolating = [i for i, r in enumerate(rows) if r["train_acc_noisy"] >= threshold]
    minimum = min(interpolating, key=lambda i: rows[i]["test_acc"]) if interpolating else None
    after = range(minimum + 1, len(rows)) if minimum is not None else range(0)
    peak = max(after, key=lambda i: rows[i]["test_acc"]) if len(after) else None
    below = [i for i, r in enumerate(rows) if r["train_acc_noisy"] < threshold]
    return Phases(0, minimum, peak, len(rows) - 1, below[0] if below else None)


def double_descent_margins(rows: list[dict], ph: Phases) -> dict[str, float]:
    """dip = dense − minimum, rise = peak − minimum, drop = peak − last (test accuracy points)."""
    acc = [r["test_acc"] for r in rows]
    if ph.minimum is None or ph.peak is None:
        return {"dip": float("nan"), "rise": float("nan"), "drop": float("nan")}
    return {"dip": acc[ph.dense] - acc[ph.minimum], "rise": acc[ph.peak] - acc[ph.minimum],
            "drop": acc[ph.peak] - acc[ph.last]}


# The quick preset's promise (issue: minimum ≤ dense − 3, peak ≥ minimum + 8, last ≤ peak − 5).
QUICK_CRITERIA = {"dip": 3.0, "rise": 8.0, "drop": 5.0}


def shows_double_descent(rows: list[dict], ph: Phases, criteria: dict[str, float] = QUICK_CRITERIA) -> bool:
    margins = double_descent_margins(rows, ph)
    return all(margins[k] >= v for k, v in criteria.items())


PHASE_NAMES = ("light", "critical", "sweet", "collapse")


def phase_spans(ph: Phases) -> dict[str, tuple[int, int]]:
    """First and last round of each phase that occurs (phases are contiguous and in order)."""
    spans: dict[str, tuple[int, int]] = {}
    for r in range(ph.last + 1):
        label = ph.label(r)
        spans[label] = (spans.get(label, (r, r))[0], r)
    return spans


def phase_metrics(ph: Phases) -> dict[str, int]:
    """Parent-run metrics: ``phase_<name>_first``/``_last`` round of each phase that occurs."""
    out = {}
    for name, (first, last) in phase_spans(ph).items():
        out[f"phase_{name}_first"], out[f"phase_{name}_last"] = first, last
    return out


def phase_tags(ph: Phases) -> dict[str, str]:
    """Parent-run tags: ``sddkit.phase.<name>`` = "first-last" (or "none") and the interpolation threshold."""
    spans = phase_spans(ph)
    tags = {f"sddkit.phase.{name}": (f"{spans[name][0]}-{spans[name][1]}" if name in spans else "none")
            for name in PHASE_NAMES}
    threshold = ph.interpolation_threshold
    tags["sddkit.interpolation_threshold"] = "none" if threshold is None else str(threshold)
    return tags

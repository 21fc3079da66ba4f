"""What the curve means: learning distance, and the phases of sparse double descent (``phases``, the one
definition the summary, ``compare`` and the tests use; docs/analysis.md)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sddkit.config import AnalysisConfig

if TYPE_CHECKING:  # torch only where weights are measured: compare's table reads phases without it
    import torch


def learning_distance(reference: dict[str, torch.Tensor], weights: dict[str, torch.Tensor],
                      masks: dict[str, torch.Tensor]) -> float:
    """‖w_ref − w‖₂ over the masked weights, pruned entries of ``w`` as 0 (from the init: the paper's distance)."""
    import torch
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
    critical: int | None = None  # first round, up to the minimum, more than the light tolerance below dense
    fit_level: float = AnalysisConfig.interpolation_threshold  # train_acc_noisy (%) that counts as a fit

    def label(self, round_index: int) -> str:
        """light, critical (from the first round more than the tolerance below dense), sweet (from the
        interpolation threshold to the peak), collapse (after it); contiguous. '' when no round fits the noisy
        labels: phases are defined from that fit, and "light" would hide any fall of test accuracy."""
        if self.minimum is None:
            return ""
        sweet_from = max(self.minimum + 1, self.interpolation_threshold or 0)
        if round_index < sweet_from:
            return "light" if self.critical is None or round_index < self.critical else "critical"
        if self.peak is None or round_index <= self.peak:
            return "sweet"
        return "collapse"


def phases(rows: list[dict], threshold: float = AnalysisConfig.interpolation_threshold,
           light_tolerance: float = AnalysisConfig.light_tolerance) -> Phases:
    """Landmarks of per-round rows (``test_acc``, ``train_acc_noisy``): ``threshold`` in % of the noisy labels
    fitted, ``light_tolerance`` in test accuracy points."""
    if not rows:
        raise ValueError("a trajectory with no rounds has no phases")
    if light_tolerance <= 0:
        raise ValueError(f"light_tolerance = {light_tolerance}: must be > 0 points (round 0 is light)")
    interpolating = [i for i, r in enumerate(rows) if r["train_acc_noisy"] >= threshold]
    minimum = min(interpolating, key=lambda i: rows[i]["test_acc"]) if interpolating else None
    after = range(minimum + 1, len(rows)) if minimum is not None else range(0)
    peak = max(after, key=lambda i: rows[i]["test_acc"]) if len(after) else None
    below = [i for i, r in enumerate(rows) if r["train_acc_noisy"] < threshold]
    critical = first_drop(rows, minimum, light_tolerance) if minimum is not None else None
    return Phases(0, minimum, peak, len(rows) - 1, below[0] if below else None, critical, threshold)


def first_drop(rows: list[dict], until: int, tolerance: float) -> int | None:
    """The first round up to ``until`` whose test accuracy is more than ``tolerance`` points below dense."""
    dense = rows[0]["test_acc"]
    # Rounded: float32 percentages (80.3 is 80.29999733) must not turn a drop of exactly the tolerance into more.
    return next((i for i in range(until + 1) if round(dense - rows[i]["test_acc"], 4) > tolerance), None)


def double_descent_margins(rows: list[dict], ph: Phases) -> dict[str, float]:
    """dip = dense − minimum, rise = peak − minimum, drop = peak − last, in test accuracy points."""
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
    """First and last round of each phase that occurs."""
    spans: dict[str, tuple[int, int]] = {}
    for r in range(ph.last + 1):
        label = ph.label(r)
        if not label:  # no phases at all (nothing fits the noisy labels)
            continue
        spans[label] = (spans.get(label, (r, r))[0], r)
    return spans


def phase_metrics(ph: Phases) -> dict[str, int]:
    """``phase_<name>_first``/``_last`` of each phase that occurs."""
    out = {}
    for name, (first, last) in phase_spans(ph).items():
        out[f"phase_{name}_first"], out[f"phase_{name}_last"] = first, last
    return out


def phase_tags(ph: Phases) -> dict[str, str]:
    """``sddkit.phase.<name>`` = "first-last" (or "none") and the interpolation threshold."""
    spans = phase_spans(ph)
    tags = {f"sddkit.phase.{name}": (f"{spans[name][0]}-{spans[name][1]}" if name in spans else "none")
            for name in PHASE_NAMES}
    threshold = ph.interpolation_threshold
    tags["sddkit.interpolation_threshold"] = "none" if threshold is None else str(threshold)
    return tags

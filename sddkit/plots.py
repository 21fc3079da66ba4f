"""Figures: accuracy against sparsity (remaining fraction on a log axis, dense on the left), and the
loss/accuracy lines of interpolation and loss-landscape scans."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def curve_png(series: dict[str, dict[str, np.ndarray]], title: str = "") -> bytes:
    """One colour per series; each holds ``remaining`` and ``test_acc``/``train_acc_noisy`` means and,
    optionally, ``*_std`` arrays drawn as bands."""
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for i, (name, s) in enumerate(series.items()):
        colour = f"C{i}"
        x = np.asarray(s["remaining"]) * 100.0
        for key, style, label in (("test_acc", "-", "test"), ("train_acc_noisy", "--", "train (noisy labels)")):
            y = np.asarray(s[key])
            ax.plot(x, y, style, color=colour, marker="o" if key == "test_acc" else None, markersize=3,
                    label=f"{name}: {label}")
            if f"{key}_std" in s:
                std = np.asarray(s[f"{key}_std"])
                ax.fill_between(x, y - std, y + std, color=colour, alpha=0.15, linewidth=0)
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("remaining weights (%) — sparsity grows to the right")
    ax.set_ylabel("accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return png_bytes(fig)


def line_png(xs: list[float], rows: list[dict[str, float]], xlabel: str, title: str,
             marks: tuple[float, ...] = ()) -> bytes:
    """Two panels against ``xs``: train/test loss and train/test accuracy; ``marks`` draws dotted
    vertical lines (e.g. at ±radius, where sharpness is read)."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    for ax, kind in ((loss_ax, "loss"), (acc_ax, "acc")):
        for key, label in ((f"train_{kind}_noisy", "train (noisy labels)"), (f"test_{kind}", "test")):
            ax.plot(xs, [r[key] for r in rows], marker="o", markersize=2, label=label)
        for x in marks:
            ax.axvline(x, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("cross-entropy loss" if kind == "loss" else "accuracy (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return png_bytes(fig)


def png_bytes(fig) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()

"""Figures: accuracy against sparsity (remaining fraction on a log axis, dense on the left), and the
loss/accuracy lines of interpolation and loss-landscape scans."""
from __future__ import annotations

import io
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter  # noqa: E402


def curve_png(series: dict[str, dict[str, np.ndarray]], title: str = "") -> bytes:
    """A trajectory's curve (run --results, sweep --seeds): one colour per series of ``remaining``, ``test_acc``,
    ``train_acc_noisy`` and optional ``*_std`` bands."""
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
    remaining_axis(ax, [100 * r for s in series.values() for r in s["remaining"]])
    ax.set_ylabel("accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return figure_bytes(fig)


# ---------------------------------------------------------------- the compare figure

PHASE_COLOURS = {"light": "#dbe9f6", "critical": "#f6cfc9", "sweet": "#d3edd3", "collapse": "#e3e3e3"}
LANDMARK_MARKERS = {"dense": "s", "minimum": "v", "peak": "^", "last": "X"}


@dataclass
class Series:
    """One compared curve, in plain numbers: per round the remaining fraction, the means and (``None`` for a
    single run) the stds of test and noisy-train accuracy, and its phase; landmarks by round index."""
    label: str
    remaining: list[float]
    test_acc: list[float]
    train_acc_noisy: list[float]
    phases: list[str]
    landmarks: dict[str, int]
    test_acc_std: list[float] | None = None
    train_acc_noisy_std: list[float] | None = None
    paper: dict[str, tuple[float, float]] | None = None  # landmark -> (remaining fraction, test acc), read off
    paper_label: str = ""


def compare_figure(series: list[Series], title: str, fmt: str = "png") -> bytes:
    return figure_bytes(draw_compare(series, title), fmt, tight_layout=False)  # the box still fits the legend


def draw_compare(series: list[Series], title: str):
    """Accuracy against remaining weights (log axis, % ticks, dense on the left, sparsity on top): mean lines,
    ± std bands, landmark markers, dotted lines at each minimum and peak, the paper's read-offs as hollow
    diamonds; below, one strip a curve with its phases shaded."""
    fig = plt.figure(figsize=(10, 5.2 + 0.28 * len(series)), dpi=130)
    grid = fig.add_gridspec(2, 1, height_ratios=[5.0, 0.3 + 0.28 * len(series)], hspace=0.06)
    ax = fig.add_subplot(grid[0])
    draw_panel(ax, fig.add_subplot(grid[1], sharex=ax), series, [100 * r for s in series for r in s.remaining])
    ax.set_ylabel("accuracy (%)")
    legend(ax, ax.get_legend_handles_labels()[0], series)
    ax.set_title(title, fontsize=10)
    return fig


def panels_figure(panels: list[tuple[str, list[Series | None]]], title: str, fmt: str = "png") -> bytes:
    return figure_bytes(draw_panels(panels, title), fmt, tight_layout=False)


def draw_panels(panels: list[tuple[str, list[Series | None]]], title: str):
    """``draw_compare`` once per ``(panel title, series)``, side by side, sharing the axes. Series ``i`` of every
    panel is one curve (colour ``C{i}``; None where a panel lacks it); one legend, beside the last panel."""
    slots = max(len(series) for _, series in panels)
    fig = plt.figure(figsize=(1.6 + 4.2 * len(panels), 5.2 + 0.28 * slots), dpi=130)
    grid = fig.add_gridspec(2, len(panels), height_ratios=[5.0, 0.3 + 0.28 * slots], hspace=0.06, wspace=0.05)
    xs = [100 * r for _, series in panels for s in series if s is not None for r in s.remaining]
    each = [next((series[i] for _, series in panels if i < len(series) and series[i] is not None), None)
            for i in range(slots)]
    names = [s.label if s is not None else "" for s in each]  # a strip row is named even where a panel lacks it
    first = None
    for j, (name, series) in enumerate(panels):
        ax = fig.add_subplot(grid[0, j], sharey=first)
        strip = fig.add_subplot(grid[1, j], sharex=ax)
        first = first or ax
        draw_panel(ax, strip, series, xs, names)
        strip.set_xlabel("")  # once for all, below
        ax.tick_params(labelleft=j == 0)
        strip.tick_params(labelleft=j == 0)
        ax.set_title(name, fontsize=10)
    first.set_ylabel("accuracy (%)")
    fig.supxlabel("remaining weights (log scale) — sparsity grows to the right", fontsize=10)
    fig.suptitle(title, fontsize=11, y=1.0, va="bottom")  # above the panels' titles, whatever their height
    curves = [Line2D([], [], color=f"C{i}", linewidth=1.4, marker="o", markersize=2.5, label=s.label)
              for i, s in enumerate(each) if s is not None]
    legend(ax, curves, [s for s in each if s is not None])
    return fig


def draw_panel(ax, strip, series: list[Series | None], percents: list[float], names: list[str] | None = None) -> None:
    """The curves on ``ax``, their phases on ``strip`` below it, over the remaining weights ``percents`` span."""
    for i, s in enumerate(series):
        if s is not None:
            draw_series(ax, s, f"C{i}")
    draw_phase_strip(strip, series, names)
    remaining_axis(strip, percents)
    sparsity_axis(ax, percents)
    ax.tick_params(labelbottom=False)
    ax.grid(True, which="major", alpha=0.3)


def draw_series(ax, s: Series, colour: str) -> None:
    x = 100 * np.asarray(s.remaining)
    for key, style in (("test_acc", "-"), ("train_acc_noisy", "--")):
        y = np.asarray(getattr(s, key))
        ax.plot(x, y, style, color=colour, linewidth=1.4, marker="o" if key == "test_acc" else None, markersize=2.5,
                label=s.label if key == "test_acc" else None)
        std = getattr(s, f"{key}_std")
        if std is not None:
            ax.fill_between(x, y - np.asarray(std), y + np.asarray(std), color=colour,
                            alpha=0.18 if key == "test_acc" else 0.09, linewidth=0)
    for name, i in landmarks_of(s).items():
        ax.plot(x[i], s.test_acc[i], LANDMARK_MARKERS[name], color=colour, markersize=8, markeredgecolor="black",
                markeredgewidth=0.8, zorder=5)
        if name in ("minimum", "peak"):
            ax.axvline(x[i], color=colour, linestyle=":", linewidth=1, alpha=0.7)
    if s.paper:
        points = [s.paper[k] for k in ("dense", "minimum", "peak") if k in s.paper]
        ax.plot([100 * p[0] for p in points], [p[1] for p in points], "D", color=colour, markerfacecolor="none",
                markersize=7, markeredgewidth=1.3, zorder=6)


def landmarks_of(s: Series) -> dict[str, int]:  # a short or never-fitting curve lacks minimum and peak
    return {name: i for name, i in s.landmarks.items() if i is not None}


def legend(ax, curves: list, series: list[Series]) -> None:
    """Beside ``ax``: the ``curves``' handles, then what the line styles and markers mean."""
    handles = list(curves)
    grey = dict(color="0.35", linewidth=1.4)
    handles += [Line2D([], [], linestyle="-", label="test accuracy (mean" + (" ± std)" if any(
                    s.test_acc_std is not None for s in series) else ")"), **grey),
                Line2D([], [], linestyle="--", label="train accuracy, noisy labels", **grey)]
    drawn = {name for s in series for name in landmarks_of(s)}  # a marker no curve has is not explained
    handles += [Line2D([], [], linestyle="none", marker=m, color="0.6", markeredgecolor="black", markersize=7,
                       label=name) for name, m in LANDMARK_MARKERS.items() if name in drawn]
    handles += [Line2D([], [], linestyle="none", marker="D", color=f"C{i}", markerfacecolor="none", markersize=6,
                       label=f"paper: {s.paper_label}") for i, s in enumerate(series) if s.paper]
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def draw_phase_strip(ax, series: list[Series | None], names: list[str] | None = None) -> None:
    """One row a curve (the first on top; a None's row left empty): each phase a shaded span, edges halfway (on
    the log axis) between the rounds on either side of a change, or "no phases" where it never fits."""
    names = names or [s.label if s is not None else "" for s in series]
    for row, s in enumerate(series):
        if s is None:
            continue
        x = 100 * np.asarray(s.remaining)
        edges = np.concatenate([[x[0]], np.sqrt(x[:-1] * x[1:]), [x[-1]]])
        first = 0
        for i in range(1, len(s.phases) + 1):
            if i < len(s.phases) and s.phases[i] == s.phases[first]:
                continue
            left, right = edges[first], edges[i]
            phase = s.phases[first]
            ax.barh(row, right - left, left=left, height=0.8, color=PHASE_COLOURS.get(phase, "white"),
                    edgecolor=f"C{row}", linewidth=0.6)
            text = phase or "no phases: never fits the noisy labels"
            if not phase or np.log10(left / right) > 0.12 * np.log10(x[0] / x[-1]):
                ax.text(np.sqrt(left * right), row, text, ha="center", va="center", fontsize=7)
            first = i
    ax.set_yticks(range(len(series)), names, fontsize=7)
    for tick, i in zip(ax.get_yticklabels(), range(len(series))):
        tick.set_color(f"C{i}")
    ax.set_ylim(len(series) - 0.5, -0.5)
    ax.tick_params(axis="y", length=0)


def remaining_axis(ax, percents: list[float]) -> None:
    """Remaining weights (%) on a log x axis, dense on the left, ticked 100%, 10%, 1%... (never 10²)."""
    ax.set_xscale("log")
    ax.set_xlim(max(percents) * 1.15, min(percents) / 1.15)  # inverted: sparsity grows to the right
    percent_ticks_on(ax.xaxis, percents, lambda v: v)
    ax.set_xlabel("remaining weights (log scale) — sparsity grows to the right")


def sparsity_axis(ax, percents: list[float]) -> None:
    """The same positions on top, labelled with the sparsity (the paper's x axis)."""
    top = ax.secondary_xaxis("top")
    percent_ticks_on(top.xaxis, percents, lambda v: 100 - v)
    top.set_xlabel("sparsity", fontsize=8)
    top.tick_params(labelsize=8)


def percent_ticks_on(axis, percents: list[float], shown) -> None:
    axis.set_major_locator(FixedLocator(percent_ticks(min(percents) / 1.15, max(percents) * 1.15)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: percent_text(shown(v))))
    axis.set_minor_formatter(NullFormatter())


def percent_ticks(lo: float, hi: float) -> list[float]:
    """Tick positions (in %) within [lo, hi]: decades if three fit, else 1-2-5 steps, else every digit."""
    def within(steps):
        return [round(m * 10.0 ** e, 10) for e in range(-8, 3) for m in steps if lo <= m * 10.0 ** e <= hi]
    for steps in ((1,), (1, 2, 5), tuple(range(1, 10))):
        ticks = within(steps)
        if len(ticks) >= 3:
            return ticks
    return ticks


def percent_text(value: float) -> str:
    """100 -> "100%", 0.1 -> "0.1%", 0.00001 -> "0.00001%" (plain decimals, never 1e-05)."""
    return np.format_float_positional(round(value, 8), trim="-") + "%"


def metric_png(series: list[dict], metric: str, title: str) -> bytes:
    """A per-round metric (learning distance, sharpness), mean ± std over seeds, with each curve's mean test
    accuracy on a second axis (dotted). Each series: ``label``, ``remaining``, ``mean``, ``std``, ``test_acc``."""
    fig, ax = plt.subplots(figsize=(10, 4.2), dpi=130)
    acc_ax = ax.twinx()
    for i, s in enumerate(series):
        x, y, std = 100 * np.asarray(s["remaining"]), np.asarray(s["mean"]), np.asarray(s["std"])
        ax.plot(x, y, "-", color=f"C{i}", marker="o", markersize=2.5, linewidth=1.4, label=f"{s['label']}: {metric}")
        ax.fill_between(x, y - std, y + std, color=f"C{i}", alpha=0.18, linewidth=0)
        acc_ax.plot(x, s["test_acc"], ":", color=f"C{i}", alpha=0.7, linewidth=1.2,
                    label=f"{s['label']}: test accuracy (right axis)")
    remaining_axis(ax, [100 * r for s in series for r in s["remaining"]])
    ax.set_ylabel(metric)
    acc_ax.set_ylabel("test accuracy (%)")
    ax.grid(True, which="major", alpha=0.3)
    lines = ax.get_legend_handles_labels()[0] + acc_ax.get_legend_handles_labels()[0]
    ax.legend(handles=lines, fontsize=8, loc="upper left", bbox_to_anchor=(1.08, 1.0), frameon=False)
    ax.set_title(title, fontsize=10)
    return figure_bytes(fig, tight_layout=False)


def line_png(xs: list[float], rows: list[dict[str, float]], xlabel: str, title: str,
             marks: tuple[float, ...] = ()) -> bytes:
    """Train/test loss and accuracy against ``xs``; ``marks``: dotted vertical lines (±radius of sharpness)."""
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
    return figure_bytes(fig)


def figure_bytes(fig, fmt: str = "png", tight_layout: bool = True) -> bytes:
    """The figure as a file's bytes; no date or software version in it, so the same curves give the same file."""
    if tight_layout:
        fig.tight_layout()
    metadata = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Producer": None},
                "svg": {"Date": None}}[fmt]
    buffer = io.BytesIO()
    with plt.rc_context({"svg.hashsalt": "sddkit"}):  # else SVG ids are random
        fig.savefig(buffer, format=fmt, metadata=metadata, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()

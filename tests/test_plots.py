"""Figures: the compare figure from the fixed quick-preset curves in tests/data, its axis and its formats."""
from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from sddkit import analysis, plots, results

DATA = Path(__file__).parent / "data"


def quick_rows() -> list[list[dict]]:
    return [[{k: float(v) for k, v in r.items() if k != "phase"} for r in csv.DictReader(f.open())]
            for f in sorted(DATA.glob("quick-preset-*-seed*.csv"))]


def quick_series(**extra) -> plots.Series:
    rows = results.mean_rows(quick_rows())
    ph = analysis.phases(rows)
    series = plots.Series("lottery (n=3)", [r["remaining"] for r in rows], [r["test_acc"] for r in rows],
                        [r["train_acc_noisy"] for r in rows], [ph.label(i) for i in range(len(rows))],
                        {"dense": ph.dense, "minimum": ph.minimum, "peak": ph.peak, "last": ph.last},
                        [r["test_acc_std"] for r in rows], [r["train_acc_noisy_std"] for r in rows])
    return dataclasses.replace(series, **extra)


@pytest.mark.parametrize("lo, hi, ticks", [
    (0.01, 115, [0.01, 0.1, 1, 10, 100]),      # decades when three fit
    (8, 115, [10, 20, 50, 100]),               # else 1-2-5
    (40, 115, [40, 50, 60, 70, 80, 90, 100]),  # else every digit
])
def test_percent_ticks(lo, hi, ticks):
    assert plots.percent_ticks(lo, hi) == pytest.approx(ticks)


def test_percent_text_is_plain():
    assert [plots.percent_text(v) for v in (100, 10, 1, 0.1, 0.00001)] == ["100%", "10%", "1%", "0.1%", "0.00001%"]


def test_remaining_axis_is_log_inverted_with_plain_percent_labels():
    fig, ax = plt.subplots()
    ax.plot([100, 0.08], [1, 2])
    plots.remaining_axis(ax, [100, 0.08])
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    minor = [t.get_text() for t in ax.xaxis.get_minorticklabels() if t.get_text()]
    plt.close(fig)
    assert ax.get_xscale() == "log" and ax.get_xlim()[0] > ax.get_xlim()[1]  # dense on the left
    assert labels == ["0.1%", "1%", "10%", "100%"] and minor == []  # no 10² nor 6×10¹


@pytest.mark.parametrize("fmt, magic", [("png", b"\x89PNG"), ("pdf", b"%PDF"), ("svg", b"<?xml")])
def test_compare_figure_formats(fmt, magic):
    assert plots.compare_figure([quick_series()], "title", fmt).startswith(magic)


def test_compare_figure_is_the_same_file_for_the_same_curves():
    paper = {"dense": (1.0, 83.4), "minimum": (0.107, 76.5), "peak": (0.012, 95.5)}
    one = plots.compare_figure([quick_series(paper=paper, paper_label="x")], "t", "svg")
    assert one == plots.compare_figure([quick_series(paper=paper, paper_label="x")], "t", "svg")


def test_a_single_run_draws_no_band():
    fig, ax = plt.subplots()
    plots.draw_series(ax, quick_series(test_acc_std=None, train_acc_noisy_std=None), "C0")
    assert not ax.collections  # fill_between adds a collection per band
    plots.draw_series(ax, quick_series(), "C1")
    assert len(ax.collections) == 2
    plt.close(fig)


# ---------------------------------------------------------------- one panel per value (compare --by)

def two_panels() -> list[tuple[str, list]]:
    lottery, reinit = quick_series(), quick_series(label="reinit (n=1)", test_acc_std=None, train_acc_noisy_std=None)
    return [("noise.ratio = 0.2", [lottery, reinit]), ("noise.ratio = 0.4", [None, reinit])]


def test_panels_share_the_accuracy_axis_and_keep_each_curves_colour():
    fig = plots.draw_panels(two_panels(), "mnist5k · lenet300_100")
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["noise.ratio = 0.2", "noise.ratio = 0.4"]
    assert panels[0].get_shared_y_axes().joined(panels[0], panels[1])
    assert [line.get_color() for line in panels[1].get_lines() if line.get_label() == "reinit (n=1)"] == ["C1"]
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) == 1  # one legend for all panels, each curve once
    assert [t.get_text() for t in legends[0].get_texts()][:2] == ["lottery (n=3)", "reinit (n=1)"]
    assert len(panels[0].collections) == 2 and not panels[1].collections  # bands only where n > 1
    plt.close(fig)


@pytest.mark.parametrize("fmt, magic", [("png", b"\x89PNG"), ("pdf", b"%PDF")])
def test_panels_figure_formats(fmt, magic):
    assert plots.panels_figure(two_panels(), "title", fmt).startswith(magic)


def test_phase_strips_are_named_by_trajectory_and_the_legend_explains_only_drawn_markers():
    """The strips read "phases 1/2" and the legend listed minimum/peak markers no curve had (issue 29)."""
    short = quick_series(label="reinit (n=1)", landmarks={"dense": 0, "minimum": None, "peak": None, "last": 1},
                         remaining=[1.0, 0.8], test_acc=[80.0, 76.0], train_acc_noisy=[70.0, 60.0],
                         phases=["", ""], test_acc_std=None, train_acc_noisy_std=None)
    fig = plots.draw_compare([short], "t")
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    strip = fig.axes[1]
    assert [t.get_text() for t in strip.get_yticklabels()] == ["reinit (n=1)"]
    assert "minimum" not in legend and "peak" not in legend and "dense" in legend and "last" in legend
    assert "no phases: never fits the noisy labels" in [t.get_text() for t in strip.texts]
    plt.close(fig)
    fig = plots.draw_compare([quick_series(), short], "t")
    assert [t.get_text() for t in fig.axes[1].get_yticklabels()] == ["lottery (n=3)", "reinit (n=1)"]
    assert {"minimum", "peak"} <= {t.get_text() for t in fig.axes[0].get_legend().get_texts()}
    plt.close(fig)
    fig = plots.draw_panels(two_panels(), "t")
    strips = [ax for ax in fig.axes if not ax.get_title() and ax.get_yticklabels()]
    assert [t.get_text() for t in strips[-1].get_yticklabels()] == ["lottery (n=3)", "reinit (n=1)"]
    plt.close(fig)

"""A trajectory's closing summary and tables, the mean ± std of replicates, and the small plain files DVC reads
(summary.json, trajectory.csv)."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from sddkit import analysis
from sddkit.files import write_atomic

LANDMARKS = ("dense", "minimum", "peak", "last")
RUN_FILE = "run.json"  # in --results: which MLflow run the folder's files came from
CSV_COLUMNS = ("round", "sparsity", "remaining", "train_acc_noisy", "train_acc_clean", "memorized",
               "test_acc", "test_loss", "learning_distance", "distance_from_start", "round_seconds", "phase")


def table_csv(rows: list[dict], ph: analysis.Phases) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "round": int(r["round"]), "phase": ph.label(int(r["round"]))})
    return out.getvalue()


def summary(rows: list[dict], ph: analysis.Phases) -> dict[str, float]:
    """Landmark accuracies and sparsities (flat keys: MLflow metrics and DVC metrics alike)."""
    out = {"rounds": len(rows) - 1, "seconds": sum(r.get("round_seconds", 0.0) for r in rows)}
    for name in (*LANDMARKS, "interpolation_threshold"):
        index = getattr(ph, name)
        if index is not None:
            out.update({f"{name}_round": index, f"{name}_test_acc": rows[index]["test_acc"],
                        f"{name}_sparsity": rows[index]["sparsity"]})
    out.update(analysis.double_descent_margins(rows, ph))
    return out


def parent_summary(rows: list[dict], ph: analysis.Phases) -> dict[str, float]:
    """The trajectory run's one-value metrics: ``summary/<summary key>`` and ``phase/<name>_first|last``, so
    the MLflow UI charts them apart from the per-round curve (``listing.stored_summary`` reads them back)."""
    phases = {f"phase/{k.removeprefix('phase_')}": v for k, v in analysis.phase_metrics(ph).items()}
    return {**{f"summary/{k}": v for k, v in summary(rows, ph).items()}, **phases}


def landmarks_line(rows: list[dict], ph: analysis.Phases) -> str:
    """The landmarks and the double-descent margins in one line (the closing line, the run's description)."""
    head = phase_tag(rows, ph)
    if ph.minimum is None:  # nan would say nothing: say what the landmarks and phases wait for
        return (f"{head}   no minimum, dip, rise, drop or phases: no round fits the noisy labels (train noisy ≥ "
                f"{ph.fit_level:g}%, analysis.interpolation_threshold), and they are all measured from that fit")
    if ph.peak is None:
        dip = rows[ph.dense]["test_acc"] - rows[ph.minimum]["test_acc"]
        return (f"{head}   dip {dip:.1f} points; no peak, rise or drop yet: the minimum is the last round "
                f"(more rounds, prune.rounds, show what follows it)")
    margins = analysis.double_descent_margins(rows, ph)
    return f"{head}   dip {margins['dip']:.1f}  rise {margins['rise']:.1f}  drop {margins['drop']:.1f} points"


def phase_tag(rows: list[dict], ph: analysis.Phases) -> str:
    """``dense=<test acc>@<sparsity>% minimum=...``."""
    found = [(name, rows[i]) for name, i in landmarks(ph).items()]
    return " ".join(f"{name}={r['test_acc']:.1f}@{100 * r['sparsity']:.2f}%" for name, r in found)


def landmarks(ph: analysis.Phases, at: int | None = None) -> dict[str, int]:
    """The landmarks the curve has, by round (those at round ``at`` alone where given)."""
    return {n: i for n in LANDMARKS if (i := getattr(ph, n)) is not None and at in (None, i)}


# The per-round columns a table can show, with their headers; all are percentages.
ROUND_COLUMNS = {"sparsity": "sparsity %", "train_acc_noisy": "train noisy %", "train_acc_clean": "train clean %",
                 "memorized": "memorized %", "test_acc": "test %"}


def round_cell(rows: list[dict], i: int, key: str, std: bool = False) -> str:
    """Round ``i``'s ``key`` in % ('' past the last round), with ± ``<key>_std`` where ``std`` and stored."""
    if i >= len(rows):
        return ""
    if key == "sparsity":
        return f"{100 * rows[i][key]:.2f}"
    return f"{rows[i][key]:.1f}" + (f" ± {rows[i][key + '_std']:.1f}" if std and f"{key}_std" in rows[i] else "")


def phase_cell(ph: analysis.Phases, i: int) -> str:
    """Round ``i``'s phase, with the landmarks it is (``◀ minimum``)."""
    marks = list(landmarks(ph, i))
    return ph.label(i) + (f" ◀ {', '.join(marks)}" if marks else "")


def render_table(rows: list[dict], columns: dict[str, str], fmt: str = "table", title: str = "",
                 formats: dict[str, Callable[[Any], str]] | None = None, caption: str = ""):
    """``rows`` in ``fmt`` (config.TABLE_FORMATS): a rich Table for ``table``, else text. csv and json carry the
    keys of ``columns`` and the raw values (non-finite numbers as null/empty); table and md the headers (the
    values of ``columns``) and each cell as ``formats[key]`` writes it (default: floats to 4 digits)."""
    def finite(value):
        return None if isinstance(value, float) and not math.isfinite(value) else value

    def numeric(key):
        return bool(rows) and all(r.get(key) is None or isinstance(r.get(key), (int, float)) for r in rows)

    if fmt == "json":
        return json.dumps([{k: finite(r.get(k)) for k in columns} for r in rows], indent=1, ensure_ascii=False) + "\n"
    if fmt == "csv":
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([["" if finite(r.get(k)) is None else r[k] for k in columns] for r in rows])
        return text.getvalue()
    shown = {k: (formats or {}).get(k) or (lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)) for k in columns}
    cells = [["" if r.get(k) is None else shown[k](r[k]) for k in columns] for r in rows]
    if fmt == "md":
        head, foot = ([f"**{title}**", ""] if title else []), (["", f"*{caption}*"] if caption else [])
        rule = ["---:" if numeric(k) else "---" for k in columns]  # numbers right-aligned, as in the table
        return "\n".join([*head, md_line(columns.values()), md_line(rule), *map(md_line, cells), *foot]) + "\n"
    if fmt != "table":
        from sddkit.config import TABLE_FORMATS
        raise ValueError(f"table format {fmt!r}: use one of {', '.join(TABLE_FORMATS)}")
    table = Table(title=title or None, caption=caption or None)
    for key, header in columns.items():
        table.add_column(header, justify="right" if numeric(key) else "left")
    for row in cells:
        table.add_row(*map(Text, row))  # as text: rich would read ``list[int]`` or ``[68]`` as markup and drop it
    return table


def md_line(cells) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def closing_table(rows: list[dict], ph: analysis.Phases, keys: tuple[str, ...], fmt: str, title: str,
                  std: tuple[str, ...] = ()):
    """A trajectory's rounds (the ``keys`` of ROUND_COLUMNS, each of ``std`` followed by its ``<key>_std``, then
    the phase and landmarks) by ``render_table``: fractions and percentages as stored in csv/json, in % with
    fixed decimals in table/md."""
    records = [{**r, "round": i, "phase": ph.label(i),
                "landmark": ", ".join(landmarks(ph, i))}
               for i, r in enumerate(rows)]
    columns = {"round": "round"}
    for k in keys:
        columns.update({k: ROUND_COLUMNS[k], **({f"{k}_std": "± std"} if k in std else {})})
    columns.update(phase="phase", landmark="landmark")
    formats = {k: (lambda v: f"{100 * v:.2f}") if k == "sparsity" else (lambda v: f"{v:.1f}")
               for k in columns if k in ROUND_COLUMNS or k.endswith("_std")}
    return render_table(records, columns, fmt, title, formats)


def print_table(rendered, console: Console | None = None) -> None:
    """Print what ``render_table`` made: text as it is, a rich table in full (never cut to 80 columns: at the
    terminal's width, and unbounded when stdout is a file or a pipe)."""
    if isinstance(rendered, str):
        print(rendered, end="", flush=True)
        return
    console = console or Console()
    if not console.is_terminal:
        console = Console(width=1 << 16, file=console.file)  # rich's default off a terminal is 80 columns
    console.print(rendered, soft_wrap=False)


def trajectory_files(rows: list[dict], ph: analysis.Phases, name: str) -> dict[str, bytes]:
    from sddkit import plots  # matplotlib only where a curve is drawn: reporting a finished run draws none
    series = {name: {k: [r[k] for r in rows] for k in ("remaining", "test_acc", "train_acc_noisy")}}
    return {"trajectory.csv": table_csv(rows, ph).encode(), "curve.png": plots.curve_png(series, name),
            "summary.json": summary_json(rows, ph)}


def summary_json(rows: list[dict], ph: analysis.Phases) -> bytes:
    """Strict JSON, a margin that does not exist (nan: no dip found) as null: DVC would read nan, and
    `dvc metrics diff` report nan != nan as a change on every revision."""
    values = {k: v if math.isfinite(v) else None for k, v in summary(rows, ph).items()}
    return json.dumps(values, indent=1, allow_nan=False).encode()


def write_folder(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        write_atomic(folder / name, content)


# ---------------------------------------------------------------- mean ± std of replicates

STD_KEYS = ("test_acc", "train_acc_noisy")  # the curve's two lines: they get a ``<key>_std`` beside the mean


def mean_rows(replicates: list[list[dict]]) -> list[dict]:
    """Per round (up to the shortest replicate): the mean of every metric all replicates have, and
    ``<key>_std`` for the ``STD_KEYS``: the sample standard deviation (n − 1; 0 for a single replicate)."""
    rounds = min(len(rows) for rows in replicates)
    out = []
    for i in range(rounds):
        values = {k: np.array([rows[i][k] for rows in replicates], dtype=float) for k in replicates[0][i]
                  if all(k in rows[i] for rows in replicates)}
        row = {k: float(v.mean()) for k, v in values.items()}
        row.update({f"{k}_std": float(values[k].std(ddof=1)) if len(replicates) > 1 else 0.0 for k in STD_KEYS})
        out.append(row)
    return out


def mean_curve(replicates: list[list[dict]], threshold: float,
               tolerance: float) -> tuple[list[dict], analysis.Phases]:
    """``mean_rows`` and their phases; one replicate has no spread: no band, a blank std (not 0.0)."""
    rows = mean_rows(replicates)
    if len(replicates) == 1:
        rows = [{k: v for k, v in r.items() if not k.endswith("_std")} for r in rows]
    return rows, analysis.phases(rows, threshold, tolerance)


def render_rows(rows: list[dict], columns: list[str], fmt: str = "table", title: str = "", caption: str = "") -> str:
    """``render_table`` with each column headed by its key, always as text: a rich table rendered at its full
    width (never cut to the terminal's; a header's line breaks kept)."""
    rendered = render_table(rows, {c: c for c in columns}, fmt, title, caption=caption)
    if isinstance(rendered, str):
        return rendered
    measure = Console(file=io.StringIO(), width=100_000, color_system=None, soft_wrap=False)
    console = Console(file=io.StringIO(), width=max(measure.measure(rendered).maximum, 20), color_system=None)
    console.print(rendered)
    return console.file.getvalue()

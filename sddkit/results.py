"""A trajectory's closing summary, the mean ± std of replicates, and the small plain files DVC reads
(summary.json, trajectory.csv)."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
from rich.table import Table

from sddkit import analysis
from sddkit.files import write_atomic

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
    for name in ("dense", "minimum", "peak", "last", "interpolation_threshold"):
        index = getattr(ph, name)
        if index is None:
            continue
        out[f"{name}_round"] = index
        out[f"{name}_test_acc"] = rows[index]["test_acc"]
        out[f"{name}_sparsity"] = rows[index]["sparsity"]
    out.update(analysis.double_descent_margins(rows, ph))
    return out


def phase_tag(rows: list[dict], ph: analysis.Phases) -> str:
    """The landmarks in one line: ``dense=<test acc>@<sparsity>% minimum=...``."""
    parts = []
    for name in ("dense", "minimum", "peak", "last"):
        index = getattr(ph, name)
        if index is not None:
            parts.append(f"{name}={rows[index]['test_acc']:.1f}@{100 * rows[index]['sparsity']:.2f}%")
    return " ".join(parts)


# The per-round columns a table can show, with their headers; all are percentages.
ROUND_COLUMNS = {"sparsity": "sparsity %", "train_acc_noisy": "train noisy %", "train_acc_clean": "train clean %",
                 "memorized": "memorized %", "test_acc": "test %"}


def round_table(rows: list[dict], ph: analysis.Phases, title: str, keys: tuple[str, ...], std: bool = False,
                phase_header: str = "phase"):
    """A rich table, one line a round: the ``keys`` columns (with ± their std where ``std``), then the phase."""
    table = Table(title=title)
    for header in ("round", *(ROUND_COLUMNS[k] for k in keys), phase_header):
        table.add_column(header, justify="right")
    for i in range(len(rows)):
        table.add_row(str(i), *(round_cell(rows, i, k, std) for k in keys), phase_cell(ph, i))
    return table


def round_cell(rows: list[dict], i: int, key: str, std: bool = False) -> str:
    """Round ``i``'s ``key`` in % ('' past the last round), with ± ``<key>_std`` where ``std`` and stored."""
    if i >= len(rows):
        return ""
    if key == "sparsity":
        return f"{100 * rows[i][key]:.2f}"
    return f"{rows[i][key]:.1f}" + (f" ± {rows[i][key + '_std']:.1f}" if std and f"{key}_std" in rows[i] else "")


def phase_cell(ph: analysis.Phases, i: int) -> str:
    """Round ``i``'s phase, with the landmarks it is (``◀ minimum``)."""
    marks = [n for n in ("dense", "minimum", "peak", "last") if getattr(ph, n) == i]
    return ph.label(i) + (f" ◀ {', '.join(marks)}" if marks else "")


def trajectory_files(rows: list[dict], ph: analysis.Phases, name: str) -> dict[str, bytes]:
    from sddkit import plots  # matplotlib only where a curve is drawn: reporting a finished run draws none

    series = {name: {k: [r[k] for r in rows] for k in ("remaining", "test_acc", "train_acc_noisy")}}
    return {"trajectory.csv": table_csv(rows, ph).encode(), "curve.png": plots.curve_png(series, name),
            "summary.json": json.dumps(summary(rows, ph), indent=1).encode()}


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


# ---------------------------------------------------------------- printed tables

TABLE_FORMATS = ("table", "csv", "json", "md")


def render_rows(rows: list[dict], columns: list[str], fmt: str = "table", title: str = "", caption: str = "") -> str:
    """``rows`` (dicts keyed by ``columns``; a missing or None cell is blank, null in JSON) as text: a rich
    ``table`` at its full width (never cut to the terminal's), ``csv``, ``json`` (a list of objects) or ``md``.
    The title and caption go with ``table`` and ``md`` only; a header's line breaks are kept in ``table``."""
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, restval="", extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
        return out.getvalue()
    if fmt == "json":
        return json.dumps([{c: _json_value(r.get(c)) for c in columns} for r in rows], indent=1,
                          ensure_ascii=False) + "\n"
    if fmt == "md":
        cell = lambda v: "" if v is None else str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
        lines = [f"**{title}**", ""] if title else []
        lines += ["| " + " | ".join(cell(c) for c in columns) + " |", "|" + "---:|" * len(columns)]
        lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
        return "\n".join(lines + (["", f"*{caption}*"] if caption else [])) + "\n"
    if fmt != "table":
        raise ValueError(f"table format {fmt!r}; allowed: {', '.join(TABLE_FORMATS)}")
    return _rich_text(rows, columns, title, caption)


def _rich_text(rows: list[dict], columns: list[str], title: str, caption: str) -> str:
    from rich.console import Console

    table = Table(title=title or None, caption=caption or None)
    for c in columns:
        table.add_column(c, justify="right")
    for r in rows:
        table.add_row(*("" if r.get(c) is None else str(r.get(c)) for c in columns))
    # wide enough for the table's natural width: a piped or narrow terminal must not cut a column
    console = Console(file=io.StringIO(), width=100_000, color_system=None, soft_wrap=False)
    width = console.measure(table).maximum
    console = Console(file=io.StringIO(), width=max(width, 20), color_system=None)
    console.print(table)
    return console.file.getvalue()


def _json_value(value):
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value

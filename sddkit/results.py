"""A trajectory's closing summary and the small plain files DVC reads (summary.json, trajectory.csv), and
``write_atomic``, the one way sddkit writes a file others read (DVC, later runs)."""
from __future__ import annotations

import csv
import io
import json
import os
import uuid
from pathlib import Path
from typing import BinaryIO, Callable

from sddkit import analysis

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
    from rich.table import Table  # here: sources and prepare import this module for write_atomic

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
    from sddkit import plots  # matplotlib only where a curve is drawn: sources and prepare import write_atomic

    series = {name: {k: [r[k] for r in rows] for k in ("remaining", "test_acc", "train_acc_noisy")}}
    return {"trajectory.csv": table_csv(rows, ph).encode(), "curve.png": plots.curve_png(series, name),
            "summary.json": json.dumps(summary(rows, ph), indent=1).encode()}


def write_folder(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        write_atomic(folder / name, content)


def write_atomic(path: Path, content: bytes | Callable[[BinaryIO], object]) -> None:
    """Write ``content`` (bytes, or a function writing into a binary file: no copy of large arrays) to ``path``
    through a temporary file beside it and a rename: readers (DVC, a concurrent run) see the old file or the
    whole new one; a failed write leaves the old file and no temporary one."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")  # unique: concurrent writers never share one
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # like mkstemp, but honours the umask
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(content, bytes):
                f.write(content)
            else:
                content(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # gone already after a successful rename

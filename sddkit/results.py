"""A trajectory's closing summary and the small plain files DVC reads (summary.json, trajectory.csv)."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from sddkit import analysis, plots

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


def trajectory_files(rows: list[dict], ph: analysis.Phases, name: str) -> dict[str, bytes]:
    series = {name: {k: [r[k] for r in rows] for k in ("remaining", "test_acc", "train_acc_noisy")}}
    return {"trajectory.csv": table_csv(rows, ph).encode(), "curve.png": plots.curve_png(series, name),
            "summary.json": json.dumps(summary(rows, ph), indent=1).encode()}


def write_folder(folder: Path, files: dict[str, bytes]) -> None:
    """Write each file atomically (tmp + rename), so DVC never sees half a file."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        tmp = folder / f".{name}.tmp"
        tmp.write_bytes(content)
        tmp.replace(folder / name)

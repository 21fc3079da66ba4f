"""Replicates: one grid point and mode over several seeds, as ``sddkit run --seeds`` and a sweep's seeds leave
them: their mean ± std by round (CSV, curve, table), kept in each replicate's parent run."""
from __future__ import annotations

import csv
import io

from sddkit import analysis, plots, results
from sddkit.config import Config

ARTIFACT_DIR = "replicates"  # where each replicate's parent run keeps its group's mean ± std files


def groups_of(sweep) -> list[list]:
    """A ``sweep.Sweep``'s cells by group (the same config but for the seed)."""
    groups: dict[str, list] = {}
    for cell in sweep.cells:
        groups.setdefault(cell.cfg.group_hash(), []).append(cell)
    return list(groups.values())


def log_groups(sweep) -> None:
    """Every replicate's parent run keeps its group's mean ± std files under ``replicates/``."""
    for cells in groups_of(sweep):
        files = group_files(cells[0].cfg, [sweep.outcomes[c.key].rows for c in cells], [c.cfg.seed for c in cells])
        stored = {f"{ARTIFACT_DIR}/{name}": content for name, content in files.items()}
        for cell in cells:
            run_id = sweep.outcomes[cell.key].run_id
            sweep.tracker.log_files(run_id, stored)
            sweep.tracker.set_tag(run_id, "sddkit.replicate_seeds", " ".join(str(c.cfg.seed) for c in cells))


def group_files(cfg: Config, replicates: list[list[dict]], seeds: list[int]) -> dict[str, bytes]:
    """A group's files: mean ± std by round (CSV) and the mean ± std curve (PNG)."""
    rows = results.mean_rows(replicates)
    keys = results.STD_KEYS
    series = {k: [r[k] for r in rows] for k in ("remaining", *keys, *(f"{k}_std" for k in keys))}
    title = f"{cfg.name}: mean ± std over seeds {' '.join(map(str, seeds))} (group {cfg.group_hash()})"
    return {"mean_std.csv": mean_csv(rows).encode(), "curve_mean_std.png": plots.curve_png({cfg.name: series}, title)}


def mean_csv(rows: list[dict]) -> str:
    columns = ("round", "sparsity", "remaining", *(c for k in results.STD_KEYS for c in (k, f"{k}_std")))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({**r, "round": int(round(r["round"]))} for r in rows)
    return out.getvalue()


def print_table(rows: list[dict], seeds: list[int], cfg: Config, table_format: str = "table") -> None:
    title = f"mean ± std over seeds {' '.join(map(str, seeds))} (phases of the mean)"
    ph = analysis.phases(rows, cfg.analysis.interpolation_threshold, cfg.analysis.light_tolerance)
    std = results.STD_KEYS if len(seeds) > 1 else ()  # one seed has no spread: no std column rather than 0.0
    results.print_table(results.closing_table(rows, ph, ("sparsity", "train_acc_noisy", "test_acc"), table_format,
                                              title, std))

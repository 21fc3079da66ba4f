"""``sddkit compare``: trajectories side by side, read only from what the tracker stored.

A selector picks finished trajectories by run name, by tag or param (``key=value``), by run ID, or by a
``--results`` folder of ``sddkit run`` (its run.json, which is how the DVC pipeline names the runs it
made). Runs of one selector that share a config but not the seed (tag ``sddkit.group``) are replicates,
averaged to mean ± std. When a name covers several configs (say after ``dvc exp run -S noise.ratio=0.4``)
the newest one is compared and the others are named, with how to pick them.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import yaml
from mlflow.exceptions import MlflowException
from rich.console import Console
from rich.table import Table

from sddkit import analysis, config, plots, results
from sddkit.results import RUN_FILE, phase_cell, phase_tag, round_cell
from sddkit.tracking import TRAJECTORY, Tracker, TrackingError, finished_only, round_row, select_trajectories, \
    trajectory_name, unknown_trajectory

console = Console(stderr=True)
CSV_NAME, PNG_NAME = "compare.csv", "compare.png"


@dataclass
class Curve:
    label: str
    runs: list             # the replicates' parent runs, one per seed, newest first
    rows: list[dict]       # mean by round; ``test_acc_std`` and ``train_acc_noisy_std`` beside the means
    phases: analysis.Phases

    @property
    def seeds(self) -> str:
        return " ".join(sorted((r.data.tags.get("sddkit.seed", "?") for r in self.runs), key=_seed_order))


def compare(tracker: Tracker, selectors: list[str], experiment: str, where: list[str] = (),
            threshold: float | None = None) -> list[Curve]:
    """One curve per selector; ``threshold`` (None: each run's own) places the phases."""
    check_filters(where)
    curves = []
    for selector in selectors:
        runs = newest_group(selector, select(tracker, selector, experiment, where))
        label = unique_label(selector_label(selector, runs[0]), [c.label for c in curves])
        curves.append(build_curve(tracker, label, runs, threshold))
    return curves


# ---------------------------------------------------------------- selection

def select(tracker: Tracker, selector: str, experiment: str, where: list[str]) -> list:
    """The finished trajectories ``selector`` names (newest first), kept only where every ``where`` holds."""
    heading = f"--runs {selector}"
    if (Path(selector) / RUN_FILE).is_file():
        found = [run_from_folder(tracker, Path(selector))]
    elif "=" in selector:
        found = [r for r in tracker.trajectories(experiment) if matches(r, selector)]
        if not found:
            raise unknown_trajectory(tracker, experiment, f"{heading}: no trajectory with that tag or param")
    else:
        found = select_trajectories(tracker, selector, experiment, finished=False, heading=heading)
    kept = [r for r in found if all(matches(r, w) for w in where)]
    if not kept:
        raise TrackingError(f"{heading}: {len(found)} trajectories match, but none of them has {' and '.join(where)}")
    return finished_only(kept, f"{heading}: no trajectory" + (f" with {' and '.join(where)}" if where else ""))


def check_filters(where: list[str]) -> None:
    for assignment in where:
        key, equals, _ = assignment.partition("=")
        if not equals or not key.strip():
            raise TrackingError(f"--where {assignment}: give KEY=VALUE (a tag or param and its value), "
                                f"e.g. --where noise.ratio=0.4")


def run_from_folder(tracker: Tracker, folder: Path):
    pointer = folder / RUN_FILE
    try:
        run_id = json.loads(pointer.read_text())["run_id"]
    except (ValueError, KeyError, TypeError, OSError) as exc:  # TypeError: valid JSON, but not an object
        raise TrackingError(f"--runs {folder}: {pointer} is damaged ({exc.__class__.__name__}: {exc}); rerun "
                            f"the stage that wrote it (`dvc repro`)") from exc
    try:
        run = tracker.client.get_run(run_id)
    except MlflowException as exc:
        raise TrackingError(f"--runs {folder}: its {RUN_FILE} names run {run_id}, which is not in the store "
                            f"{tracker.uri}; rerun the stage that wrote it (`dvc repro`)") from exc
    if run.data.tags.get("sddkit.kind") != TRAJECTORY:
        raise TrackingError(f"--runs {folder}: run {run_id} is not an sddkit trajectory")
    return run


def matches(run, assignment: str) -> bool:
    """``key=value`` against the run's tags, then its params (values compared as YAML: 0.4 == 0.40)."""
    key, _, value = assignment.partition("=")
    stored = run.data.tags.get(key.strip(), run.data.params.get(key.strip()))
    return stored is not None and (stored == value.strip() or _as_yaml(stored) == _as_yaml(value.strip()))


def newest_group(selector: str, runs: list) -> list:
    """The replicates (one run per seed, the newest) of the newest config among ``runs``."""
    groups: dict[tuple, list] = {}
    for r in runs:  # newest first, so the first group met is the newest and each seed's first run too
        groups.setdefault((trajectory_name(r), group_of(r)), []).append(r)
    chosen, *others = groups.values()
    if others:
        console.print(f"[yellow]note:[/] --runs {selector} covers {len(groups)} configs; comparing the newest "
                      f"(run {chosen[0].info.run_id[:8]}); the others differ in "
                      f"{'; '.join(differences(chosen[0], g[0]) for g in others)} - pick one with "
                      f"--where KEY=VALUE or a run ID", highlight=False)
    by_seed: dict[str, object] = {}
    for r in chosen:
        by_seed.setdefault(r.data.tags.get("sddkit.seed", r.info.run_id), r)
    return list(by_seed.values())


def group_of(run) -> str:
    """The run's config without its seed (``Config.group_hash``); older runs lack the tag, so rebuild it."""
    tag = run.data.tags.get("sddkit.group")
    return tag if tag else config.from_params(run.data.params).group_hash()


def differences(ours, theirs, limit: int = 3) -> str:
    ignored = config.NOT_IDENTITY | {"seed"}
    keys = sorted(k for k in set(ours.data.params) | set(theirs.data.params)
                  if k not in ignored and ours.data.params.get(k) != theirs.data.params.get(k))
    shown = ", ".join(f"{k}={theirs.data.params.get(k)}" for k in keys[:limit])
    return (shown + (", ..." if len(keys) > limit else "")) or f"run {theirs.info.run_id[:8]}"


def selector_label(selector: str, run) -> str:
    """A name selector labels its curve; a tag, run ID or folder is labelled by the run's name."""
    plain = "=" not in selector and not (Path(selector) / RUN_FILE).is_file()
    return selector if plain and selector != run.info.run_id else trajectory_name(run)


def unique_label(label: str, taken: list[str]) -> str:
    n, out = 1, label
    while out in taken:
        n += 1
        out = f"{label} ({n})"
    return out


# ---------------------------------------------------------------- curves

def build_curve(tracker: Tracker, label: str, runs: list, threshold: float | None) -> Curve:
    rows = results.mean_rows([[round_row(x) for x in tracker.round_runs(r.info.run_id)] for r in runs])
    if threshold is None:
        threshold = analysis_setting(runs[0], "interpolation_threshold")
    return Curve(label, runs, rows, analysis.phases(rows, threshold, analysis_setting(runs[0], "light_tolerance")))


def analysis_setting(run, key: str) -> float:
    """The run's ``analysis.<key>`` param; runs logged before the key existed get today's default."""
    return float(run.data.params.get(f"analysis.{key}", getattr(config.AnalysisConfig, key)))


def shared_sparsity(curves: list[Curve]) -> bool:
    first = [r["sparsity"] for r in curves[0].rows]
    return all(abs(a - b) < 1e-9 for c in curves[1:] for a, b in zip(first, (r["sparsity"] for r in c.rows)))


def sparsity_cell(curves: list[Curve], i: int) -> str:
    """Round ``i``'s sparsity (%) from the first of ``curves`` that reached it."""
    return next((round_cell(c.rows, i, "sparsity") for c in curves if i < len(c.rows)), "")


def difference(curves: list[Curve], i: int, key: str) -> float | None:
    """Second curve minus first at round ``i`` (None where either has no such round)."""
    a, b = curves[0].rows, curves[1].rows
    return b[i][key] - a[i][key] if i < len(a) and i < len(b) else None


def table(curves: list[Curve]) -> Table:
    shared = shared_sparsity(curves)
    out = Table(title=" vs ".join(f"{c.label} (seeds {c.seeds})" for c in curves),
                caption="train: accuracy on the noisy labels trained on; ± the sample std over seeds")
    for name in header(curves, shared):
        out.add_column(name, justify="right")
    for i in range(max(len(c.rows) for c in curves)):
        out.add_row(*table_row(curves, i, shared))
    return out


def header(curves: list[Curve], shared: bool) -> list[str]:
    names = ["round"] + (["sparsity %"] if shared else [])
    for c in curves:
        columns = ("train %", "test %", "phase") if shared else ("sparsity %", "train %", "test %", "phase")
        names += [f"{c.label}\n{k}" for k in columns]
    if len(curves) >= 2:
        names += [f"Δ {k}\n{curves[1].label} − {curves[0].label}" for k in ("test", "train")]
    return names


def table_row(curves: list[Curve], i: int, shared: bool) -> list[str]:
    cells = [str(i)] + ([sparsity_cell(curves, i)] if shared else [])
    for c in curves:
        replicated = len(c.runs) > 1
        cells += ([] if shared else [sparsity_cell([c], i)]) + [
            round_cell(c.rows, i, "train_acc_noisy", replicated), round_cell(c.rows, i, "test_acc", replicated),
            phase_cell(c.phases, i) if i < len(c.rows) else ""]
    if len(curves) >= 2:
        cells += [_signed(difference(curves, i, k)) for k in ("test_acc", "train_acc_noisy")]
    return cells


# ---------------------------------------------------------------- files

CURVE_COLUMNS = ("sparsity", "remaining", "test_acc", "test_acc_std", "train_acc_noisy", "train_acc_noisy_std",
                 "train_acc_clean")


def csv_text(curves: list[Curve]) -> str:
    """One row a round: each curve's means and stds (``<label>:<metric>``) and phase, then the differences."""
    columns = ["round"] + [f"{c.label}:{k}" for c in curves for k in (*CURVE_COLUMNS, "phase", "n")]
    if len(curves) >= 2:
        columns += ["diff:test_acc", "diff:train_acc_noisy"]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for i in range(max(len(c.rows) for c in curves)):
        row = {"round": i}
        for c in (c for c in curves if i < len(c.rows)):
            row.update({f"{c.label}:{k}": round(c.rows[i][k], 4) for k in CURVE_COLUMNS if k in c.rows[i]})
            row.update({f"{c.label}:phase": c.phases.label(i), f"{c.label}:n": len(c.runs)})
        if len(curves) >= 2:
            row.update({f"diff:{k}": _rounded(difference(curves, i, k)) for k in ("test_acc", "train_acc_noisy")})
        writer.writerow(row)
    return out.getvalue()


def png(curves: list[Curve]) -> bytes:
    series = {}
    for c in curves:
        keys = ("remaining", "test_acc", "train_acc_noisy") + \
            (("test_acc_std", "train_acc_noisy_std") if len(c.runs) > 1 else ())
        series[f"{c.label} (n={len(c.runs)})"] = {k: [r[k] for r in c.rows] for k in keys}
    return plots.curve_png(series, " vs ".join(c.label for c in curves))


def report(curves: list[Curve], output: Path | None) -> None:
    """Print the table and each curve's landmarks; write the CSV and PNG into ``output``."""
    Console().print(table(curves))
    for c in curves:
        runs = ", ".join(r.info.run_id[:8] for r in c.runs)
        Console().print(f"{c.label}: {phase_tag(c.rows, c.phases)}   (runs {runs})", highlight=False)
    if output is not None:
        results.write_folder(output, {CSV_NAME: csv_text(curves).encode(), PNG_NAME: png(curves)})
        console.print(f"wrote {output / CSV_NAME} and {output / PNG_NAME}", highlight=False)


def _signed(value: float | None) -> str:
    return "" if value is None else f"{value:+.1f}"


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _seed_order(seed: str) -> int:
    return int(seed) if str(seed).isdigit() else -1


def _as_yaml(text: str):
    try:
        return config.read_yaml(text)
    except yaml.YAMLError:  # compared as text
        return text

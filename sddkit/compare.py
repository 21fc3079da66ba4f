"""``sddkit compare``: trajectories side by side, read only from the store (``selection`` picks them). Runs of one
selector that share a config but not the seed are replicates (mean ± std); of several configs the newest is
compared and the others named. ``compare_by``: one panel per value of a param."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from rich.console import Console

from sddkit import analysis, config, listing, readoffs, results, selection
from sddkit.fingerprint import current_identity
from sddkit.results import RUN_FILE, phase_cell, phase_tag, round_cell
from sddkit.selection import as_yaml, check_filters, run_from_folder, stored_value, trajectory_name
from sddkit.tracking import Tracker, TrackingError, round_row

if TYPE_CHECKING:  # matplotlib only when a figure is written: the table alone never draws
    from sddkit import plots

console = Console(stderr=True)
CSV_NAME, FIGURE_STEM = "compare.csv", "compare"  # and compare.png / .pdf / .svg
CURVE_COLUMNS = ("sparsity", "remaining", "test_acc", "test_acc_std", "train_acc_noisy", "train_acc_noisy_std",
                 "train_acc_clean")
DIFF_KEYS = ("test_acc", "train_acc_noisy")  # the second curve minus the first
DIFF_COLUMNS = tuple(f"diff:{k}" for k in DIFF_KEYS)


@dataclass
class Curve:
    label: str
    runs: list             # the replicates' parent runs, one per seed, newest first
    rows: list[dict]       # mean by round; ``test_acc_std``, ``train_acc_noisy_std`` beside (not for one run)
    phases: analysis.Phases

    @property
    def seeds(self) -> str:
        seeds = (r.data.tags.get("sddkit.seed", "?") for r in self.runs)
        return " ".join(sorted(seeds, key=lambda seed: int(seed) if seed.isdigit() else -1))

    @property
    def params(self) -> dict[str, str]:  # the config the replicates share, seed aside
        return self.runs[0].data.params


@dataclass
class Panel:
    """The curves of one value of the ``--by`` param: one slot per selector, None where that selector has no
    finished run with this value."""
    key: str
    value: str
    curves: list[Curve | None]
    labels: list[str]  # the selectors' curve labels, the same in every panel

    @property
    def title(self) -> str:
        return f"{self.key} = {self.value}"

    @property
    def present(self) -> list[Curve]:
        return [c for c in self.curves if c is not None]

    @property
    def missing(self) -> list[str]:
        return [label for label, c in zip(self.labels, self.curves) if c is None]


def compare(tracker: Tracker, selectors: list[str], experiment: str, where: list[str] = (),
            threshold: float | None = None, labels: list[str] | None = None) -> list[Curve]:
    """One curve per selector; ``threshold`` (None: each run's own) places the phases."""
    selected = select(tracker, selectors, experiment, where, labels)
    curves = [build_curve(tracker, s, s, runs, threshold) for s, runs in selected]
    name_curves([curves], labels)
    return curves


def compare_by(tracker: Tracker, selectors: list[str], experiment: str, by: str, where: list[str] = (),
               threshold: float | None = None, labels: list[str] | None = None) -> list[Panel]:
    """``compare`` once per value of the tag or param ``by``; a curve keeps its label in every panel."""
    selected = list(select(tracker, selectors, experiment, where, labels))
    groups = split_by(by, selected)
    values = value_order({value for runs_by_value in groups for value in runs_by_value})
    columns = [{v: build_curve(tracker, s, f"{s} at {by}={v}", group[v], threshold) for v in values if v in group}
               for (s, _), group in zip(selected, groups)]
    slots = [[column.get(v) for column in columns] for v in values]
    names = name_curves(slots, labels, frozenset({by}))
    return [Panel(by, value, slot, names) for value, slot in zip(values, slots)]


def write_trajectory_files(tracker: Tracker, selectors: list[str]) -> None:
    """Each ``--runs`` results folder's summary.json, trajectory.csv and curve.png, as ``sddkit run --results``
    draws them: DVC's compare stage writes them, so that an edit of a plot reruns no trajectory stage."""
    for selector in selectors:
        folder = Path(selector)
        if not (folder / RUN_FILE).is_file():
            raise TrackingError(f"--trajectory-files: --runs {selector} is not a results folder (it has no "
                                f"{RUN_FILE}); name the folders the trajectory stages write")
        run = run_from_folder(tracker, folder)
        rows = round_rows(tracker, run)
        ph = analysis.phases(rows, analysis_setting(run, "interpolation_threshold"),
                             analysis_setting(run, "light_tolerance"))
        results.write_folder(folder, results.trajectory_files(rows, ph, trajectory_name(run)))


# ---------------------------------------------------------------- selection

def select(tracker: Tracker, selectors: list[str], experiment: str, where, labels) -> Iterator[tuple[str, list]]:
    """Each selector with its runs, the arguments checked before the first; lazily, so that ``compare`` prints a
    selector's notes before the next selector is read (and fails)."""
    check_filters(where)
    if labels and len(labels) != len(selectors):
        raise TrackingError(f"--label: give one per --runs selector ({len(selectors)} selectors, "
                            f"{len(labels)} labels)")
    for s in selectors:
        yield s, selection.select(tracker, s, experiment, list(where), heading=f"--runs {s}")


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
    """``Config.group_hash``; runs of an older identity scheme lack the tag or hashed it otherwise: rebuilt from
    their params, so they group with today's runs of their config."""
    tag = run.data.tags.get("sddkit.group")
    return tag if tag and current_identity(run) else config.from_params(run.data.params).group_hash()


def differences(ours, theirs, limit: int = 3) -> str:
    keys = differing_keys([ours.data.params, theirs.data.params])
    shown = ", ".join(f"{k}={theirs.data.params.get(k)}" for k in keys[:limit])
    return (shown + (", ..." if len(keys) > limit else "")) or f"run {theirs.info.run_id[:8]}"


def differing_keys(params: list[dict[str, str]]) -> list[str]:
    return listing.differing_keys(params, skip=("seed",))


def split_by(by: str, selected: list[tuple[str, list]]) -> list[dict[str, list]]:
    """Each selector's runs by their value of ``by``; none having it is an error naming the params that differ."""
    groups = []
    for selector, runs in selected:
        group: dict[str, list] = {}
        for r in runs:
            value = stored_value(r, by)
            if value is not None:
                group.setdefault(value, []).append(r)
        if not group:
            keys = differing_keys([r.data.params for _, found in selected for r in found])
            raise TrackingError(f"--by {by}: no trajectory of --runs {selector} has that tag or param; the params "
                                f"that differ between the selected trajectories: {', '.join(keys) or 'none'}")
        lacking = len(runs) - sum(map(len, group.values()))
        if lacking:
            console.print(f"[yellow]note:[/] --runs {selector}: {lacking} trajectories have no {by}; left out",
                          highlight=False)
        groups.append(group)
    return groups


def value_order(values: set[str]) -> list[str]:
    """Numbers by value (0.05 before 0.2 before 0.4), anything else as text."""
    try:
        return sorted(values, key=float)
    except ValueError:
        return sorted(values)


# ---------------------------------------------------------------- curves and their labels

def build_curve(tracker: Tracker, selector: str, heading: str, runs: list, threshold: float | None) -> Curve:
    runs = newest_group(heading, runs)
    if threshold is None:
        threshold = analysis_setting(runs[0], "interpolation_threshold")
    rows, ph = results.mean_curve([round_rows(tracker, r) for r in runs], threshold,
                                  analysis_setting(runs[0], "light_tolerance"))
    return Curve(selector_label(selector, runs[0]), runs, rows, ph)


def round_rows(tracker: Tracker, run) -> list[dict]:
    return [round_row(x) for x in tracker.round_runs(run.info.run_id)]


def analysis_setting(run, key: str) -> float:
    """The run's ``analysis.<key>``; runs logged before the key existed get today's default."""
    return float(run.data.params.get(f"analysis.{key}", getattr(config.AnalysisConfig, key)))


def selector_label(selector: str, run) -> str:
    """A name selector labels its curve; a tag, run ID or folder is labelled by the run's name."""
    plain = "=" not in selector and not (Path(selector) / RUN_FILE).is_file()
    return selector if plain and selector != run.info.run_id else trajectory_name(run)


def name_curves(slots: list[list[Curve | None]], labels: list[str] | None, ignored=frozenset()) -> list[str]:
    """Label the ``i``-th curve of every slot list alike: ``labels``, else the legend label of the first such
    curve; a label met twice (two selectors of one config) gets a number, so the curves are told apart."""
    first = [next(slot[i] for slot in slots if slot[i] is not None) for i in range(len(slots[0]))]
    names: list[str] = []
    for label in labels or legend_labels(first, ignored=ignored):
        n, name = 1, label
        while name in names:
            n += 1
            name = f"{label} ({n})"
        names.append(name)
    for slot in slots:
        for curve, name in zip(slot, names):
            if curve is not None:
                curve.label = name
    return names


def legend_labels(curves: list[Curve], limit: int = 3, ignored: frozenset[str] = frozenset()) -> list[str]:
    """Each curve's name, then ``key=value`` for the params that differ between the curves (``lottery ·
    noise.ratio=0.4``); the seeds where nothing else tells two curves apart."""
    keys = [k for k in differing_keys([c.params for c in curves]) if k not in ignored]
    labels = []
    for c in curves:
        shown = [f"{k}={c.params.get(k)}" for k in keys if c.params.get(k) != c.label]
        labels.append(" · ".join([c.label, *shown[:limit]] + (["…"] if len(shown) > limit else [])))
    return [f"{label} · seeds {c.seeds}" if labels.count(label) > 1 else label for label, c in zip(labels, curves)]


# ---------------------------------------------------------------- tables

def table_text(curves: list[Curve], fmt: str = "table", heading: str = "", missing: list[str] = ()) -> str:
    """``table`` and ``md``: the cells a reader wants (% with ± std, phases and landmarks), titled by ``heading``
    and the ``missing`` curves; ``csv`` and ``json``: the numbers of compare.csv."""
    if fmt in ("csv", "json"):
        return results.render_rows(data_rows(curves), data_columns([c.label for c in curves]), fmt)
    first = [r["sparsity"] for r in curves[0].rows]
    shared = all(abs(a - b) < 1e-9 for c in curves[1:] for a, b in zip(first, (r["sparsity"] for r in c.rows)))
    each = ("train %", "test %", "phase") if shared else ("sparsity %", "train %", "test %", "phase")
    columns = ["round"] + (["sparsity %"] if shared else []) + [f"{c.label}\n{k}" for c in curves for k in each]
    columns += [f"Δ {k}\n2nd − 1st" for k in ("test", "train")] if len(curves) >= 2 else []
    rows = []
    for i in range(max(len(c.rows) for c in curves)):
        cells = [str(i)] + ([sparsity_cell(curves, i)] if shared else [])
        for c in curves:
            replicated = len(c.runs) > 1
            cells += ([] if shared else [sparsity_cell([c], i)]) + [
                round_cell(c.rows, i, "train_acc_noisy", replicated), round_cell(c.rows, i, "test_acc", replicated),
                phase_cell(c.phases, i) if i < len(c.rows) else ""]
        if len(curves) >= 2:
            cells += [_signed(difference(curves, i, k)) for k in DIFF_KEYS]
        rows.append(dict(zip(columns, cells)))
    title = " vs ".join(f"{c.label} (seeds {c.seeds})" for c in curves)
    title = (f"{heading}: " if heading else "") + title + "".join(f"; no {label} run" for label in missing)
    return results.render_rows(rows, columns, fmt, title=title,
                               caption="train: accuracy on the noisy labels trained on; ± the sample std over seeds"
                               + ("; Δ: the second curve minus the first" if len(curves) >= 2 else ""))


def sparsity_cell(curves: list[Curve], i: int) -> str:
    """Round ``i``'s sparsity (%) from the first of ``curves`` that reached it."""
    return next((round_cell(c.rows, i, "sparsity") for c in curves if i < len(c.rows)), "")


def difference(curves: list[Curve], i: int, key: str) -> float | None:
    """Second curve minus first at round ``i`` (None where either has no such round)."""
    a, b = curves[0].rows, curves[1].rows
    return b[i][key] - a[i][key] if i < len(a) and i < len(b) else None


def data_columns(labels: list[str]) -> list[str]:
    return ["round"] + [f"{label}:{k}" for label in labels for k in (*CURVE_COLUMNS, "phase", "n")] + \
        (list(DIFF_COLUMNS) if len(labels) >= 2 else [])


def data_rows(curves: list[Curve]) -> list[dict]:
    """One row a round: each curve's ``<label>:<metric>`` (a single run's std blank), phase and replicate count,
    then the differences of the first two curves."""
    rows = []
    for i in range(max(len(c.rows) for c in curves)):
        row = {"round": i}
        for c in (c for c in curves if i < len(c.rows)):
            row.update({f"{c.label}:{k}": round(c.rows[i][k], 4) for k in CURVE_COLUMNS if k in c.rows[i]})
            row.update({f"{c.label}:phase": c.phases.label(i), f"{c.label}:n": len(c.runs)})
        if len(curves) >= 2:
            row.update({f"diff:{k}": None if (d := difference(curves, i, k)) is None else round(d, 4)
                        for k in DIFF_KEYS})
        rows.append(row)
    return rows


def csv_text(curves: list[Curve]) -> str:
    return table_text(curves, "csv")


def panels_text(panels: list[Panel], fmt: str = "table") -> str:
    """Each panel's table; in ``csv`` and ``json`` one document, the ``by`` key's value the first column."""
    if fmt not in ("csv", "json"):
        return "\n".join(table_text(p.present, fmt, p.title, p.missing) for p in panels)
    key, rows = panels[0].key, []
    for p in panels:
        paired = all(c is not None for c in p.curves[:2])  # diff: the second selector minus the first
        rows += [{key: as_yaml(p.value), **{k: v for k, v in row.items() if paired or k not in DIFF_COLUMNS}}
                 for row in data_rows(p.present)]
    return results.render_rows(rows, [key, *data_columns(panels[0].labels)], fmt)


# ---------------------------------------------------------------- figures

def figure(curves: list[Curve], fmt: str = "png", paper: dict[str, readoffs.ReadOff] | None = None) -> bytes:
    """``paper``: the read-off to overlay, by curve label."""
    from sddkit import plots
    series = [plot_series(f"{c.label} (n={len(c.runs)})", c.rows, c.phases, (paper or {}).get(c.label))
              for c in curves]
    return plots.compare_figure(series, figure_title(curves), fmt)


def panels_figure(panels: list[Panel], fmt: str = "png") -> bytes:
    """One panel per value; the legend gives each curve's replicate count (per panel where it varies)."""
    from sddkit import plots
    counts = [" / ".join(dict.fromkeys(str(len(p.curves[i].runs)) for p in panels if p.curves[i] is not None))
              for i in range(len(panels[0].labels))]
    drawn = [(p.title, [plot_series(f"{c.label} (n={n})", c.rows, c.phases, None) if c is not None else None
                        for c, n in zip(p.curves, counts)]) for p in panels]
    return plots.panels_figure(drawn, figure_title([c for p in panels for c in p.present]), fmt)


def plot_series(label: str, rows: list[dict], ph: analysis.Phases, paper: readoffs.ReadOff | None) -> plots.Series:
    from sddkit import plots
    column = lambda key: [r[key] for r in rows] if key in rows[0] else None  # noqa: E731
    points = {k: (1 - p.sparsity / 100, p.test_acc) for k, p in paper.points.items()} if paper else None
    return plots.Series(label, column("remaining"), column("test_acc"), column("train_acc_noisy"),
                        [ph.label(i) for i in range(len(rows))], results.landmarks(ph), column("test_acc_std"),
                        column("train_acc_noisy_std"), points, paper.setting if paper else "")


def figure_title(curves: list[Curve]) -> str:
    """Dataset · model · noise (kind and ratio, each value where they differ) · seeds."""
    def values(key: str) -> str:
        return " / ".join(dict.fromkeys(c.params.get(key, "?") for c in curves))

    kinds = values("noise.kind")
    noise = "no label noise" if kinds == "none" else f"noise {kinds} ε={values('noise.ratio')}"
    seeds = dict.fromkeys(c.seeds for c in curves)
    return " · ".join([values("data.name"), values("model.arch"), noise, "seeds " + " / ".join(seeds)])


# ---------------------------------------------------------------- the paper

def paper_overlays(curves: list[Curve]) -> dict[str, readoffs.ReadOff]:
    """The read-off matching each curve's preset, noise and mode; a note for each curve without one."""
    found = {}
    for c in curves:
        match = readoffs.matching(c.params)
        if match:
            found[c.label] = match
        else:
            p = c.params
            console.print(f"[yellow]note:[/] --paper: no read-off of the paper for {c.label} (preset "
                          f"{p.get('preset', '?')}, {p.get('data.name', '?')}/{p.get('model.arch', '?')}, noise "
                          f"{p.get('noise.kind', '?')} {p.get('noise.ratio', '?')}, {p.get('retrain.mode', '?')}); "
                          f"the read-offs cover {readoffs.covered()}", highlight=False, soft_wrap=True)
    return found


def deviations(label: str, rows: list[dict], ph: analysis.Phases, paper: readoffs.ReadOff) -> list[dict]:
    """Ours − paper at the dense, minimum and peak landmarks (blank where our curve has none)."""
    out = []
    for name, point in paper.points.items():
        index = getattr(ph, name)
        ours = rows[index] if index is not None else None
        approx = "~" if point.approx else ""
        out.append({"curve": label, "landmark": name, "paper test %": f"{approx}{point.test_acc:.1f}",
                    "test %": f"{ours['test_acc']:.1f}" if ours else "",
                    "Δ test": _signed(ours["test_acc"] - point.test_acc if ours else None),
                    "paper sparsity %": f"{approx}{point.sparsity:.2f}",
                    "sparsity %": f"{100 * ours['sparsity']:.2f}" if ours else "",
                    "Δ sparsity": _signed(100 * ours["sparsity"] - point.sparsity if ours else None, 2)})
    return out


def deviation_text(curves: list[Curve], paper: dict[str, readoffs.ReadOff], fmt: str) -> str:
    rows = [row for c in curves if c.label in paper for row in deviations(c.label, c.rows, c.phases, paper[c.label])]
    settings = "; ".join(f"{label}: {r.setting}" for label, r in paper.items())
    return results.render_rows(rows, list(rows[0]), fmt, title=f"ours − paper at the landmarks ({settings})",
                               caption="the paper's values are read off its figures: ± about 1 point, ~ rougher")


# ---------------------------------------------------------------- the command's output

def report(curves: list[Curve], output: Path | None, table_format: str = "table",
           figure_formats: tuple[str, ...] = ("png",), paper: bool = False) -> None:
    """Print the table, the landmarks and, with ``paper``, the deviation from the paper's read-offs; write
    compare.csv and the figure in each of ``figure_formats`` into ``output``."""
    overlays = paper_overlays(curves) if paper else {}
    extra = "\n" + deviation_text(curves, overlays, "md" if table_format == "md" else "table") if overlays else ""
    emit(table_text(curves, table_format), [("", curves)], table_format, extra)
    if output is not None:
        write_output(output, csv_text(curves), {fmt: figure(curves, fmt, overlays) for fmt in figure_formats})


def report_panels(panels: list[Panel], output: Path | None, table_format: str = "table",
                  figure_formats: tuple[str, ...] = ("png",)) -> None:
    """``report`` of ``compare_by``'s panels: compare.csv has the by column, the figure one panel per value."""
    emit(panels_text(panels, table_format), [(f"{p.title} · ", p.present) for p in panels], table_format)
    if output is not None:
        write_output(output, panels_text(panels, "csv"), {fmt: panels_figure(panels, fmt) for fmt in figure_formats})


def emit(table: str, groups: list[tuple[str, list[Curve]]], table_format: str, extra: str = "") -> None:
    """The table on stdout, then each curve's landmarks and ``extra``: on stderr where stdout holds a csv or json
    document, so that it stays one document."""
    sys.stdout.write(table)
    side = sys.stderr if table_format in ("csv", "json") else sys.stdout
    for heading, curves in groups:
        for c in curves:
            runs = ", ".join(r.info.run_id[:8] for r in c.runs)
            side.write(f"{'- ' if table_format == 'md' else ''}{heading}{c.label}: {phase_tag(c.rows, c.phases)}   "
                       f"(runs {runs})\n")
    side.write(extra)
    side.flush()


def write_output(output: Path, csv: str, figures: dict[str, bytes]) -> None:
    files = {CSV_NAME: csv.encode(), **{f"{FIGURE_STEM}.{fmt}": content for fmt, content in figures.items()}}
    results.write_folder(output, files)
    console.print(f"wrote {', '.join(str(output / name) for name in files)}", highlight=False, soft_wrap=True)


def _signed(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:+.{digits}f}"

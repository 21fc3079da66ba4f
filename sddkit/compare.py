"""``sddkit compare``: trajectories side by side, read only from what the tracker stored (``selection`` picks
them). Runs of one selector that share a config but not the seed are replicates, averaged to mean ± std; of
several configs the newest is compared and the others named. ``compare_by``: one panel per value of a param.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

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


@dataclass
class Curve:
    label: str
    runs: list             # the replicates' parent runs, one per seed, newest first
    rows: list[dict]       # mean by round; ``test_acc_std``, ``train_acc_noisy_std`` beside (not for one run)
    phases: analysis.Phases

    @property
    def seeds(self) -> str:
        return " ".join(sorted((r.data.tags.get("sddkit.seed", "?") for r in self.runs), key=_seed_order))

    @property
    def params(self) -> dict[str, str]:
        """The config (MLflow params) the replicates share, seed aside."""
        return self.runs[0].data.params


def compare(tracker: Tracker, selectors: list[str], experiment: str, where: list[str] = (),
            threshold: float | None = None, labels: list[str] | None = None) -> list[Curve]:
    """One curve per selector; ``threshold`` (None: each run's own) places the phases. Curves are labelled by
    ``labels`` (one per selector) or by their name and the params that differ between them."""
    check_filters(where)
    check_labels(selectors, labels)
    curves = []
    for selector in selectors:
        runs = newest_group(selector, select(tracker, selector, experiment, where))
        curves.append(build_curve(tracker, selector_label(selector, runs[0]), runs, threshold))
    for curve, label in zip(curves, curve_labels(curves, labels)):
        curve.label = label
    return curves


def write_trajectory_files(tracker: Tracker, selectors: list[str]) -> None:
    """Each ``--runs`` results folder's summary.json, trajectory.csv and curve.png, drawn from its run as
    ``sddkit run --results`` draws them. DVC's compare stage writes them, so that an edit of a plot or a table
    reruns that stage alone, never a trajectory stage (those depend on the fingerprinted code only)."""
    for selector in selectors:
        folder = Path(selector)
        if not (folder / RUN_FILE).is_file():
            raise TrackingError(f"--trajectory-files: --runs {selector} is not a results folder (it has no "
                                f"{RUN_FILE}); name the folders the trajectory stages write")
        run = run_from_folder(tracker, folder)
        rows = [round_row(x) for x in tracker.round_runs(run.info.run_id)]
        ph = analysis.phases(rows, analysis_setting(run, "interpolation_threshold"),
                             analysis_setting(run, "light_tolerance"))
        results.write_folder(folder, results.trajectory_files(rows, ph, trajectory_name(run)))


def select(tracker: Tracker, selector: str, experiment: str, where) -> list:
    return selection.select(tracker, selector, experiment, list(where), heading=f"--runs {selector}")


def check_labels(selectors: list[str], labels: list[str] | None) -> None:
    if labels and len(labels) != len(selectors):
        raise TrackingError(f"--label: give one per --runs selector ({len(selectors)} selectors, "
                            f"{len(labels)} labels)")


# ---------------------------------------------------------------- selection

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
    """The run's config without its seed (``Config.group_hash``). Runs of an older identity scheme lack the
    tag or hashed it otherwise: rebuilt from their params, so they group with today's runs of their config."""
    tag = run.data.tags.get("sddkit.group")
    return tag if tag and current_identity(run) else config.from_params(run.data.params).group_hash()


def differences(ours, theirs, limit: int = 3) -> str:
    keys = differing_keys([ours.data.params, theirs.data.params])
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


def curve_labels(curves: list[Curve], labels: list[str] | None, ignored: frozenset[str] = frozenset()) -> list[str]:
    """``labels``, else each curve's legend label (``ignored`` params left out of it); a label met twice (the
    same --label twice, or two selectors of one config) gets a number, so the curves are still told apart."""
    taken: list[str] = []
    for label in labels or legend_labels(curves, ignored=ignored):
        taken.append(unique_label(label, taken))
    return taken


def legend_labels(curves: list[Curve], limit: int = 3, ignored: frozenset[str] = frozenset()) -> list[str]:
    """Each curve's name, then ``key=value`` for the params that differ between the curves (``lottery ·
    noise.ratio=0.4``); the seeds where nothing else tells two curves apart."""
    keys = [k for k in differing_keys([c.params for c in curves]) if k not in ignored]
    labels = []
    for c in curves:
        shown = [f"{k}={c.params.get(k)}" for k in keys if c.params.get(k) != c.label]
        labels.append(" · ".join([c.label, *shown[:limit]] + (["…"] if len(shown) > limit else [])))
    return [f"{label} · seeds {c.seeds}" if labels.count(label) > 1 else label for label, c in zip(labels, curves)]


def differing_keys(params: list[dict[str, str]]) -> list[str]:
    return listing.differing_keys(params, skip=("seed",))


# ---------------------------------------------------------------- curves

def build_curve(tracker: Tracker, label: str, runs: list, threshold: float | None) -> Curve:
    rows = results.mean_rows([[round_row(x) for x in tracker.round_runs(r.info.run_id)] for r in runs])
    if len(runs) == 1:  # one run has no spread: no band, a blank std (not 0.0)
        rows = [{k: v for k, v in r.items() if not k.endswith("_std")} for r in rows]
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


def table_text(curves: list[Curve], fmt: str = "table", heading: str = "", missing: list[str] = ()) -> str:
    """The comparison in ``fmt``: ``table`` and ``md`` show the cells a reader wants (% with ± std, phases
    and landmarks); ``csv`` and ``json`` the numbers of compare.csv. ``heading`` opens the title (a panel's
    ``noise.ratio = 0.4``), which names the ``missing`` curves too."""
    if fmt in ("csv", "json"):
        columns, rows = data_rows(curves)
        return results.render_rows(rows, columns, fmt)
    shared = shared_sparsity(curves)
    columns = header(curves, shared)
    rows = [dict(zip(columns, table_row(curves, i, shared))) for i in range(max(len(c.rows) for c in curves))]
    title = " vs ".join(f"{c.label} (seeds {c.seeds})" for c in curves)
    title = (f"{heading}: " if heading else "") + title + "".join(f"; no {label} run" for label in missing)
    return results.render_rows(rows, columns, fmt, title=title,
                               caption="train: accuracy on the noisy labels trained on; ± the sample std over seeds"
                               + ("; Δ: the second curve minus the first" if len(curves) >= 2 else ""))


def header(curves: list[Curve], shared: bool) -> list[str]:
    names = ["round"] + (["sparsity %"] if shared else [])
    for c in curves:
        columns = ("train %", "test %", "phase") if shared else ("sparsity %", "train %", "test %", "phase")
        names += [f"{c.label}\n{k}" for k in columns]
    if len(curves) >= 2:
        names += [f"Δ {k}\n2nd − 1st" for k in ("test", "train")]
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
DIFF_COLUMNS = ("diff:test_acc", "diff:train_acc_noisy")


def data_columns(labels: list[str]) -> list[str]:
    return ["round"] + [f"{label}:{k}" for label in labels for k in (*CURVE_COLUMNS, "phase", "n")] + \
        (list(DIFF_COLUMNS) if len(labels) >= 2 else [])


def data_rows(curves: list[Curve]) -> tuple[list[str], list[dict]]:
    """One row a round: each curve's means and stds (``<label>:<metric>``; a single run's std blank), its phase
    and replicate count, then the differences of the first two curves."""
    columns = data_columns([c.label for c in curves])
    rows = []
    for i in range(max(len(c.rows) for c in curves)):
        row = {"round": i}
        for c in (c for c in curves if i < len(c.rows)):
            row.update({f"{c.label}:{k}": round(c.rows[i][k], 4) for k in CURVE_COLUMNS if k in c.rows[i]})
            row.update({f"{c.label}:phase": c.phases.label(i), f"{c.label}:n": len(c.runs)})
        if len(curves) >= 2:
            row.update({f"diff:{k}": _rounded(difference(curves, i, k)) for k in ("test_acc", "train_acc_noisy")})
        rows.append(row)
    return columns, rows


def csv_text(curves: list[Curve]) -> str:
    return table_text(curves, "csv")


# ---------------------------------------------------------------- the figure

def figure(curves: list[Curve], fmt: str = "png", paper: dict[str, readoffs.ReadOff] | None = None) -> bytes:
    """The compare figure (``plots.compare_figure``); ``paper``: the read-off to overlay, by curve label."""
    from sddkit import plots
    series = [plot_series(f"{c.label} (n={len(c.runs)})", c.rows, c.phases, (paper or {}).get(c.label))
              for c in curves]
    return plots.compare_figure(series, figure_title(curves), fmt)


def plot_series(label: str, rows: list[dict], ph: analysis.Phases, paper: readoffs.ReadOff | None) -> plots.Series:
    from sddkit import plots
    column = lambda key: [r[key] for r in rows] if key in rows[0] else None  # noqa: E731
    landmarks = {n: getattr(ph, n) for n in ("dense", "minimum", "peak", "last") if getattr(ph, n) is not None}
    return plots.Series(label, column("remaining"), column("test_acc"), column("train_acc_noisy"),
                        [ph.label(i) for i in range(len(rows))], landmarks, column("test_acc_std"),
                        column("train_acc_noisy_std"),
                        paper={k: (1 - p.sparsity / 100, p.test_acc) for k, p in paper.points.items()} if paper else None,
                        paper_label=paper.setting if paper else "")


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


def deviation_rows(curves: list[Curve], paper: dict[str, readoffs.ReadOff]) -> list[dict]:
    return [row for c in curves if c.label in paper for row in deviations(c.label, c.rows, c.phases, paper[c.label])]


def deviations(label: str, rows: list[dict], ph: analysis.Phases, paper: readoffs.ReadOff) -> list[dict]:
    """Ours − paper at the dense, minimum and peak landmarks, in test accuracy and sparsity points (blank where
    our curve has no such landmark)."""
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
    rows = deviation_rows(curves, paper)
    settings = "; ".join(f"{label}: {r.setting}" for label, r in paper.items())
    return results.render_rows(rows, list(rows[0]), fmt, title=f"ours − paper at the landmarks ({settings})",
                               caption="the paper's values are read off its figures: ± about 1 point, ~ rougher") \
        if rows else ""


# ---------------------------------------------------------------- the command's output

def report(curves: list[Curve], output: Path | None, table_format: str = "table",
           figure_formats: tuple[str, ...] = ("png",), paper: bool = False) -> None:
    """Print the table (``table_format``), each curve's landmarks and, with ``paper``, the deviation from the
    paper's read-offs; write compare.csv and the figure in each of ``figure_formats`` into ``output``.
    With csv or json on stdout, everything but the table goes to stderr, so stdout stays one document."""
    overlays = paper_overlays(curves) if paper else {}
    sys.stdout.write(table_text(curves, table_format))
    side = side_stream(table_format)
    write_landmarks(side, curves, table_format)
    if overlays:
        side.write("\n" + deviation_text(curves, overlays, "md" if table_format == "md" else "table"))
    side.flush()
    if output is not None:
        write_output(output, csv_text(curves), {fmt: figure(curves, fmt, overlays) for fmt in figure_formats})


def side_stream(table_format: str):
    """Where the lines beside the table go: stderr when stdout holds a csv or json document."""
    return sys.stderr if table_format in ("csv", "json") else sys.stdout


def write_landmarks(side, curves: list[Curve], table_format: str, heading: str = "") -> None:
    for c in curves:
        runs = ", ".join(r.info.run_id[:8] for r in c.runs)
        side.write(f"{'- ' if table_format == 'md' else ''}{heading}{c.label}: {phase_tag(c.rows, c.phases)}   "
                   f"(runs {runs})\n")


def write_output(output: Path, csv: str, figures: dict[str, bytes]) -> None:
    files = {CSV_NAME: csv.encode(), **{f"{FIGURE_STEM}.{fmt}": content for fmt, content in figures.items()}}
    results.write_folder(output, files)
    console.print(f"wrote {', '.join(str(output / name) for name in files)}", highlight=False, soft_wrap=True)


# ---------------------------------------------------------------- one panel per value of a param (--by)

@dataclass
class Panel:
    """The curves of one value of the ``--by`` param: one slot per selector, in the selectors' order, None
    where that selector has no finished run with this value."""
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


def compare_by(tracker: Tracker, selectors: list[str], experiment: str, by: str, where: list[str] = (),
               threshold: float | None = None, labels: list[str] | None = None) -> list[Panel]:
    """``compare`` once per value of the tag or param ``by`` (numeric order where the values are numbers): in
    each panel, each selector's replicates of its newest config with that value, as one curve. A curve keeps
    its label (``labels``, else its name and the params other than ``by`` that differ) in every panel."""
    check_filters(where)
    check_labels(selectors, labels)
    groups = split_by(by, {s: select(tracker, s, experiment, list(where)) for s in selectors})
    values = value_order({value for runs_by_value in groups.values() for value in runs_by_value})
    slots = [[None] * len(selectors) for _ in values]
    for i, selector in enumerate(selectors):
        for j, value in enumerate(values):
            if value in groups[selector]:
                runs = newest_group(f"{selector} at {by}={value}", groups[selector][value])
                slots[j][i] = build_curve(tracker, selector_label(selector, runs[0]), runs, threshold)
    each_selector = [next(panel[i] for panel in slots if panel[i] is not None) for i in range(len(selectors))]
    names = curve_labels(each_selector, labels, ignored=frozenset({by}))
    for panel in slots:
        for curve, name in zip(panel, names):
            if curve is not None:
                curve.label = name
    return [Panel(by, value, panel, names) for value, panel in zip(values, slots)]


def split_by(by: str, selected: dict[str, list]) -> dict[str, dict[str, list]]:
    """Each selector's runs by their value of ``by`` (newest first, as selected); a selector none of whose
    runs has ``by`` is an error naming the params that do differ."""
    groups = {}
    for selector, runs in selected.items():
        groups[selector] = {}
        for r in runs:
            value = stored_value(r, by)
            if value is not None:
                groups[selector].setdefault(value, []).append(r)
        if not groups[selector]:
            keys = differing_keys([r.data.params for found in selected.values() for r in found])
            raise TrackingError(f"--by {by}: no trajectory of --runs {selector} has that tag or param; the params "
                                f"that differ between the selected trajectories: {', '.join(keys) or 'none'}")
        lacking = len(runs) - sum(map(len, groups[selector].values()))
        if lacking:
            console.print(f"[yellow]note:[/] --runs {selector}: {lacking} trajectories have no {by}; left out",
                          highlight=False)
    return groups


def value_order(values: set[str]) -> list[str]:
    """Numbers by value (0.05 before 0.2 before 0.4), anything else as text."""
    try:
        return sorted(values, key=float)
    except ValueError:
        return sorted(values)


def panels_text(panels: list[Panel], fmt: str = "table") -> str:
    """``table`` and ``md``: each panel's table, titled by its value; ``csv`` and ``json``: the rows of all
    panels in one document, the ``by`` key's value the first column (a missing curve's columns blank)."""
    if fmt not in ("csv", "json"):
        return "\n".join(table_text(p.present, fmt, p.title, p.missing) for p in panels)
    key = panels[0].key
    columns, rows = [key, *data_columns(panels[0].labels)], []
    for p in panels:
        paired = all(c is not None for c in p.curves[:2])  # diff: the second selector minus the first
        for row in data_rows(p.present)[1]:
            rows.append({key: as_yaml(p.value), **{k: v for k, v in row.items() if paired or k not in DIFF_COLUMNS}})
    return results.render_rows(rows, columns, fmt)


def panels_figure(panels: list[Panel], fmt: str = "png") -> bytes:
    """The compare figure with one panel per value (``plots.panels_figure``), each curve's colour and legend
    entry the same in every panel; the legend gives each curve's replicate count (per panel where it varies)."""
    from sddkit import plots
    counts = [" / ".join(dict.fromkeys(str(len(p.curves[i].runs)) for p in panels if p.curves[i] is not None))
              for i in range(len(panels[0].labels))]
    drawn = [(p.title, [plot_series(f"{c.label} (n={n})", c.rows, c.phases, None) if c is not None else None
                        for c, n in zip(p.curves, counts)]) for p in panels]
    return plots.panels_figure(drawn, figure_title([c for p in panels for c in p.present]), fmt)


def report_panels(panels: list[Panel], output: Path | None, table_format: str = "table",
                  figure_formats: tuple[str, ...] = ("png",)) -> None:
    """``report`` of ``compare_by``'s panels: the tables, each curve's landmarks, compare.csv with the by
    column and the figure with one panel per value."""
    sys.stdout.write(panels_text(panels, table_format))
    side = side_stream(table_format)
    for p in panels:
        write_landmarks(side, p.present, table_format, heading=f"{p.title} · ")
    side.flush()
    if output is not None:
        write_output(output, panels_text(panels, "csv"), {fmt: panels_figure(panels, fmt) for fmt in figure_formats})


def _signed(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:+.{digits}f}"


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _seed_order(seed: str) -> int:
    return int(seed) if str(seed).isdigit() else -1

"""``sddkit reproduce``: the studies' grids (``sddkit.studies``) as one sweep, each of the paper's statements
judged on the stored trajectories, and the report. Cells are ordinary trajectories, so a stored one is reused
and one two studies share runs once; the reproduction is a run of kind ``reproduction`` holding the report."""
from __future__ import annotations

import dataclasses
import datetime
import json
import time
from pathlib import Path

from rich.console import Console

from sddkit import analysis, analyze, compare, config, paper_report, plots, readoffs, results, studies
from sddkit import sweep as sweeps
from sddkit.config import Config, ConfigError, SweepConfig, with_values
from sddkit.fingerprint import code_hash, git_commit, package_versions
from sddkit.studies import Replicate, Study
from sddkit.tracking import Tracker

console = Console(stderr=True)
KIND = "reproduction"
DEFAULT_SEEDS = [0, 1, 2]  # the paper's CIFAR figures average 3 seeds
# The landscape study's walk: 9 points over [-1, 1] (and ±0.1), one direction a round: ~11 evaluations of the
# train and test sets per round, so the study costs a fraction of one round's training.
LANDSCAPE = analyze.Settings(landscape_points=9, sharpness_radius=0.1)
TITLE = "sddkit reproduce — He et al., Sparse Double Descent (ICML 2022)"


@dataclasses.dataclass
class Plan:
    cells: list[sweeps.Cell]
    members: dict[str, dict[str, list[str]]]  # study -> curve -> cell key of each seed


def plan(base: Config, chosen: list[Study], seeds: list[int]) -> Plan:
    """Every study's curves × seeds as cells over ``base``, each distinct trajectory once."""
    cells: dict[str, sweeps.Cell] = {}
    members: dict[str, dict[str, list[str]]] = {}
    for study in chosen:
        members[study.name] = {}
        for curve, values in study.curves.items():
            keys = members[study.name][curve] = []
            for seed in seeds:
                try:
                    cfg = with_values(base, {**values, "seed": seed})
                except ConfigError as exc:
                    raise ConfigError(f"study {study.name}, curve {curve}: {exc}") from exc
                point = {k: v for k, v in values.items() if k != "retrain.mode"}
                cells.setdefault(cfg.identity_hash(), sweeps.Cell(cfg, point))
                keys.append(cfg.identity_hash())
    return Plan(sweeps.with_twins(cells), members)


def reproduce(base: Config, chosen: list[Study], settings: SweepConfig, root: Path, output: Path,
              command: str) -> dict:
    """Run the ``chosen`` studies; write the report (a dict, see ``paper_report``) into ``output`` and the run."""
    seeds = settings.seeds or DEFAULT_SEEDS
    p = plan(base, chosen, seeds)
    started = time.monotonic()
    params = {"reproduce.studies": " ".join(s.name for s in chosen), "reproduce.seeds": " ".join(map(str, seeds)),
              "reproduce.cells": str(len(p.cells)), "preset": base.preset, "sweep.executor": settings.executor}
    done = sweeps.run_sweep(base, settings, root, cells=p.cells, kind=KIND, params=params)
    try:
        judged = [judge_study(done.tracker, root, study, p, done.outcomes) for study in chosen]
        report = build_report(base, chosen, judged, seeds, done, command, time.monotonic() - started, p)
        files = {**paper_report.files(report), "verdicts.json": verdicts_json(report, seeds),
                 "summary.json": summary_json(report)}
    except BaseException:
        done.tracker.set_status(done.run_id, "FAILED")
        raise
    sweeps.close_sweep_run(done, files)
    (output / paper_report.FIGURES).mkdir(parents=True, exist_ok=True)
    results.write_folder(output, files)
    return report


# ---------------------------------------------------------------- one study

@dataclasses.dataclass
class Judged:
    data: dict[str, list[Replicate]]   # curve -> its seeds
    runs: dict[str, list]              # curve -> parent runs
    verdicts: list[studies.Verdict]


def judge_study(tracker: Tracker, root: Path, study: Study, p: Plan, outcomes: dict) -> Judged:
    """Every curve's seeds read back from the store (with their sharpness in a landscape study), judged."""
    runs, data, cells = {}, {}, {c.key: c for c in p.cells}
    for curve, keys in p.members[study.name].items():
        runs[curve] = [tracker.run(outcomes[k].run_id) for k in keys]
        data[curve] = [replicate(tracker, root, run, cells[k].cfg, study.landscape)
                       for run, k in zip(runs[curve], keys)]
    return Judged(data, runs, [studies.judge(check, data) for check in study.checks])


def replicate(tracker: Tracker, root: Path, run, cfg: Config, landscape: bool) -> Replicate:
    rows = compare.round_rows(tracker, run)
    if landscape:
        sharpness = analyze.sharpness_curve(tracker, root, run, LANDSCAPE)
        for row in rows:
            row["sharpness"] = sharpness[row["round"]]
    settings = (cfg.analysis.interpolation_threshold, cfg.analysis.light_tolerance)
    return Replicate(cfg.seed, rows, analysis.phases(rows, *settings), *settings)


# ---------------------------------------------------------------- figures and tables

def study_images(study: Study, judged: Judged, base: Config) -> list[tuple[str, str, bytes]]:
    """The accuracy figure (the study's panels, the paper's read-offs) and the ``metric`` against sparsity."""
    order = list(study.curves)
    series = {}
    for curve in order:
        reps = judged.data[curve]
        rows, ph = results.mean_curve([r.rows for r in reps], reps[0].threshold, reps[0].tolerance)
        paper = readoffs.matching(judged.runs[curve][0].data.params)
        series[curve] = compare.plot_series(f"{curve} (n={len(reps)})", rows, ph, paper)
    panels = [(" · ".join(panel), [series[c] if c in panel else None for c in order]) for panel in study.panels]
    seeds = " ".join(str(r.seed) for r in judged.data[order[0]])
    noise = f"{base.noise.kind} noise" if study.name != "clean" else "no label noise"
    title = f"{study.name}: {base.data.name} · {base.model.arch} · {noise} · seeds {seeds}"
    images = [(f"{study.name}.png", f"{study.name}: test (solid) and noisy-train (dashed) accuracy against the "
               f"remaining weights, mean ± std over seeds; phases below", plots.panels_figure(panels, title))]
    if study.metric:
        drawn = [metric_series(curve, judged.data[curve], study.metric) for curve in order]
        if all(s is not None for s in drawn):
            images.append((f"{study.name}-{study.metric}.png", f"{study.name}: {study.metric} against the remaining "
                           f"weights, mean ± std over seeds, with the test accuracy (dotted, right axis)",
                           plots.metric_png(drawn, study.metric, f"{study.name}: {study.metric} · seeds {seeds}")))
    return images


def readoffs_line(judged: Judged) -> str:
    """Which of the paper's read-offs the figure overlays (hollow diamonds), or which settings have any."""
    found = {c: readoffs.matching(runs[0].data.params) for c, runs in judged.runs.items()}
    shown = [f"{c}: {r.setting}" for c, r in found.items() if r is not None]
    return ("The paper's read-offs (hollow diamonds): " + "; ".join(shown) if shown else
            f"No read-off of the paper for this preset (sddkit/readoffs.yaml covers {readoffs.covered()}).")


def metric_series(curve: str, reps: list[Replicate], metric: str) -> dict | None:
    rounds = min(len(r.rows) for r in reps)
    if any(metric not in r.rows[i] for r in reps for i in range(rounds)):
        return None
    values = [[r.rows[i][metric] for r in reps] for i in range(rounds)]
    return {"label": curve, "remaining": [reps[0].rows[i]["remaining"] for i in range(rounds)],
            "mean": [studies.mean(v) for v in values], "std": [studies.std(v) for v in values],
            "test_acc": [studies.mean([r.rows[i]["test_acc"] for r in reps]) for i in range(rounds)]}


def landmark_row(curve: str, reps: list[Replicate]) -> dict:
    """A curve's landmarks over its seeds, as text: accuracy and sparsity mean ± std."""
    def at(name: str) -> str:
        found = [(r.rows[getattr(r.phases, name)]) for r in reps if getattr(r.phases, name) is not None]
        if len(found) < len(reps):
            return f"none in {len(reps) - len(found)} of {len(reps)}"
        acc = studies.spread([f["test_acc"] for f in found])
        sparsity = 100 * studies.mean([f["sparsity"] for f in found])
        return acc if name in ("dense", "last") else f"{acc} ({sparsity:.2f}%)"

    margins = [analysis.double_descent_margins(r.rows, r.phases) for r in reps]
    threshold = [r.phases.interpolation_threshold for r in reps]
    return {"curve": curve, "n": len(reps), "dense": at("dense"), "minimum": at("minimum"), "peak": at("peak"),
            "last": at("last"),
            "threshold": ("round " + studies.spread(threshold)) if None not in threshold else "not reached",
            **{k: studies.spread([m[k] for m in margins]) if all(m[k] == m[k] for m in margins) else ""
               for k in ("dip", "rise")}}


# ---------------------------------------------------------------- the report

def build_report(base: Config, chosen: list[Study], judged: list[Judged], seeds: list[int], done, command: str,
                 seconds: float, p: Plan) -> dict:
    statements, parts = [], []
    for study, j in zip(chosen, judged):
        for check, verdict in zip(study.checks, j.verdicts):
            statements.append({"study": study.name, "figure": study.figure, "statement": check.statement,
                               "check": check.name, "criterion": check.criterion, "numbers": verdict.numbers,
                               "verdict": verdict.verdict, "values": verdict.values})
        parts.append({"name": study.name, "figure": study.figure, "about": study.about,
                      "readoffs": readoffs_line(j),
                      "images": study_images(study, j, base),
                      "landmarks": [landmark_row(c, reps) for c, reps in j.data.items()], "curves": study.curves})
    ran = sum(1 for c in p.cells if done.outcomes[c.key].pid)  # a cell found finished has no worker
    meta = [("preset", f"{base.preset} — {config.preset_description(base.preset)}"),
            ("studies", ", ".join(s.name for s in chosen)), ("seeds", " ".join(map(str, seeds))),
            ("trajectories", f"{len(p.cells)} distinct: {ran} run by this command, {len(p.cells) - ran} found "
                             f"finished in the store"),
            ("wall time", f"{seconds / 60:.1f} min"), ("command", command),
            ("store", f"{done.tracker.uri}, experiment {base.tracking.experiment!r}, run {KIND}·"
                      f"{done.sweep_id[:8]} ({done.run_id})"),
            ("code fingerprint", code_hash()), ("git commit", git_commit(done.tracker.root)),
            ("package versions", package_versions()),
            ("written", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))]
    flat = {k: v for k, v in base.flat().items() if not k.startswith("tracking.") and k != "seed"}
    return {"title": TITLE, "meta": meta, "statements": statements, "studies": parts,
            "config": [(k, config.yaml_text(v)) for k, v in flat.items()],
            "deviations": config.preset_deviations(base.preset)}


def verdicts_json(report: dict, seeds: list[int]) -> bytes:
    out = {"seeds": seeds, "counts": paper_report.counts(report),
           "statements": [{k: s[k] for k in ("study", "statement", "check", "verdict", "numbers", "values")}
                          for s in report["statements"]]}
    return (json.dumps(out, indent=1, ensure_ascii=False) + "\n").encode()


def summary_json(report: dict) -> bytes:
    """DVC metrics: how many statements hold, do not hold, cannot be told."""
    counts = {k.replace(" ", "_"): v for k, v in paper_report.counts(report).items()}
    return (json.dumps({**counts, "statements": len(report["statements"])}, indent=1) + "\n").encode()


def print_summary(report: dict, output: Path, table_format: str = "table") -> None:
    columns = {"study": "study", "statement": "the paper says", "numbers": "our numbers", "verdict": "verdict"}
    results.print_table(results.render_table(report["statements"], columns, table_format,
                                             "the paper's statements, judged"))
    counts = paper_report.counts(report)
    console.print(", ".join(f"{n} {v}" for v, n in counts.items()) + f"; report: {output / 'report.html'} (and "
                  f"report.md); {dict(report['meta'])['store']}", highlight=False, soft_wrap=True)


def print_studies(table_format: str) -> None:
    rows = [{"name": s.name, "figure": s.figure, "curves": ", ".join(s.curves), "statements": len(s.checks)}
            for s in map(studies.load, studies.names())]
    columns = {"name": "study", "figure": "mirrors", "curves": "curves", "statements": "statements"}
    results.print_table(results.render_table(rows, columns, table_format, "studies (sddkit/studies/*.yaml)"))

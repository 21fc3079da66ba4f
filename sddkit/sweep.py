"""``sddkit sweep`` (and ``sddkit run --seeds`` through it): a grid of cells (grid point × retrain mode × seed), each
an ordinary trajectory, run as one job on an executor with one live view, then the landmarks table and figure. A
reinit cell follows its lottery twin round by round (a twin the grid lacks is added); finished cells are reported,
not rerun. Cells are tagged ``sddkit.sweep``; the sweep is a run of kind ``sweep`` holding its table and figure.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from rich.console import Console

from sddkit import analysis, executors, replicates, results, runner, sweep_view
from sddkit.config import Config, ConfigError, SweepConfig, with_values
from sddkit.files import write_atomic
from sddkit.fingerprint import code_hash
from sddkit.paths import sqlite_path, tracking_uri
from sddkit.tracking import Tracker, TrackingError, TrajectoryRun, literal, param_text
from sddkit.twin import lottery_twin

console = Console(stderr=True)
SWEEP = "sweep"  # the sweep run's sddkit.kind
POLL_S = 0.5


class SweepFailed(RuntimeError):
    """One or more cells ended with an error; the message names them."""


@dataclasses.dataclass
class Cell:
    cfg: Config
    point: dict             # the grid values of this cell
    needs: str | None = None   # the key of the cell it waits for (a reinit's lottery twin)
    added: bool = False     # not in the grid: the twin a reinit cell needs

    @property
    def key(self) -> str:
        return self.cfg.identity_hash()

    @property
    def label(self) -> str:
        point = "".join(f"·{k}={param_text(v)}" for k, v in self.point.items())
        return f"{self.cfg.name}{point}·s{self.cfg.seed}"


@dataclasses.dataclass
class Sweep:
    """A finished sweep: its cells and, per cell key, its executors.Outcome (or stored run) rows."""
    sweep_id: str
    cells: list[Cell]
    outcomes: dict[str, executors.Outcome]
    tracker: Tracker
    run_id: str


# ---------------------------------------------------------------- the grid

def expand(base: Config, settings: SweepConfig) -> list[Cell]:
    """Every grid point × mode × seed as a cell; reinit cells get their lottery twin (added if missing)."""
    points = [{}]
    for key, values in settings.grid.items():
        points = [{**p, key: v} for p in points for v in values]
    modes = settings.modes or [base.retrain.mode]
    seeds = settings.seeds or [base.seed]
    cells: dict[str, Cell] = {}
    for point in points:
        for mode in modes:
            for seed in seeds:
                try:
                    cfg = with_values(base, {**point, "retrain.mode": mode, "seed": seed})
                except ConfigError as exc:
                    raise ConfigError(f"sweep cell {point or ''} mode {mode} seed {seed}: {exc}") from exc
                add(cells, Cell(cfg, point))
    return with_twins(cells)


def with_twins(cells: dict[str, Cell]) -> list[Cell]:
    """The cells in run order, each reinit cell waiting for its lottery twin (added where ``cells`` lacks it)."""
    for cell in list(cells.values()):
        if cell.cfg.retrain.mode == "reinit" and not cell.cfg.retrain.masks_from:
            twin = Cell(lottery_twin(cell.cfg), cell.point)
            cell.needs = twin.key
            if twin.key not in cells:
                twin.added = True
                cells[twin.key] = twin
    return sorted(cells.values(), key=lambda c: c.needs is not None)  # twins first: they gate the reinit cells


def add(cells: dict[str, Cell], cell: Cell) -> None:
    if cell.key in cells:
        raise ConfigError(f"sweep: cells {cells[cell.key].label} and {cell.label} are the same trajectory (the grid "
                          f"varies a key that does not change results, e.g. tracking.* or train.threads); drop it")
    cells[cell.key] = cell


def sweep_id(cells: list[Cell], code: str) -> str:
    text = json.dumps(sorted(c.key for c in cells)) + code
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# ---------------------------------------------------------------- running it

def run_sweep(base: Config, settings: SweepConfig, root: Path, force: bool = False,
              results_dir: Path | None = None, by_seed: bool = False, cells: list[Cell] | None = None,
              kind: str = SWEEP, params: dict[str, str] | None = None, prepared: Path | None = None,
              run_files: Path | None = None, prepare_into: Path | None = None) -> Sweep:
    """Run every cell not finished yet on the executor ``settings`` names. ``results_dir``: each cell's files in
    ``cells/<label>`` (``seed-N`` with ``by_seed``); ``cells`` replaces the grid (a reproduction's, run as
    ``kind`` with ``params``); ``run_files``: each cell writes only ``<run_files>/<name>/run.json`` (DVC);
    ``prepare_into``: ``sddkit prepare`` into this folder first (while the workers start), then ``prepared``."""
    cells = expand(base, settings) if cells is None else cells
    check_run_files(cells, run_files)
    if settings.executor == "ray":
        executors.import_ray()  # a missing extra stops the sweep before anything is written
        executors.check_address(settings.address)  # and so does a cluster address where nothing answers
    uri = tracking_uri(base.tracking.uri, root)
    # Local workers start first: they import torch and the engine while the store is read here.
    executor = make_executor(settings, uri, len(cells)) if settings.executor == "local" else None
    try:
        tracker = Tracker(uri, root)
        tracker.check_writable()
        # Before any task starts: workers creating the experiment at once would lose runs.
        tracker.experiment_id(base.tracking.experiment)
        code = code_hash()
        stored = {} if force else finished_cells(tracker, cells, code)
        if prepare_into is not None:
            prepared = prepare_data(base, root, prepare_into)
    except BaseException:
        if executor is not None:
            executor.cancel([])
        raise
    sid = sweep_id(cells, code)
    todo = [c for c in cells if c.key not in stored]
    if executor is not None and not todo:  # every cell finished already: nothing for the workers
        executor.cancel([])
        executor = None
    elif executor is None and todo:
        executor = make_executor(settings, uri, len(todo))
    parallel = executor is not None and (executor.name == "ray" or executor.jobs > 1)
    logs = root / ".sddkit" / f"sweep-{sid}"
    logs.mkdir(parents=True, exist_ok=True)
    tasks = {c.key: executors.Task(c.key, cell_config(c.cfg, uri, settings, parallel), str(root), code, force,
                                   str(tasks_folder(results_dir, c, by_seed)) if results_dir else None,
                                   str(logs / f"{c.label}.log"), str(prepared) if prepared else None,
                                   str(run_file(run_files, c)) if run_files else None) for c in todo}
    print_header(kind, sid, len(cells), len(stored), executor, logs)
    sweep_run = open_sweep_run(tracker, base, settings, sid, cells, kind, params)
    view = make_view(cells, stored)
    outcomes: dict[str, executors.Outcome] = dict(stored)
    failures: dict[str, str] = {}
    try:
        if executor is not None:
            drive(executor, todo, tasks, outcomes, failures, view, tracker, sid)
    except BaseException:
        tracker.set_status(sweep_run, "KILLED")
        raise
    finally:
        view.close()
    for cell in cells:
        if cell.key in stored:  # reported here, not by a worker: tag it, and write its files
            tracker.set_tag(outcomes[cell.key].run_id, "sddkit.sweep", sid)
            run = TrajectoryRun(tracker, outcomes[cell.key].run_id) if results_dir or run_files else None
            if results_dir is not None:
                runner.write_results(tasks_folder(results_dir, cell, by_seed), run, cell.cfg, outcomes[cell.key].rows)
            if run_files is not None:
                run_file(run_files, cell).parent.mkdir(parents=True, exist_ok=True)
                write_atomic(run_file(run_files, cell), runner.run_pointer(run, cell.cfg))
    if failures:
        tracker.set_status(sweep_run, "FAILED")
        detail = "; ".join(f"{label}: {why}" for label, why in failures.items())
        raise SweepFailed(f"{len(failures)} of {len(cells)} cells did not finish ({detail}); rerun the same "
                          f"command to continue them (finished cells are reported, not redone)")
    return Sweep(sid, cells, outcomes, tracker, sweep_run)


def prepare_data(cfg: Config, root: Path, folder: Path) -> Path:
    """``sddkit prepare --out folder`` in the driver: DVC pins these files as the trajectories stage's outputs."""
    from sddkit import prepare
    for f in prepare.prepare(cfg, root, folder):
        console.print(f"{f.md5}  {f.path}", highlight=False)
    return folder


def print_header(kind: str, sid: str, cells: int, stored: int, executor, logs: Path) -> None:
    """What runs where, and where the cells' own output goes: two lines, never wrapped."""
    where = f" on {executor.describe()}" if executor else ""
    console.print(f"{kind} {sid}: {cells} cells ({stored} finished already){where}", highlight=False, soft_wrap=True)
    console.print(f"  cell logs: {logs}/", highlight=False, soft_wrap=True)


def run_file(folder: Path, cell: Cell) -> Path:
    return folder / cell.cfg.name / "run.json"


def check_run_files(cells: list[Cell], folder: Path | None) -> None:
    """--run-files names each cell's file by its trajectory name: two cells of one name would share it."""
    names = [c.cfg.name for c in cells]
    twice = sorted({n for n in names if names.count(n) > 1})
    if folder is not None and twice:
        raise ConfigError(f"--run-files writes one run.json per trajectory name, and {len(cells)} cells share "
                          f"names ({', '.join(twice)}); drop the grid and seeds, or use --results")


def tasks_folder(results_dir: Path, cell: Cell, by_seed: bool) -> Path:
    return results_dir / (f"seed-{cell.cfg.seed}" if by_seed else f"cells/{cell.label}")


def drive(executor, todo: list[Cell], tasks: dict, outcomes: dict, failures: dict, view, tracker: Tracker,
          sid: str) -> None:
    """Submit each cell once what it needs is under way (a reinit once its twin trains: it never takes the
    worker its twin waits for); collect outcomes and events until all have ended."""
    waiting = {c.key: c for c in todo}
    running: dict = {}  # handle -> cell
    training: set[str] = set()  # the cells that have begun a round

    def show(event) -> None:
        if event.kind in ("round", "round_done"):
            training.add(event.key)
        view.event(event)
    try:
        while waiting or running:
            for cell in list(waiting.values()):
                if cell.needs in failures_by_key(failures, todo):
                    failures[cell.label] = "its lottery twin failed"
                    view.failed(cell.key, "skipped: its lottery twin failed")
                    del waiting[cell.key]
                elif cell.needs is None or cell.needs in outcomes or cell.needs in training:
                    running[executor.submit(tasks[cell.key])] = cell
                    view.queued(cell.key)
                    del waiting[cell.key]
            for event in executor.drain():
                show(event)
            for handle in executor.wait(list(running), POLL_S) if running else ():
                cell = running.pop(handle)
                outcome = executor.outcome(handle)
                for event in executor.drain():
                    show(event)
                if isinstance(outcome, executors.Outcome):
                    outcomes[cell.key] = outcome
                    tracker.set_tag(outcome.run_id, "sddkit.sweep", sid)
                    view.done(cell.key, outcome.rows)
                else:
                    failures[cell.label] = one_line(outcome)
                    failures_by_key(failures, todo)
                    view.failed(cell.key, one_line(outcome))
            view.refresh()
    except BaseException:  # Ctrl-C above all: stop the cells (each run KILLED; a rerun continues them)
        view.note("stopping the running cells (each run is marked KILLED; rerun the sweep to continue)")
        executor.cancel(list(running))
        close_cancelled(tracker, [tasks[c.key] for c in running.values()])
        raise
    executor.close()


def close_cancelled(tracker: Tracker, cancelled: list) -> None:
    """After ``executor.cancel``: a run a cancelled cell left RUNNING is marked KILLED and its lease released."""
    from sddkit import lease
    for task in cancelled:
        try:
            run = tracker.find_trajectory(task.cfg, task.code)
            if run is None or run.info.status != "RUNNING":
                continue
            TrajectoryRun(tracker, run.info.run_id).close_interrupted_rounds()
            tracker.set_status(run.info.run_id, "KILLED")
            lease.drop(tracker, run.info.experiment_id, task.cfg.identity_hash(), task.code)
        except Exception:  # noqa: BLE001 - best effort on the way out; a rerun takes a stale lease over anyway
            continue


def failures_by_key(failures: dict, cells: list[Cell]) -> set[str]:
    return {c.key for c in cells if c.label in failures}


def one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0] if isinstance(exc, (ConfigError, TrackingError, *runner.USER_ERRORS)) \
        else f"{type(exc).__name__}: {text.splitlines()[-1]}"


def finished_cells(tracker: Tracker, cells: list[Cell], code: str) -> dict[str, executors.Outcome]:
    """The cells whose trajectory (this config, this code) is finished in the store: reported, not rerun."""
    out = {}
    for cell in cells:
        run = tracker.find_trajectory(cell.cfg, code)
        if run is not None and run.info.status == "FINISHED":
            store = TrajectoryRun(tracker, run.info.run_id)
            out[cell.key] = executors.Outcome(cell.key, run.info.run_id, store.completed, "", 0)
    return out


def cell_config(cfg: Config, uri: str, settings: SweepConfig, parallel: bool) -> Config:
    """A cell's config as its worker runs it: the sweep's store (not part of the identity) and its threads."""
    cfg = dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, uri=str(uri)))  # plain: YAML writes it
    return executors.threads_for(cfg, settings.cpus_per_trajectory, parallel)


def make_executor(settings: SweepConfig, uri: str, cells: int):
    if settings.executor == "ray":
        executor = executors.RayExecutor(settings.address, settings.cpus_per_trajectory,
                                         settings.gpus_per_trajectory, settings.max_retries, uri)
        if len(executor.nodes) > 1 and is_local_store(uri):
            executor.close()
            raise executors.ExecutorError(
                f"the Ray cluster has {len(executor.nodes)} nodes, whose workers cannot write this machine's "
                f"store {uri}: start `sddkit server --host 0.0.0.0 --auth` here and run the sweep with "
                f"MLFLOW_TRACKING_URI set to the URI it prints")
        return executor
    gpus = executors.gpu_count()
    if settings.gpus_per_trajectory == 0:  # asked to run on the CPU: the workers see no GPU
        return executors.LocalExecutor(executors.local_jobs(settings.jobs, 0, None, cells), 0, hide_gpus=gpus > 0,
                                       retries=settings.max_retries, warm=True)
    jobs = executors.local_jobs(settings.jobs, gpus, settings.gpus_per_trajectory, cells)
    return executors.LocalExecutor(jobs, gpus, retries=settings.max_retries, warm=True)


def is_local_store(uri: str) -> bool:
    return sqlite_path(uri) is not None or uri.startswith("file:") or "://" not in uri


# ---------------------------------------------------------------- the sweep's own run

def open_sweep_run(tracker: Tracker, base: Config, settings: SweepConfig, sid: str, cells: list[Cell],
                   kind: str = SWEEP, params: dict[str, str] | None = None) -> str:
    """The run of ``kind`` for this sweep id (reopened on a rerun), with the grid (or ``params``) as params."""
    exp = tracker.experiment_id(base.tracking.experiment)
    found = tracker.newest([exp], f"tags.`sddkit.kind` = {literal(kind)} and tags.`sddkit.sweep` = {literal(sid)}")
    if found is not None:
        tracker.set_status(found.info.run_id, "RUNNING")
        return found.info.run_id
    tags = {"sddkit.kind": kind, "sddkit.sweep": sid, "sddkit.code_hash": code_hash()}
    params = params or {"sweep.grid": json.dumps(settings.grid),
                        "sweep.modes": " ".join(settings.modes or [base.retrain.mode]),
                        "sweep.seeds": " ".join(map(str, settings.seeds or [base.seed])), "sweep.cells": str(len(cells)),
                        "sweep.executor": settings.executor}
    return tracker.create_run(exp, tags, f"{kind}·{sid[:8]}", {k: v[:6000] for k, v in params.items()})


def close_sweep_run(sweep: Sweep, files: dict[str, bytes]) -> None:
    sweep.tracker.log_files(sweep.run_id, files)
    sweep.tracker.set_status(sweep.run_id, "FINISHED")


# ---------------------------------------------------------------- the landmarks table and the figure

LANDMARK_KEYS = ("dense_test_acc", "minimum_test_acc", "minimum_sparsity", "peak_test_acc", "peak_sparsity",
                 "last_test_acc", "dip", "rise", "drop")


def landmark_rows(sweep: Sweep) -> list[dict]:
    """One row per grid point and mode: every landmark averaged over its seeds (n = how many)."""
    groups: dict[tuple, list[dict]] = {}
    for cell in sweep.cells:
        rows = sweep.outcomes[cell.key].rows
        ph = analysis.phases(rows, cell.cfg.analysis.interpolation_threshold, cell.cfg.analysis.light_tolerance)
        summary = {**results.summary(rows, ph)}
        name = (json.dumps(cell.point, sort_keys=True), cell.cfg.name)
        groups.setdefault(name, []).append({"seed": cell.cfg.seed, **summary})
    out = []
    for (point, name), members in groups.items():
        row = {**json.loads(point), "trajectory": name, "n": len(members),
               "seeds": " ".join(str(m["seed"]) for m in sorted(members, key=lambda m: m["seed"]))}
        for key in LANDMARK_KEYS:
            values = [m[key] for m in members if m.get(key) is not None and m[key] == m[key]]  # NaN: no minimum
            row[key] = sum(values) / len(values) if values else None
        out.append(row)
    return out


def landmark_columns(grid_keys: list[str]) -> dict[str, str]:
    return {**{k: k for k in grid_keys}, "trajectory": "trajectory", "n": "n", "dense_test_acc": "dense %",
            "minimum_test_acc": "minimum %", "minimum_sparsity": "at sparsity", "peak_test_acc": "peak %",
            "peak_sparsity": "at sparsity ", "last_test_acc": "last %", "dip": "dip", "rise": "rise",
            "drop": "drop"}


def landmark_formats() -> dict:
    acc, pct = (lambda v: f"{v:.1f}"), (lambda v: f"{100 * v:.2f}%")  # noqa: E731 (None is shown blank)
    return {"dense_test_acc": acc, "minimum_test_acc": acc, "peak_test_acc": acc, "last_test_acc": acc,
            "minimum_sparsity": pct, "peak_sparsity": pct, "dip": acc, "rise": acc, "drop": acc}


def sweep_figure(sweep: Sweep, grid_keys: list[str], experiment: str) -> bytes | None:
    """One panel per value of the first grid key, a mean ± std curve per trajectory name; None, with a note,
    where it cannot be drawn."""
    from sddkit import compare
    names = list(dict.fromkeys(c.cfg.name for c in sweep.cells))
    where = [f"sddkit.sweep={sweep.sweep_id}"]
    try:
        if grid_keys:
            panels = compare.compare_by(sweep.tracker, names, experiment, grid_keys[0], where)
            return compare.panels_figure(panels)
        return compare.figure(compare.compare(sweep.tracker, names, experiment, where))
    except (TrackingError, ConfigError, AttributeError, ValueError) as exc:
        console.print(f"[yellow]note:[/] the sweep's figure was not drawn ({exc})", highlight=False)
        return None


def report(sweep: Sweep, base: Config, settings: SweepConfig, results_dir: Path | None,
           table_format: str = "table", draw: bool = True) -> None:
    """The closing table, the sweep run's files, the results folder and where to look. ``draw``: False leaves
    the figure and the replicate groups' files to ``sddkit compare``."""
    grid_keys = list(settings.grid)
    rows = landmark_rows(sweep)
    columns = landmark_columns(grid_keys)
    files = {"landmarks.csv": results.render_table(rows, columns, "csv").encode(),
             "landmarks.json": landmarks_json(rows)}
    figure = sweep_figure(sweep, grid_keys, base.tracking.experiment) if draw else None
    if figure is not None:
        files["sweep.png"] = figure
    close_sweep_run(sweep, files)
    if draw:
        replicates.log_groups(sweep)
    if results_dir is not None:
        results.write_folder(results_dir, files)
    title = f"sweep {sweep.sweep_id}: landmarks (test accuracy %), averaged over seeds"
    results.print_table(results.render_table(rows, columns, table_format, title, landmark_formats()),
                        Console() if table_format == "table" else Console())
    names = list(dict.fromkeys(c.cfg.name for c in sweep.cells))
    by = f" --by {grid_keys[0]}" if grid_keys else ""
    where = (f"figure:  runs:/{sweep.run_id}/sweep.png" + (f" and {results_dir / 'sweep.png'}" if results_dir else "")
             if figure is not None else "figure:  not drawn " + ("(see the note above)" if draw else "(sddkit compare draws it)"))
    lines = runner.where_lines(sweep.tracker, base, f"sweep run sweep·{sweep.sweep_id[:8]} ({sweep.run_id})",
                               names[0])
    lines[-1] = (f"  compare: sddkit compare --runs {' '.join(names)}{by} --where sddkit.sweep={sweep.sweep_id}"
                 f" --output DIR")
    runner.print_lines([*lines, f"  {where}"], to_stderr=table_format != "table")


def landmarks_json(rows: list[dict]) -> bytes:
    """DVC metrics: {"<trajectory>·<key>=<value>…": {landmark: mean}} (strict JSON: null, never NaN)."""
    out = {}
    for row in rows:
        name = row["trajectory"] + "".join(f"·{k}={row[k]}" for k in row if "." in k)
        out[name] = {k: (None if row[k] is None or row[k] != row[k] else round(row[k], 4)) for k in LANDMARK_KEYS}
        out[name]["n"] = row["n"]
    return (json.dumps(out, indent=1) + "\n").encode()


# ---------------------------------------------------------------- replicates: mean ± std over seeds

def run_replicates(cfg: Config, root: Path, seeds: list[int], jobs: int = 1, force: bool = False,
                   results_dir: Path | None = None, table_format: str = "table") -> Sweep:
    """``sddkit run --seeds``: one grid point and mode over ``seeds``, then the mean ± std table and curve."""
    if len(set(seeds)) != len(seeds):
        raise SweepFailed(f"--seeds {' '.join(map(str, seeds))}: each seed once, please")
    settings = SweepConfig(seeds=list(seeds), jobs=jobs, executor="local")
    sweep = run_sweep(cfg, settings, root, force, results_dir, by_seed=True)
    cells = [c for c in sweep.cells if not c.added]
    runs_rows = [sweep.outcomes[c.key].rows for c in cells]
    files = replicates.group_files(cfg, runs_rows, seeds)
    replicates.log_groups(sweep)
    close_sweep_run(sweep, {})
    if results_dir is not None:
        results.write_folder(results_dir, files)
    replicates.print_table(results.mean_rows(runs_rows), seeds, cfg, table_format)
    where = results_dir / "curve_mean_std.png" if results_dir else f"runs:/{sweep.outcomes[cells[0].key].run_id}/{replicates.ARTIFACT_DIR}/"
    console.print(f"mean ± std curve: {where} (also under {replicates.ARTIFACT_DIR}/ in each replicate's run)", highlight=False)
    runs = [sweep.outcomes[c.key].run_id for c in cells]
    names = ", ".join(sweep.tracker.run(r).info.run_name for r in runs)
    runner.print_lines(runner.where_lines(sweep.tracker, cfg, f"runs {names} ({', '.join(runs)})", cfg.name),
                       to_stderr=table_format != "table")
    return sweep


# ---------------------------------------------------------------- the view

def make_view(cells: list[Cell], stored: dict):
    view_class = sweep_view.LiveView if console.is_terminal else sweep_view.LineView
    return view_class(cells, stored, console)

"""The ``sddkit`` command. Only click, rich and the config are imported at start-up; torch, timm and mlflow
are imported inside the commands, so ``sddkit --help`` stays instant."""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click
from rich.console import Console

from sddkit import command_settings, config as config_mod
from sddkit.cli_options import (FiniteRange, config_errors, config_options, console, experiment_option, fail,
                                format_option, grid_options, one_line, optional_path, params_file, params_option,
                                resolve_config, spreading)
from sddkit.paths import project_root

out = Console()


@contextlib.contextmanager
def training(then: str = ""):
    """What run, sweep and reproduce share: kill, a closed terminal or the end of `dvc` stops the work as Ctrl-C
    does (runs marked KILLED, leases released), and an interrupt says how to continue."""
    import signal
    from sddkit import executors, lifeline, runner, sweep
    try:
        lifeline.stop_like_ctrl_c(signal.SIGTERM, signal.SIGHUP)
        lifeline.follow_dvc()
        with config_errors(), one_line(*runner.USER_ERRORS, sweep.SweepFailed, executors.ExecutorError):
            yield  # a config error found late: while building the model (e.g. prune.exclude)
    except KeyboardInterrupt:
        fail(f"interrupted: rerun the same command to continue{then}", code=130)


def store(params_path: str | None = None, has_params: bool = False) -> tuple[Path, config_mod.Config]:
    """The project root and config of a command that reads or serves the store; exit 1 outside a project
    (else MLflow would create an empty mlflow.db right here)."""
    root = project_root()
    cfg = resolve_config(None, (), params_path, root)
    from sddkit.paths import missing_project
    missing = missing_project(cfg.tracking.uri)
    if missing:
        fail(f"{missing}; cd into the project, or name the store (MLFLOW_TRACKING_URI"
             + (", or tracking.uri in a --params file)" if has_params else ")"))
    return root, cfg


def tracker(root: Path, cfg: config_mod.Config):
    from sddkit.paths import tracking_uri
    from sddkit.tracking import Tracker
    return Tracker(tracking_uri(cfg.tracking.uri, root), root)


def table(rows: list[dict], columns: dict, table_format: str, title: str, formats: dict | None = None) -> None:
    from sddkit import results  # (rich only: results imports torch where it needs it)
    results.print_table(results.render_table(rows, columns, table_format, title, formats), out)


class Commands(click.Group):
    """A failing store (a tracking server that does not answer or asks for credentials, a full disk), wherever
    a command meets it, ends that command in one line (``failures.explain``)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Exception as exc:
            from sddkit import failures
            line = failures.explain(exc)
            if line is None:
                raise
            fail(line)


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sddkit")
def main() -> None:
    """sddkit: reproduce and compare sparse double descent trajectories."""


@main.command(cls=spreading("--seeds"))
@config_options()
@click.option("--force", is_flag=True, help="Start a new trajectory even if this config already ran.")
@click.option("--results", "results_dir", default=None, type=click.Path(file_okay=False),
              help="Also write summary.json, trajectory.csv and curve.png into this folder (for DVC).")
@click.option("--run-file", "run_file", default=None, type=click.Path(dir_okay=False),
              help="Write only run.json, naming the run, at this path (DVC's trajectory stages).")
@click.option("--seeds", multiple=True, type=click.IntRange(min=0), metavar="S [S ...]",
              help="One trajectory per seed (replaces the config's seed), grouped by the tag sddkit.group; "
                   "then a mean ± std table and curve. Pin the noise draw with --set noise.seed=K.")
@click.option("--jobs", default=1, type=click.IntRange(min=1), show_default=True,
              help="With --seeds: replicates run at a time, each in its own process (one torch thread).")
@click.option("--prepared", "prepared_dir", default=None, type=click.Path(file_okay=False),
              help="Folder written by `sddkit prepare`: train on exactly its files (checked, md5 recorded).")
@click.option("--wait", is_flag=True, help="If another process trains this trajectory (or a reinit's lottery "
                                           "twin), wait for it instead of stopping.")
@click.option("--redo-from", "redo_from", default=None, type=click.IntRange(min=0), metavar="ROUND",
              help="Repair: retrain from round ROUND on, keeping rounds 0…ROUND−1 (the replaced round runs stay, "
                   "KILLED, tagged sddkit.replaced).")
@format_option("the closing table of the rounds")
def run(preset, sets, params_path, force, results_dir, run_file, seeds, jobs, prepared_dir, wait, redo_from,
        table_format) -> None:
    """Train, prune and retrain one trajectory, logging every round to MLflow.

    A trajectory is its config and code: a rerun continues it from its last finished round, a finished one
    is reported (--force: a new one), changed code starts a new run. A second process training the same
    trajectory stops (or, with --wait, waits)."""
    root = project_root()
    cfg = resolve_config(preset, sets, params_path, root)
    if jobs > 1 and not seeds:
        fail("--jobs runs replicates in parallel: give the seeds too, e.g. --seeds 0 1 2 --jobs 3", code=2)
    if prepared_dir and seeds:
        fail("--prepared pins the data of one seed; run one trajectory per seed (dvc exp run -S seed=N)", code=2)
    if redo_from is not None and (seeds or force):
        fail("--redo-from repairs one stored trajectory: use it without --seeds and --force", code=2)
    if run_file and seeds:
        fail("--run-file names one trajectory's run: use --results with --seeds", code=2)
    from sddkit import runner, sweep
    with training(" the unfinished replicates" if seeds else ""):
        if seeds:
            sweep.run_replicates(cfg, root, list(seeds), jobs, force, optional_path(results_dir), table_format)
        else:
            runner.run_trajectory(cfg, root, force=force, results_dir=optional_path(results_dir),
                                  prepared=optional_path(prepared_dir), wait=wait, redo_from=redo_from,
                                  table_format=table_format, run_file=optional_path(run_file))


@main.command(cls=spreading("--seeds", "--modes"))
@config_options("Override one config key of every cell (or a sweep.* key); repeatable.",
                "Config file (default: params.yaml at the project root); its `sweep:` section is the grid, "
                "which the options below override.")
@click.option("--grid", "grid", multiple=True, metavar="KEY=V1,V2",
              help="A config key and its values (sweep.grid); repeatable: every combination is a grid point.")
@click.option("--modes", multiple=True, type=click.Choice(config_mod.RETRAIN_MODES), metavar="MODE [MODE ...]",
              help="Retrain modes at every grid point (sweep.modes); a reinit cell follows its lottery twin round "
                   "by round.")
@grid_options("Seeds of every grid point and mode (sweep.seeds).")
@click.option("--address", default=None, help="ray: the cluster to join, auto or HOST:PORT (sweep.address; "
                                              "default: start Ray here).")
@click.option("--gpus-per-trajectory", "gpus", type=click.FloatRange(min=0), default=None,
              help="GPUs a cell holds; a fraction shares one (sweep.gpus_per_trajectory).")
@click.option("--cpus-per-trajectory", "cpus", type=click.FloatRange(min=0, min_open=True), default=None,
              help="CPU cores a cell holds, and its torch threads (sweep.cpus_per_trajectory).")
@click.option("--results", "results_dir", default=None, type=click.Path(file_okay=False),
              help="Also write landmarks.csv, landmarks.json and sweep.png into this folder (for DVC).")
@click.option("--yes", is_flag=True, help="Run a grid of more than sweep.max_cells cells (refused without it).")
@click.option("--prepared", "prepared_dir", default=None, type=click.Path(file_okay=False),
              help="Folder written by `sddkit prepare`: every cell trains on exactly its files.")
@click.option("--prepare", "prepare_dir", default=None, type=click.Path(file_okay=False),
              help="Write the data into this folder first (as `sddkit prepare --out`), then train on it (DVC).")
@click.option("--run-files", "run_files", default=None, type=click.Path(file_okay=False),
              help="Write only DIR/<name>/run.json per cell, naming its run (DVC's trajectories stage).")
@format_option("the closing table of landmarks")
def sweep(preset, sets, params_path, grid, modes, seeds, executor, jobs, address, gpus, cpus, results_dir, yes,
          prepared_dir, prepare_dir, run_files, table_format) -> None:
    """Run a grid of trajectories (grid point × mode × seed, each as `sddkit run`) as one job; a rerun
    continues it. Ends with the landmarks averaged over seeds, and the sweep's figure.

    Example: sddkit sweep --preset quick --grid noise.ratio=0.2,0.4 --modes lottery reinit --seeds 0 1 2
    """
    root = project_root()
    prefix = f"{config_mod.SWEEP_KEY}."  # --set sweep.executor=ray: a sweep key, by its params.yaml name
    cfg = resolve_config(preset, tuple(x for x in sets if not x.startswith(prefix)), params_path, root)
    with config_errors():
        chosen = dict(config_mod.parse_assignment(x[len(prefix):]) for x in sets if x.startswith(prefix))
        given = {"modes": list(modes), "seeds": list(seeds), "executor": executor, "jobs": jobs,
                 "address": address, "gpus_per_trajectory": gpus, "cpus_per_trajectory": cpus}
        chosen.update({k: v for k, v in given.items() if v not in (None, [])})  # an option given beats --set
        if grid:
            chosen["grid"] = command_settings.parse_grid_options(grid)
        settings = command_settings.read_sweep_settings(params_file(params_path, root), chosen)
    check_sweep_size(settings, yes)
    if prepared_dir and prepare_dir:
        fail("--prepared trains on a folder made before, --prepare makes it: give one of them", code=2)
    from sddkit import sweep as sweeps
    with training(" the sweep (finished cells are kept)"):
        done = sweeps.run_sweep(cfg, settings, root, results_dir=optional_path(results_dir),
                                prepared=optional_path(prepared_dir), run_files=optional_path(run_files),
                                prepare_into=optional_path(prepare_dir))
        sweeps.report(done, cfg, settings, optional_path(results_dir), table_format, draw=run_files is None)


def check_sweep_size(settings: config_mod.SweepConfig, yes: bool) -> None:
    """Count the cells before laying them out (each costs a config and a hash): a grid past sweep.max_cells
    is refused at once unless --yes; with it, the count is said before the wait."""
    cells, points = command_settings.count_cells(settings)
    if cells <= settings.max_cells:
        return
    modes, seeds = len(settings.modes) or 1, len(settings.seeds) or 1
    shape = f"{points:,} grid points × {modes} mode{'s' * (modes > 1)} × {seeds} seed{'s' * (seeds > 1)}"
    if not yes:
        fail(f"sweep: {cells:,} cells ({shape}) exceed sweep.max_cells = {settings.max_cells:,}; check the grid, "
             f"or pass --yes (or raise sweep.max_cells) to run them all", code=2)
    click.echo(f"sweep: {cells:,} cells ({shape}); laying them out...", err=True)


@main.command("reproduce", cls=spreading("--seeds"))
@click.argument("names", nargs=-1, metavar="[STUDY ...]")
@click.option("--list", "show_list", is_flag=True, help="List the studies, with the paper's figure each mirrors.")
@config_options("Override one config key of every cell (a study's own curve values win); repeatable.",
                "Config file (default: params.yaml at the project root); its `sweep:` section may set the "
                "seeds, executor and jobs (the studies are the grid).")
@grid_options("Seeds of every curve (default: sweep.seeds, else 0 1 2); the checks judge their mean.")
@click.option("--output", "output_dir", default="reproduction", show_default=True,
              type=click.Path(file_okay=False), help="Folder for report.html, report.md, figures/ and verdicts.json.")
@format_option("the table of statements")
def reproduce_command(names, show_list, preset, sets, params_path, seeds, executor, jobs, output_dir,
                      table_format) -> None:
    """Reproduce the paper: run the studies' grids (STUDY: a name `--list` shows, or a study file; default all)
    as one sweep, judge each statement of the paper and write the report. Stored cells are reused. The exit
    status is non-zero only when a cell failed to run (a statement that does not hold is a finding).

    Example (tiny): sddkit reproduce noise reinit --set prune.rounds=3 --set train.epochs=3 --set train.milestones=[2]
    """
    from sddkit import reproduce, studies
    if show_list:
        return reproduce.print_studies(table_format)
    root = project_root()
    with one_line(config_mod.ConfigError, code=2):
        chosen = [studies.load(n) for n in dict.fromkeys(names or studies.names())]
    cfg = resolve_config(preset, sets, params_path, root)
    for key in dict.fromkeys(x.partition("=")[0] for x in sets):
        setting = [s.name for s in chosen if any(key in values for values in s.curves.values())]
        if setting:  # the study's curves are what it compares: they win over --set
            console.print(f"[yellow]note:[/] --set {key}: the curves of {', '.join(setting)} set it themselves; "
                          f"there it keeps the study's values", highlight=False)
    path = params_file(params_path, root)
    with config_errors():
        given = {"seeds": list(seeds), "executor": executor, "jobs": jobs}
        settings = command_settings.read_sweep_settings(path, {k: v for k, v in given.items() if v not in (None, [])})
        if settings.grid or settings.modes:
            raise config_mod.ConfigError(f"{config_mod.SWEEP_KEY}.grid and .modes: the studies are the grid of a "
                                         f"reproduction; leave them out of {path.name} (or use --params)")
    import shlex
    words = [*names, *(["--preset", preset] if preset else []), *(w for x in sets for w in ("--set", x)),
             *(["--params", params_path] if params_path else []), *(["--seeds", *map(str, seeds)] if seeds else []),
             *(["--executor", executor] if executor else []), *(["--jobs", str(jobs)] if jobs is not None else []),
             "--output", output_dir]
    with training(" (finished cells are kept)"):
        report = reproduce.reproduce(cfg, chosen, settings, root, Path(output_dir),
                                     " ".join(["sddkit reproduce", *map(shlex.quote, words)]))
    reproduce.print_summary(report, Path(output_dir), table_format)


@main.command(cls=spreading("--rounds"))
@click.argument("selector", metavar="RUN")
@click.option("--rounds", multiple=True, type=click.IntRange(min=0), metavar="R [R ...]",
              help="Rounds to analyse (default: the landmarks dense, minimum, peak and last).")
@click.option("--redense-epochs", type=click.IntRange(min=1), default=None,
              help="Re-dense epochs (default: the round's epoch count).")
@click.option("--redense-lr", type=FiniteRange(min=0, min_open=True), default=None,
              help="Re-dense constant lr (default: the lr of the round's last step).")
@click.option("--interpolation-step", type=FiniteRange(0, 1, min_open=True), default=0.05, show_default=True,
              help="Step of α between the sparse (α=0) and the re-dense (α=1) solution; the paper used 0.01.")
@click.option("--landscape-points", type=click.IntRange(min=2), default=41, show_default=True,
              help="Points of the 1-D loss landscape over t in [-1, 1] (0 and ±radius are added).")
@click.option("--sharpness-radius", type=FiniteRange(0, 1, min_open=True), default=0.1, show_default=True,
              help="Sharpness = the largest rise of the train loss within |t| ≤ radius.")
@experiment_option
@click.option("--force", is_flag=True, help="Redo analyses already stored with the same settings.")
@format_option("the table of analysed rounds")
def analyze(selector, rounds, redense_epochs, redense_lr, interpolation_step, landscape_points,
            sharpness_radius, experiment, force, table_format) -> None:
    """Re-dense, interpolation and 1-D loss landscape for rounds of stored trajectories (RUN: run name or
    ID); results are logged as runs nested under each round run."""
    root, cfg = store()
    from sddkit import analyze as analyses
    from sddkit.runner import USER_ERRORS
    settings = analyses.Settings(tuple(rounds), redense_epochs, redense_lr, interpolation_step, landscape_points,
                                 sharpness_radius, force)
    with one_line(*USER_ERRORS, config_mod.ConfigError):
        rows = analyses.analyze(tracker(root, cfg), root, selector, experiment or cfg.tracking.experiment, settings)
    columns = {"name": "trajectory", "trajectory": "run", "round": "round", "sparsity": "sparsity %",
               "test_acc": "test %", "redense_test_acc": "re-dense test %",
               "interpolation_max_train_loss": "max train loss along α", "sharpness": "sharpness"}
    percent, accuracy = (lambda v: f"{100 * v:.2f}"), (lambda v: f"{v:.1f}")  # noqa: E731
    formats = {"trajectory": lambda v: v[:8], "sparsity": percent, "test_acc": accuracy, "redense_test_acc": accuracy,
               "interpolation_max_train_loss": lambda v: f"{v:.3f}"}
    table(rows, columns, table_format, f"analysis of {selector}", formats)
    console.print("plots and curves: the redense / interpolation / landscape runs nested under each round run")


@main.command("prepare")
@click.option("--out", "out_dir", default="data/prepared", show_default=True, type=click.Path(file_okay=False),
              help="Folder for splits.npz, noisy_labels.npy and prepared.json.")
@config_options()
def prepare_command(out_dir, preset, sets, params_path) -> None:
    """Write the dataset splits and the noisy labels of the config as files DVC pins by md5."""
    root = project_root()
    cfg = resolve_config(preset, sets, params_path, root)
    from sddkit import prepare
    from sddkit.sources import DatasetError
    with one_line(DatasetError):
        files = prepare.prepare(cfg, root, Path(out_dir))
    for f in files:
        out.print(f"{f.md5}  {f.path}", highlight=False)


COMPARE_TABLES, COMPARE_FIGURES = ("table", "csv", "json", "md"), ("png", "pdf", "svg")  # results, plots


@main.command("compare", cls=spreading("--runs", "--where", "--label", "--format"))
@click.option("--runs", "selectors", multiple=True, required=True, metavar="RUN [RUN ...]",
              help="Trajectories to compare: run name, tag or param KEY=VALUE, run ID, or a --results folder.")
@click.option("--where", multiple=True, metavar="KEY=VALUE [...]",
              help="Keep only runs whose tag or param KEY is VALUE (e.g. noise.ratio=0.4).")
@click.option("--label", "labels", multiple=True, metavar="TEXT [TEXT ...]",
              help="Legend label of each curve, one per --runs selector (default: its name and the params that "
                   "differ between the curves).")
@click.option("--format", "formats", multiple=True, type=click.Choice(COMPARE_TABLES + COMPARE_FIGURES),
              metavar="FORMAT [FORMAT ...]",
              help="How the table prints: table (default, full width), csv, json or md; and the figure file(s) "
                   "--output writes: png (default), pdf, svg. E.g. --format md pdf.")
@click.option("--paper", is_flag=True, help="Overlay the paper's read-offs for the runs' preset and noise.ratio, "
                                            "and print ours − paper at the landmarks.")
@click.option("--by", default=None, metavar="KEY",
              help="One panel per value of this param or tag (e.g. noise.ratio), one curve per --runs selector in "
                   "each; the table and compare.csv split by it.")
@experiment_option
@click.option("--output", "output_dir", default=None, type=click.Path(file_okay=False),
              help="Write compare.csv and the figure (compare.png, or the --format ones) into this folder.")
@click.option("--params", "params_path", default=None,
              help="Params file for tracking.* and sddkit_stages.compare (default: the project root's params.yaml).")
@click.option("--trajectory-files", is_flag=True,
              help="Also write each --runs results folder's summary.json, trajectory.csv and curve.png from its run "
                   "(DVC's compare stage).")
def compare_command(selectors, where, labels, formats, paper, by, experiment, output_dir, params_path,
                    trajectory_files) -> None:
    """Compare trajectories round by round: replicates (same name and config, other seeds) as mean ± std,
    each curve's phases, the difference of the first two; a table, and a CSV and figure with --output.
    With --by KEY, all of it once per value of KEY (the figure's panels side by side)."""
    tables = list(dict.fromkeys(f for f in formats if f in COMPARE_TABLES))
    figures = tuple(dict.fromkeys(f for f in formats if f in COMPARE_FIGURES))
    if len(tables) > 1:
        fail(f"--format: one table format at a time (got {', '.join(tables)})", code=2)
    if figures and output_dir is None:
        fail(f"--format {' '.join(figures)}: the figure is a file in --output DIR; give --output", code=2)
    if labels and len(labels) != len(selectors):
        fail(f"--label: give one per --runs selector ({len(selectors)} selectors, {len(labels)} labels)", code=2)
    if by is not None and paper:
        fail("--paper with --by: the read-offs are overlaid on the one-panel figure; compare one value at a time "
             f"(--where {by}=VALUE --paper)", code=2)
    root, cfg = store(params_path, has_params=True)
    with config_errors():
        threshold = command_settings.read_compare_settings(params_file(params_path, root)).interpolation_threshold
    from sddkit import compare
    from sddkit.tracking import TrackingError
    experiment, labels = experiment or cfg.tracking.experiment, list(labels) or None
    with one_line(TrackingError, config_mod.ConfigError):
        found_in = tracker(root, cfg)
        if trajectory_files:
            compare.write_trajectory_files(found_in, list(selectors))
        if by is None:
            found = compare.compare(found_in, list(selectors), experiment, list(where), threshold, labels)
        else:
            found = compare.compare_by(found_in, list(selectors), experiment, by, list(where), threshold, labels)
    table_format, figure_formats = tables[0] if tables else "table", figures or ("png",)
    if by is None:
        compare.report(found, optional_path(output_dir), table_format, figure_formats, paper)
    else:
        compare.report_panels(found, optional_path(output_dir), table_format, figure_formats)


@main.command("ui")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port (default: a free one).")
@params_option
@click.option("--experiment", default=None, help="MLflow experiment to link to (default: tracking.experiment).")
@click.option("--open", "open_browser", is_flag=True, help="Open the link in a web browser too.")
def ui_command(port, params_path, experiment, open_browser) -> None:
    """Serve the MLflow UI of the project's store on 127.0.0.1 (one worker); Ctrl-C stops it. Prints a link
    to the experiment's trajectories in the UI's training-runs view."""
    root, cfg = store(params_path, has_params=True)
    from sddkit import ui
    from sddkit.paths import tracking_uri
    with one_line(ui.ServeError):
        sys.exit(ui.serve(tracking_uri(cfg.tracking.uri, root), root, port,
                          experiment=experiment or cfg.tracking.experiment, open_browser=open_browser))


@main.command("server")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on; anything but loopback needs --auth (or the flag below).")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True, help="Port.")
@params_option
@click.option("--experiment", default=None, help="MLflow experiment to create before serving "
                                                 "(default: tracking.experiment).")
@click.option("--auth", is_flag=True, help="MLflow's basic auth: user admin, the password from "
                                           "SDDKIT_SERVER_PASSWORD or generated (and printed once).")
@click.option("--insecure-no-auth-on-open-network", "insecure", is_flag=True,
              help="Serve a non-loopback --host without authentication: anyone who reaches it can write.")
def server_command(host, port, params_path, experiment, auth, insecure) -> None:
    """Serve the project's store to workers on other machines: an MLflow tracking server with proxied
    artifacts, until Ctrl-C. Prints the MLFLOW_TRACKING_URI (and credentials) that workers need."""
    root, cfg = store(params_path, has_params=True)
    from sddkit import server
    from sddkit.paths import store_uri
    with one_line(server.ServeError):
        sys.exit(server.serve(store_uri(cfg.tracking.uri, root), root, host, port,
                              experiment or cfg.tracking.experiment, auth=auth, insecure=insecure))


@main.command()
@format_option("the list")
def presets(table_format) -> None:
    """List the presets with a one-line description and, for the paper's, where each still departs from the
    paper's code."""
    rows = [{"name": name, "description": config_mod.preset_description(name),
             "deviations": config_mod.preset_deviations(name)} for name in config_mod.preset_names()]
    if table_format == "csv":  # one cell of text; json keeps the list
        rows = [{**row, "deviations": " | ".join(row["deviations"])} for row in rows]
    columns = {"name": "name", "description": "description", "deviations": "deviations from the paper's code"}
    table(rows, columns, table_format, "presets", {"deviations": lambda lines: "\n".join(f"- {x}" for x in lines)})


@main.command()
@format_option("the list")
def keys(table_format) -> None:
    """List every config key (the names used by params.yaml, --set and MLflow params): its type, default (with
    no params.yaml: the quick preset's value), allowed values and meaning."""
    table(command_settings.describe_keys(), command_settings.KEY_COLUMNS, table_format, "config keys")


@main.command("adopt")
@click.argument("selector", metavar="RUN")
@click.option("--no-verify", is_flag=True, help="Adopt without replaying the run's first epoch (tagged unverified).")
@experiment_option
def adopt_command(selector, no_verify, experiment) -> None:
    """Keep a finished trajectory made by other code (run ID or name) as this code's run of its config.

    By default it replays the run's round 0 for one epoch with this code and adopts the run only if every
    per-epoch metric it logged for that epoch is equal; its tags then record what it was, verified or not, and
    `sddkit run` of its config reports it instead of retraining."""
    root, cfg = store()
    from sddkit import adopt
    from sddkit.tracking import TrackingError
    with one_line(TrackingError, config_mod.ConfigError):
        found_in = tracker(root, cfg)
        run = adopt.resolve(found_in, selector, experiment or cfg.tracking.experiment)
        done = adopt.adopt(found_in, run, root, verify=not no_verify)
    check = (f"replayed round 0 epoch 0 in {done.replay_seconds:.1f} s: {len(done.compared)} metrics equal"
             if done.verified else "not verified (--no-verify)")
    console.print(f"adopted run {done.run_id} (was config {done.former['sddkit.config_hash']}, code "
                  f"{done.former['sddkit.code_hash']}); {check}", highlight=False, soft_wrap=True)


@main.command("fingerprint")
def fingerprint_command() -> None:
    """The code fingerprint of a trajectory's identity, and the modules it covers (the engine's import closure;
    DVC's trajectory stages depend on exactly these)."""
    from sddkit import fingerprint
    click.echo(f"code {fingerprint.code_hash()}")
    for name in fingerprint.engine_files():
        click.echo(f"sddkit/{name}")


@main.command("ls")
@experiment_option
@format_option("the list")
def ls_command(experiment, table_format) -> None:
    """List the trajectories in the store, newest first: name, the params that differ between them, seed,
    status, rounds done (dense round included) of the total, and a finished one's landmark test accuracies."""
    root, cfg = store()
    from sddkit import listing
    from sddkit.paths import sqlite_path, tracking_uri
    experiment = experiment or cfg.tracking.experiment
    db = sqlite_path(tracking_uri(cfg.tracking.uri, root))
    # A store not created yet holds no trajectories (and reading must not create it); a local one is read by SQL.
    found = ([], []) if db is not None and not db.exists() else listing.from_sqlite(db, experiment) if db else None
    if found is None:  # a tracking server, or a schema SQL cannot vouch for
        from sddkit import api
        from sddkit.tracking import TrackingError
        with one_line(TrackingError):
            found = api.list_trajectories(experiment=experiment)
    rows, differ = found
    if not rows and table_format == "table":
        console.print(f"no trajectories in experiment {experiment!r} yet: `sddkit run` (or `dvc repro`) makes them")
        return
    columns = {"name": "name", "run_id": "run", **{k: k for k in differ}, "seed": "seed", "status": "status",
               "code": "code", "rounds_done": "rounds done", "rounds_total": "of",
               **{f"{n}_test_acc": f"{n} test %" for n in listing.LANDMARKS}}
    formats = {"run_id": lambda v: v[:8], **{f"{n}_test_acc": (lambda v: f"{v:.1f}") for n in listing.LANDMARKS}}
    table(rows, columns, table_format, f"trajectories in experiment {experiment}", formats)


if __name__ == "__main__":
    main()

"""What ``sddkit run`` does: open (or find) the trajectory's MLflow run, drive the engine with rich
progress (in a terminal) or timestamped lines (a file, a pipe, CI), then write the closing summary, table,
files and where to find them."""
from __future__ import annotations

import contextlib
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sddkit import analysis, failures, prepare, results, selection, trajectory
from sddkit.checkpoint import bytes_needed
from sddkit.results import RUN_FILE, phase_tag
from sddkit.config import Config, load_config
from sddkit.files import write_atomic
from sddkit.sources import DatasetError
from sddkit.paths import tracking_uri
from sddkit.fingerprint import code_hash
from sddkit.lease import Lease, LeaseHeld, LeaseLost, identity as lease_identity
from sddkit.tracking import STORE_ERRORS, Tracker, TrackingError, TrajectoryRun

USER_ERRORS = (DatasetError, TrackingError, LeaseHeld, LeaseLost, trajectory.InitMismatch)
console = Console(stderr=True)


class RichReporter(trajectory.Reporter):
    """Two bars: rounds of the trajectory, epochs of the current round, with live accuracies."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.rounds = progress.add_task("rounds", total=None, info="")
        self.epochs = progress.add_task("epochs", total=None, info="")

    def round_started(self, round_index, rounds, sparsity, epochs):
        self.progress.update(self.rounds, total=rounds + 1, completed=round_index,
                             description=f"round {round_index}/{rounds}", info=f"sparsity {100 * sparsity:.2f}%")
        self.progress.reset(self.epochs, total=epochs, description="epoch", info="")

    def waiting(self, round_index, text):
        self.progress.update(self.rounds, description=f"round {round_index}", info=text)

    def epoch_done(self, round_index, row):
        test = f"  test {row['test_acc']:.1f}%" if "test_acc" in row else ""  # not every epoch (train.eval_every)
        self.progress.update(self.epochs, advance=1, info=f"train {row['train_acc_running']:.1f}%{test}")

    def round_done(self, round_index, metrics):
        self.progress.update(self.rounds, completed=round_index + 1,
                             info=f"test {metrics['test_acc']:.1f}%  train(noisy) {metrics['train_acc_noisy']:.1f}%")


EPOCH_LINE_EVERY = 10  # LineReporter: one line every this many epochs of a round, and after its last


class LineReporter(trajectory.Reporter):
    """Timestamped lines for a log file, a pipe or CI: one a round and one every ``EPOCH_LINE_EVERY`` epochs,
    each started by ``who`` (the trajectory's name, or ``seed 3`` for replicates side by side)."""

    def __init__(self, who: str, every: int = EPOCH_LINE_EVERY):
        self.who, self.every, self.started = who, every, time.perf_counter()
        self.rounds = self.epochs = self.epochs_done = 0

    def say(self, text: str) -> None:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {self.who}: {text}", file=sys.stderr, flush=True)

    def round_started(self, round_index, rounds, sparsity, epochs):
        self.rounds, self.epochs, self.epochs_done, self.started = rounds, epochs, 0, time.perf_counter()

    def waiting(self, round_index, text):
        self.say(f"round {round_index}: {text}")

    def epoch_done(self, round_index, row):
        self.epochs_done += 1
        if self.epochs_done % self.every and self.epochs_done != self.epochs:
            return
        test = f"  test {row['test_acc']:5.1f}%" if "test_acc" in row else ""  # not every epoch (train.eval_every)
        self.say(f"round {round_index}/{self.rounds}  epoch {self.epochs_done}/{self.epochs}  "
                 f"train {row['train_acc_running']:5.1f}%{test}  {time.perf_counter() - self.started:7.1f}s")

    def round_done(self, round_index, metrics):
        self.say(f"round {round_index}/{self.rounds}  sparsity {100 * metrics['sparsity']:6.2f}%  "
                 f"test {metrics['test_acc']:5.1f}%  train(noisy) {metrics['train_acc_noisy']:5.1f}%  "
                 f"{metrics.get('round_seconds', time.perf_counter() - self.started):7.1f}s")


def make_progress() -> Progress:
    return Progress(TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console, transient=False)


def run_trajectory(cfg: Config, root: Path, force: bool = False, results_dir: Path | None = None,
                   quiet: bool = False, reporter: trajectory.Reporter | None = None, prepared: Path | None = None,
                   wait: bool = False, redo_from: int | None = None,
                   table_format: str = "table", run_file: Path | None = None) -> tuple[TrajectoryRun, list[dict]]:
    """Train (or continue, or report) the trajectory of ``cfg`` run by this code. ``reporter`` replaces the bars;
    ``quiet``: no bars, no closing table; ``prepared``: a ``sddkit prepare`` folder to train on; ``wait``: wait
    for another owner instead of stopping; ``redo_from``: retrain from that round on; ``run_file``: run.json."""
    tracker = Tracker(tracking_uri(cfg.tracking.uri, root), root)
    code = code_hash()
    existing = None if force else tracker.find_trajectory(cfg, code)
    if redo_from is not None and existing is None:
        raise TrackingError(f"--redo-from {redo_from}: there is no run of this config ({cfg.identity_hash()}) and "
                            f"code ({code}) to repair; drop --redo-from to start it")
    if existing is not None and existing.info.status == "FINISHED" and redo_from is None:
        store, files = report_finished(tracker, cfg, code, existing), None
    else:
        store, files = train_under_lease(tracker, cfg, root, code, force, quiet, reporter, prepared, wait,
                                         redo_from)
    rows = store.completed
    ph = analysis.phases(rows, cfg.analysis.interpolation_threshold, cfg.analysis.light_tolerance)
    if results_dir is not None:
        write_results(results_dir, store, cfg, rows, files)
    if run_file is not None:
        run_file.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(run_file, run_pointer(store, cfg))
    if not quiet:
        print_table(rows, ph, table_format)
        print_where(tracker, cfg, store, to_stderr=table_format != "table")
    return store, rows


def report_finished(tracker: Tracker, cfg: Config, code: str, run) -> TrajectoryRun:
    # A run finished by code that was killed between creating it and logging its params lacks them; analyze
    # and reinit read the config back from them. Logging only what is missing changes nothing else.
    tracker.complete_identity(run, cfg, code)
    store = TrajectoryRun(tracker, run.info.run_id)
    announce(tracker, cfg, code, store)
    console.print("already finished with this config and code: reporting the stored rounds (use --force for a "
                  "new trajectory)")
    return store


def train_under_lease(tracker: Tracker, cfg: Config, root: Path, code: str, force: bool, quiet: bool,
                      reporter: trajectory.Reporter | None, prepared: Path | None, wait: bool,
                      redo_from: int | None = None) -> tuple[TrajectoryRun, dict[str, bytes] | None]:
    """Load and check everything, take the trajectory's lease, then continue or start it and finish it.
    Returns the run and the closing files it stored (None when another owner had finished it meanwhile)."""
    # Resolve reinit's mask source and load the data before writing anything: bad input leaves no run behind.
    external = tracker_masks(tracker, cfg, code, follow=wait)
    data_files, labelled = prepare.load_pinned(prepared, cfg) if prepared else ((), None)
    inputs = trajectory.load_inputs(cfg, root, labelled)
    tracker.check_writable()  # a read-only or full store fails here, before anything is written
    tracker.check_room(bytes_needed(inputs.model.state_dict(), cfg.prune.rounds + 1, inputs.names, cfg.prune.rate))
    tracker.keep_reserve()
    experiment_id = tracker.experiment_id(cfg.tracking.experiment)
    identity = lease_identity(cfg.identity_hash(), code)
    told: set[str] = set()

    def on_wait(holder) -> None:
        console.print(f"waiting for {holder.describe()}", highlight=False)
        if reporter is not None and holder.token not in told:  # once an owner (a sweep's view shows it)
            told.add(holder.token)
            reporter.waiting_for_owner(holder.describe())
    with Lease(tracker.uri, experiment_id, identity, on_wait).acquire(wait) as lease:
        # Looked up again under the lease: the owner we waited for may have finished it meanwhile.
        existing = None if force else tracker.find_trajectory(cfg, code)
        if existing is not None and existing.info.status == "FINISHED" and redo_from is None:
            return report_finished(tracker, cfg, code, existing), None
        store = tracker.open_trajectory(cfg, existing=existing, force=force, code=code, lease=lease,
                                        redo_from=redo_from)
        room_left = lambda: bytes_needed(inputs.model.state_dict(), cfg.prune.rounds + 1,  # noqa: E731
                                         inputs.names, cfg.prune.rate, first=store.round_under_way)
        with ending(store, cfg.prune.rounds, room_left):
            lease.set_run(store.run_id)
            if store.completed:  # a resume: the parent's files it kept from its start
                store.restore_labels(inputs.noisy)
            if data_files:
                tracker.log_data_inputs(store.run_id, data_files)
            announce(tracker, cfg, code, store)
            if redo_from is not None:
                console.print(f"redoing rounds {redo_from}–{cfg.prune.rounds} (the replaced round runs are kept, "
                              f"KILLED and tagged sddkit.replaced)")
            elif store.completed:
                console.print(f"continuing after round {len(store.completed) - 1}")
            rows = drive(cfg, root, store, external, quiet, reporter, inputs)
            files = finish(store, cfg, rows)
    return store, files


def announce(tracker: Tracker, cfg: Config, code: str, store: TrajectoryRun) -> None:
    console.print(f"trajectory [bold]{cfg.name}[/] (config {cfg.identity_hash()}, code {code}) -> run "
                  f"{store.run_id} in {tracker.uri}", highlight=False, soft_wrap=True)


def finish(store: TrajectoryRun, cfg: Config, rows: list[dict]) -> dict[str, bytes]:
    """The parent's closing files (returned), summary metrics and phase tags; the run becomes FINISHED."""
    ph = analysis.phases(rows, cfg.analysis.interpolation_threshold, cfg.analysis.light_tolerance)
    tag_round_phases(store, ph)
    files = results.trajectory_files(rows, ph, cfg.name)
    store.finish(files, results.parent_summary(rows, ph),
                 {"sddkit.phases": phase_tag(rows, ph), **analysis.phase_tags(ph),
                  "mlflow.note.content": results.landmarks_line(rows, ph)})  # the run's description in the UI
    return files


def write_results(folder: Path, store: TrajectoryRun, cfg: Config, rows: list[dict],
                  files: dict[str, bytes] | None = None) -> None:
    """The small files DVC reads (summary.json, trajectory.csv, curve.png) and run.json naming the run."""
    if files is None:  # else drawn once already: the finish made them
        ph = analysis.phases(rows, cfg.analysis.interpolation_threshold, cfg.analysis.light_tolerance)
        files = results.trajectory_files(rows, ph, cfg.name)
    results.write_folder(folder, {**files, RUN_FILE: run_pointer(store, cfg)})


def run_pointer(store: TrajectoryRun, cfg: Config) -> bytes:
    pointer = {"run_id": store.run_id, "name": cfg.name, "experiment": cfg.tracking.experiment,
               "config_hash": cfg.identity_hash(), "code_hash": store.code_hash}
    return json.dumps(pointer, indent=1).encode()


def drive(cfg: Config, root: Path, store: TrajectoryRun, external, quiet: bool,
          reporter: trajectory.Reporter | None = None, inputs: trajectory.Inputs | None = None) -> list[dict]:
    if quiet or reporter is not None:
        return trajectory.run(cfg, root, store, reporter, external, inputs)
    if not console.is_terminal:  # a file, a pipe, CI: bars would show nothing until the end
        return trajectory.run(cfg, root, store, LineReporter(cfg.name), external, inputs)
    with make_progress() as progress:
        return trajectory.run(cfg, root, store, RichReporter(progress), external, inputs)


@contextlib.contextmanager
def ending(store: TrajectoryRun, rounds: int, room_left: Callable[[], int]):
    """Ctrl-C marks the run KILLED, an error FAILED; a failing store says in one line (``failures``) what the
    rerun does. ``rounds``: the last round; ``room_left``: the bytes the rounds left would still store."""
    try:
        yield
    except LeaseLost:
        raise  # the run is another process's now: leave its status alone
    except KeyboardInterrupt:
        store.stop("KILLED")
        console.print(f"interrupted {finished_rounds(store)}: rerun the same command to continue")
        raise SystemExit(130)
    except Exception as exc:
        failed = store_failed(store, exc, rounds, room_left)
        if failed is None:
            store.stop("FAILED")
            raise
        raise failed from exc
    except BaseException:
        store.stop("FAILED")
        raise


def store_failed(store: TrajectoryRun, exc: Exception, rounds: int,
                 room_left: Callable[[], int]) -> TrackingError | None:
    """The one-line error for a store that failed under a run (None for any other error), the run marked
    FAILED where the store can still take it."""
    full = failures.full_disk(exc) is not None
    line = failures.explain(exc, store.tracker.uri, store.tracker.artifact_home, room_left() if full else None)
    if line is None and not isinstance(exc, STORE_ERRORS):
        return None
    k = store.round_under_way
    what = f"round {k} could not be stored" if k <= rounds else "the trajectory's closing files could not be stored"
    rerun = f"rerun the same command: it continues {finished_rounds(store)}"
    if failures.silent_server(exc) is not None:
        # Nothing reaches the server now: the run stays RUNNING, its lease naming this process, which a
        # rerun takes over once this process has ended (`sddkit ls` shows it interrupted meanwhile).
        return TrackingError(f"{what}: {line}, then {rerun}")
    if full:
        store.tracker.free_reserve()  # room for the FAILED below and the lease's release
    store.stop("FAILED")
    line = line or f"{store_problem(exc)}; fix that (permissions, the store's mount)"
    return TrackingError(f"{what}: {line}, then {rerun} (this run is marked FAILED)")


def store_problem(exc: BaseException) -> str:
    """The gist of a storage error, on one line (an OSError's message and file, MLflow's first line)."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else exc.__class__.__name__


def finished_rounds(store: TrajectoryRun) -> str:
    return f"after round {len(store.completed) - 1}" if store.completed else "before round 0 finished"


def tag_round_phases(store: TrajectoryRun, ph: analysis.Phases) -> None:
    """Each round run gets its phase as the tag ``sddkit.phase`` (the parent's table has a ``phase`` column)."""
    for run in store.tracker.round_runs(store.run_id):
        store.tracker.set_tag(run.info.run_id, "sddkit.phase", ph.label(int(run.data.tags["sddkit.round"])))


def tracker_masks(tracker: Tracker, cfg: Config, code: str, follow: bool = False):
    """reinit's masks: its lottery twin's, round by round; ``follow`` (--wait): a twin still training is
    followed, each round starting once the twin has pruned for it."""
    if cfg.retrain.mode != "reinit":
        return None
    from sddkit.twin import LotteryMasks
    return LotteryMasks(tracker, cfg, code, follow)


def print_table(rows: list[dict], ph: analysis.Phases, table_format: str = "table") -> None:
    keys = ("sparsity", "train_acc_noisy", "train_acc_clean", "memorized", "test_acc")
    results.print_table(results.closing_table(rows, ph, keys, table_format, "trajectory"))
    # csv, json and md: stdout holds the table alone (for a file or a pipe), the landmarks go to stderr
    (Console() if table_format == "table" else console).print(results.landmarks_line(rows, ph), highlight=False, soft_wrap=True)


def print_where(tracker: Tracker, cfg: Config, store: TrajectoryRun, to_stderr: bool = False) -> None:
    """The closing lines: which run holds the results, and the commands that show and compare it."""
    print_lines(where_lines(tracker, cfg, f"run {store.name} ({store.run_id})", store.run_id), to_stderr)


def print_lines(lines: list[str], to_stderr: bool = False) -> None:
    # soft wrap: a long URI stays one line; beside a csv/json/md table on stdout they go to stderr
    Console(soft_wrap=True, stderr=to_stderr).print("\n".join(lines), highlight=False)


def where_lines(tracker: Tracker, cfg: Config, what: str, selector: str) -> list[str]:
    """Where ``what`` is stored, and the ``sddkit ui`` and ``sddkit compare --runs <selector>`` commands (the
    store and experiment spelled out where they are not the project's defaults)."""
    defaults = load_config()
    env = "" if tracker.uri == tracking_uri(None, tracker.root) else f"MLFLOW_TRACKING_URI={shlex.quote(tracker.uri)} "
    experiment = cfg.tracking.experiment
    option = "" if experiment == defaults.tracking.experiment else f" --experiment {shlex.quote(experiment)}"
    others = [n for n in sorted({selection.trajectory_name(r) for r in tracker.trajectories(experiment)})
              if n != cfg.name]
    against = shlex.quote(others[0]) if others else "OTHER"  # a name, run ID or --results folder to set beside it
    return [f"results: {what} in experiment {experiment!r} of {tracker.uri}",
            f"  browse:  {env}sddkit ui --open{option}",
            f"  compare: {env}sddkit compare --runs {shlex.quote(selector)} {against}{option}"]

"""MLflow storage: one parent run per trajectory, one nested run per round, and the lookups that
resume, ``compare`` and ``load_mask``/``load_weights`` rely on.

The tracking URI is always explicit (``paths.tracking_uri``): by default sqlite ``mlflow.db`` at the
project root, with artifacts under ``<project root>/mlruns``.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import zipfile
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from sddkit import failures, relocation
from sddkit.config import Config
from sddkit.files import locked, unwritable, unwritable_file, write_atomic
from sddkit.fingerprint import IDENTITY_VERSION, code_hash
from sddkit.relocation import artifact_home
from sddkit.paths import project_root, sqlite_path, store_file_problem, tracking_uri

if TYPE_CHECKING:  # numpy and torch only where files are packed or read: `sddkit ls` and compare never do
    import numpy as np
    import torch

# One bar per downloaded mask or weights file would bury the progress display.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# On a tracking server MLflow prints a "View run … at" line on stdout for every run ended: one a round, in the
# middle of what sddkit prints there (a table, CSV).
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
# Every call to a tracking server ends within a bound (failures.HTTP_BOUNDS): a dead server fails the call in
# seconds instead of holding the run silent for many minutes.
failures.bound_http_calls()
# MLflow logs every failed database call with its traceback, then raises it: a full disk gave dozens of
# tracebacks for one failure. The raised error is kept, and says it in one line (failures.explain).
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)

TRAJECTORY, ROUND = "trajectory", "round"
SEARCH_PAGE = 1000  # runs per page of a search (a test shrinks it to see the paging work)
# The experiment holds model training, not GenAI traces (MLflow UIs without the GenAI | Model training switch
# choose their view by it; 3.17.2's follows the link's workflowType, which `sddkit ui`'s link sets).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
INIT_DIGEST = "sddkit.init_sha256"  # a trajectory's init is rebuilt from its seed, never stored: this checks it
PARENT_METRICS = ("sparsity", "remaining", "test_acc", "test_loss", "train_acc_noisy", "train_acc_clean",
                  "memorized", "learning_distance", "distance_from_start", "round_seconds")


RESERVE_BYTES = 2**20  # Tracker.keep_reserve: room for a run's last few sqlite writes on a full disk


class TrackingError(RuntimeError):
    """A run that cannot be found or read; the message says which and what to do."""


class Tracker:
    """The project's MLflow store. Nothing is opened or created until a command first reads or writes it:
    a command that stops on bad input leaves no store behind."""

    def __init__(self, uri: str, root: Path):
        self.uri, self.root = uri, root.resolve()
        check_store_file(uri)  # before MLflow opens it: it would turn a damaged file into a new, empty store
        self._client: MlflowClient | None = None

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = open_store(self.uri)
        return self._client

    @property
    def exists(self) -> bool:
        """False for a local sqlite store not created yet (it holds nothing: no need to create it to look)."""
        db = sqlite_path(self.uri)
        return db is None or db.exists()

    @property
    def local_folders(self) -> list[Path]:
        """The folders a local store writes into (the sqlite file's and the artifact root); none for a server."""
        db = sqlite_path(self.uri)
        if db is None and not self.uri.startswith("file:"):
            return []
        return [folder for folder in ((db.parent if db else None), self.artifact_home) if folder is not None]

    @property
    def artifact_home(self) -> Path | None:
        """Where a local store keeps artifacts: mlruns/ beside a sqlite file (``relocation``: the store moves
        with it), <root>/mlruns for a file store; None for a server (it decides)."""
        db = sqlite_path(self.uri)
        if db is not None:
            return artifact_home(db)
        return self.root / "mlruns" if self.uri.startswith("file:") else None

    def check_writable(self) -> None:
        """Fail before anything is written when a local store's folders refuse a write (read-only, full)."""
        for folder in self.local_folders:
            problem = unwritable(folder)
            if problem:
                raise TrackingError(f"cannot write into {folder} ({problem}): the store {self.uri} needs it "
                                    f"writable; fix its permissions or mount, or free space, then rerun")
        db = sqlite_path(self.uri)
        problem = unwritable_file(db) if db is not None and db.is_file() else None
        if problem:
            raise TrackingError(f"cannot write to the tracking store {db} ({problem}); fix its permissions or "
                                f"mount, then rerun")

    def check_room(self, needed: int) -> None:
        """Fail before training when the artifact folder has less free space than ``needed`` bytes."""
        for folder in self.local_folders[-1:]:
            free = shutil.disk_usage(folder if folder.exists() else folder.parent).free
            if free < needed:
                raise TrackingError(f"{folder} has {free / 2**20:.1f} MiB free, and this trajectory needs about "
                                    f"{needed / 2**20:.1f} MiB for its rounds' masks and weights; free space "
                                    f"(or point tracking.uri at a bigger disk), then rerun")

    def keep_reserve(self) -> None:
        """Keep ``RESERVE_BYTES`` of a local store's disk in a file beside its database (``.mlflow.db.reserve``,
        kept between runs): when something else fills the disk mid-run, removing it (``free_reserve``) leaves
        sqlite the room to mark the run FAILED and release its lease."""
        reserve = self.reserve_file
        if reserve is None or reserve.exists():
            return
        try:
            write_atomic(reserve, bytes(RESERVE_BYTES))
        except OSError:
            pass  # no room even for that: check_room said so first; a run without it ends all the same

    def free_reserve(self) -> None:
        if self.reserve_file is not None:
            self.reserve_file.unlink(missing_ok=True)

    @property
    def reserve_file(self) -> Path | None:
        db = sqlite_path(self.uri)
        return db.with_name(f".{db.name}.reserve") if db is not None else None

    def experiment_id(self, name: str, create: bool = True) -> str | None:
        if not create and not self.exists:
            return None
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if create and not found.tags.get("mlflow.experimentKind"):  # made by older sddkit
                self.client.set_experiment_tag(found.experiment_id, *next(iter(EXPERIMENT_KIND.items())))
            return found.experiment_id
        if not create:
            return None
        # A local store keeps artifacts beside it, never wherever the process happens to run.
        location = self.artifact_home.as_uri() if self.artifact_home is not None else None
        try:
            return self.client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
        except MlflowException:  # created meanwhile by a concurrent process
            return self.client.get_experiment_by_name(name).experiment_id

    def trajectories(self, experiment: str, filter_string: str = "") -> list:
        exp = self.experiment_id(experiment, create=False)
        if exp is None:
            return []
        query = f"tags.`sddkit.kind` = {literal(TRAJECTORY)}" + (f" and {filter_string}" if filter_string else "")
        return self.search([exp], query, order_by=["attributes.start_time DESC"])

    def search(self, experiment_ids: list[str], query: str, order_by: list[str] | None = None) -> list:
        """Every run matching ``query``, page by page: MLflow returns at most one page per call, and a
        store past a page's worth must not silently drop its oldest runs."""
        return [run for page in self.pages(experiment_ids, query, order_by) for run in page]

    def pages(self, experiment_ids: list[str], query: str, order_by: list[str] | None = None,
              size: int | None = None):
        """``search``'s pages of at most ``size`` runs (and SEARCH_PAGE), one at a time: a reader that only
        counts them holds one page in memory, not every run (a round run carries its trajectory's params)."""
        token = None
        while True:
            page = self.client.search_runs(experiment_ids, query, order_by=order_by,
                                           max_results=min(size or SEARCH_PAGE, SEARCH_PAGE), page_token=token)
            yield page
            token = page.token
            if not token:
                return

    def find_trajectory(self, cfg: Config, code: str):
        """The newest run of this config made by this code (to report or continue), or None for a new run.

        Raises TrackingError when the newest run of the config is unfinished and was started by other code:
        it is never continued (its rounds would mix two codes), and a silent new run would hide it."""
        runs = self.trajectories(cfg.tracking.experiment, f"tags.`sddkit.config_hash` = {literal(cfg.identity_hash())}")
        same_code = [r for r in runs if r.data.tags.get("sddkit.code_hash") == code]
        if same_code:
            return same_code[0]
        if runs and runs[0].info.status != "FINISHED":
            theirs = runs[0].data.tags.get("sddkit.code_hash", "none recorded")
            raise TrackingError(f"run {runs[0].info.run_id} of this config ({cfg.identity_hash()}) is unfinished "
                                f"and was started by other code (code {theirs}; this code is {code}): it is never "
                                f"continued; rerun with --force for a new run (that one is kept), or run it with "
                                f"the code it started with")
        return None

    def open_trajectory(self, cfg: Config, force: bool = False, existing=None, code: str | None = None,
                        lease=None, redo_from: int | None = None) -> "TrajectoryRun":
        """The unfinished run of this config and code to continue, the finished one to report, or a new one.
        ``existing``: the run ``find_trajectory`` already returned, to spare a second search; ``lease``: this
        process's ``lease.Lease`` on the trajectory (checked before every write of a round); ``redo_from``:
        retrain the existing run from that round on (``TrajectoryRun.redo_from``)."""
        code = code or code_hash()
        existing = None if force else (existing or self.find_trajectory(cfg, code))
        if existing is not None:
            store = TrajectoryRun(self, existing.info.run_id, lease)
            store.check_rounds_kept(redo_from)  # before anything changes: a refused resume leaves the run as it was
            # Only an owner may do this: a live owner's round is RUNNING too.
            store.close_interrupted_rounds()
            # A kill between creating the run and logging its params left it without them.
            self.complete_identity(existing, cfg, code)
            store.complete_parent_curve()
            if redo_from is not None:
                store.redo_from(redo_from)
            store.reopen()
            return store
        exp = self.experiment_id(cfg.tracking.experiment)
        run = self.client.create_run(exp, tags=trajectory_tags(cfg, self.root, code), run_name=run_label(cfg))
        self.complete_identity(run, cfg, code)
        return TrajectoryRun(self, run.info.run_id, lease)

    def complete_identity(self, run, cfg: Config, code: str) -> None:
        """Log the config params and provenance tags ``run`` lacks (all of them for a new run). Values it
        already holds are kept: MLflow never changes a logged param, and keys outside the identity (device,
        threads) may differ between the processes that ran it."""
        have_params, have_tags = run.data.params, run.data.tags
        params = [Param(k, param_text(v)) for k, v in cfg.flat().items() if k not in have_params]
        tags = [RunTag(k, v) for k, v in trajectory_tags(cfg, self.root, code).items() if k not in have_tags]
        for i in range(0, max(len(params), len(tags)), 100):
            self.client.log_batch(run.info.run_id, params=params[i:i + 100], tags=tags[i:i + 100])

    def round_runs(self, parent_id: str, finished_only: bool = True, experiment_id: str | None = None) -> list:
        exp = experiment_id or self.client.get_run(parent_id).info.experiment_id
        query = f"tags.`mlflow.parentRunId` = {literal(parent_id)} and tags.`sddkit.kind` = {literal(ROUND)}"
        runs = self.search([exp], query)
        if finished_only:
            runs = [r for r in runs if r.info.status == "FINISHED"]
        return sorted(runs, key=lambda r: int(r.data.tags["sddkit.round"]))

    def epoch_values(self, round_run, epoch: int) -> dict[str, float]:
        """The per-epoch metrics (``epoch/<key>``) a round run logged for ``epoch``, by key."""
        values = {}
        for key in (k for k in round_run.data.metrics if k.startswith("epoch/")):
            at = [m.value for m in self.client.get_metric_history(round_run.info.run_id, key) if m.step == epoch]
            if at:
                values[key.removeprefix("epoch/")] = at[-1]
        return values

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def download(self, run_id: str, path: str, dst: str) -> Path:
        try:
            return Path(self.client.download_artifacts(run_id, path, dst))
        except (MlflowException, OSError) as exc:
            raise damaged(self, run_id, path, f"missing ({exc.__class__.__name__})") from exc

    def read_bytes(self, run_id: str, path: str) -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            return self.download(run_id, path, tmp).read_bytes()


SAFE_LITERAL = re.compile(r"[\w.:/@+=, -]*")


def literal(value: str) -> str:
    """``value`` quoted for an MLflow filter string. MLflow's filter grammar has no escape for a quote, so a value
    with a quote, backtick or backslash is refused rather than spliced in (it could rewrite the filter)."""
    if not SAFE_LITERAL.fullmatch(value):
        raise TrackingError(f"{value!r}: quotes, backticks and backslashes cannot be searched for in MLflow")
    return f"'{value}'"


def open_store(uri: str) -> MlflowClient:
    """A client on ``uri``; a sqlite store is opened (created, migrated) under a lock file beside it: processes
    that start together on a fresh store would each create and migrate its tables, and all but one crash
    (``duplicate column name``, ``table _alembic_tmp_… already exists``). The first one creates it; the others
    wait, then find it ready. MLflow keeps the opened store for the rest of the process."""
    failures.note_store(uri)
    db = sqlite_path(uri)
    if db is None:
        return MlflowClient(tracking_uri=uri)
    # A read-only folder takes no lock file; nothing can be created or migrated there either.
    with locked(db.with_name(f".{db.name}.lock"), required=False):
        home = moved_store(db)
        client = MlflowClient(tracking_uri=uri) if home is None else RelocatingClient(uri, home)
        client.search_experiments(max_results=1)
    return client


_read_only_noted: set[Path] = set()


def moved_store(db: Path) -> Path | None:
    """Point a copied or moved project's store at its own artifacts (``relocation``), or refuse it. A store
    that cannot be written is not rewritten: the mlruns/ folder to read its artifacts from is returned
    (None otherwise), and its locations are resolved on every read (``RelocatingClient``)."""
    try:
        relocation.relocate(db)
        return None
    except relocation.StoreElsewhere as exc:
        raise TrackingError(str(exc)) from exc
    except sqlite3.Error as exc:  # read-only, or locked for a minute
        if not read_only(db, exc):
            raise TrackingError(f"tracking store {db} belongs to a moved or copied project and cannot be "
                                f"updated ({exc}); let the process holding it finish, then rerun") from exc
    try:
        home = relocation.readable_view(db)
    except relocation.StoreElsewhere as exc:
        raise TrackingError(str(exc)) from exc
    if home is not None and db not in _read_only_noted:
        _read_only_noted.add(db)
        print(f"{db}: a read-only copy of a moved project: its artifacts are read from {home} (the store is "
              f"not rewritten; anything that writes to it will fail)", file=sys.stderr)
    return home


def read_only(db: Path, exc: sqlite3.Error) -> bool:
    """Whether the store cannot be written at all (a read-only mount or file), rather than busy."""
    return "readonly" in str(exc) or not os.access(db, os.W_OK) or not os.access(db.parent, os.W_OK)


class RelocatingClient(MlflowClient):
    """A client on a store that cannot be written: the artifact locations MLflow froze as absolute paths into
    the original project's mlruns/ are resolved into this one's (``home``) on every read, where ``relocate``
    would have rewritten them once. Writes go to the store as usual, and fail there."""

    def __init__(self, tracking_uri: str, home: Path):
        super().__init__(tracking_uri=tracking_uri)
        self._home = home

    def _repository(self, run_id: str):
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
        location = self.get_run(run_id).info.artifact_uri
        return get_artifact_repository(relocation.moved_location(location, self._home) or location)

    def list_artifacts(self, run_id: str, path=None):
        return self._repository(run_id).list_artifacts(path)

    def download_artifacts(self, run_id: str, path: str, dst_path: str | None = None) -> str:
        return self._repository(run_id).download_artifacts(path, dst_path)


def check_store_file(uri: str) -> None:
    problem = store_file_problem(uri)
    if problem:
        raise TrackingError(problem)


class TrajectoryRun:
    """A parent run; implements ``trajectory.Store``."""

    def __init__(self, tracker: Tracker, run_id: str, lease=None):
        self.tracker, self.client, self.run_id, self.lease = tracker, tracker.client, run_id, lease
        run = self.client.get_run(run_id)
        self.finished = run.info.status == "FINISHED"
        self.experiment_id, self.name = run.info.experiment_id, run.info.run_name
        self.code_hash = run.data.tags.get("sddkit.code_hash", "")
        self._rounds = self.tracker.round_runs(run_id, finished_only=False, experiment_id=self.experiment_id)
        self.completed = [round_row(r) for r in contiguous([r for r in self._rounds if r.info.status == "FINISHED"])]
        self._started: tuple[int, str] | None = None  # (round, run ID) of the round run under way
        self._published: tuple[int, str] | None = None  # (round, run ID) whose mask publish_mask stored

    def close_interrupted_rounds(self) -> None:
        """Mark the rounds left RUNNING by a dead owner KILLED (they are redone, never counted)."""
        for r in self._rounds:
            if r.info.status == "RUNNING":
                self.client.set_terminated(r.info.run_id, "KILLED")

    def complete_parent_curve(self) -> None:
        """Log the per-round parent metrics of finished rounds that lack them: a kill between a round run
        turning FINISHED and the parent's metrics being logged leaves a gap in the parent's curve."""
        logged = {m.step for m in self.client.get_metric_history(self.run_id, "test_acc")}
        stamp = now_ms()
        missing = [Metric(k, float(row[k]), stamp, row["round"]) for row in self.completed
                   if row["round"] not in logged for k in PARENT_METRICS if k in row]
        log_metrics(self.client, self.run_id, missing)

    def redo_from(self, first: int) -> None:
        """Retrain round ``first`` and every later one (to repair a damaged or deleted round artifact): their
        runs are marked KILLED and tagged ``sddkit.replaced``, and rounds 0…first−1 are kept."""
        if first > len(self.completed):
            raise TrackingError(f"--redo-from {first}: run {self.run_id} has finished rounds 0–{len(self.completed) - 1} "
                                f"only; rerun without --redo-from to continue it")
        for r in self._rounds:
            if int(r.data.tags["sddkit.round"]) >= first and r.info.status == "FINISHED":
                self.client.set_tag(r.info.run_id, "sddkit.replaced", f"redone by --redo-from {first}")
                self.client.set_terminated(r.info.run_id, "KILLED")
        self.completed = self.completed[:first]
        self.client.set_tag(self.run_id, "sddkit.redone_from", str(first))

    def check_rounds_kept(self, redo_from: int | None = None) -> None:
        """Before a resume: every finished round it keeps (all of them, or those before ``redo_from``) still has
        its files. The rounds still to train build on them, and a finished trajectory must hold them all;
        otherwise the loss would surface only later, in whoever reads the round. Stops in one line offering
        the repair that keeps the rounds before the first lost one."""
        kept = contiguous([r for r in self._rounds if r.info.status == "FINISHED"])
        for run in kept[:redo_from]:
            have = {f.path for f in self.client.list_artifacts(run.info.run_id)}
            lost = [name for name in ROUND_FILES if name not in have]
            if lost:
                k = int(run.data.tags["sddkit.round"])
                keeps = f" and keeps rounds 0–{k - 1}" if k else ""
                raise TrackingError(
                    f"run {run.info.run_id} (round {k} of trajectory run {self.run_id}): {' and '.join(lost)} "
                    f"{'is' if len(lost) == 1 else 'are'} missing, and this resume builds on it; repair it with "
                    f"the same `sddkit run` plus --redo-from {k}: it retrains round {k} on{keeps} (--force would "
                    f"instead start a new run and retrain every round)")

    def restore_labels(self, noisy: torch.Tensor) -> None:
        """Put back the parent's noisy_labels.npy when it was deleted (derived from the config: said, not silent)."""
        if LABELS in {f.path for f in self.client.list_artifacts(self.run_id)}:
            return
        self.note_rebuilt("labels", f"{LABELS} of run {self.run_id} is missing")
        log_files(self.client, self.run_id, {LABELS: _npy(noisy.cpu().numpy())})

    def reopen(self) -> None:
        """Mark a continued run RUNNING again (it was KILLED, FAILED or, for --redo-from, FINISHED)."""
        self.client.update_run(self.run_id, status="RUNNING")
        self.finished = False
        self.set_state(None)  # a wait the last owner was stopped in is over

    def check_owner(self) -> None:
        if self.lease is not None:
            self.lease.check()

    # ---- trajectory.Store
    def log_labels(self, noisy: torch.Tensor, realised_rate: float) -> None:
        self.client.log_batch(self.run_id, metrics=[Metric("noise_realised_rate", realised_rate, now_ms(), 0)])
        log_files(self.client, self.run_id, {LABELS: _npy(noisy.cpu().numpy())})

    def save_state(self, name: str, state: dict) -> None:
        log_files(self.client, self.run_id, {f"state/{name}.pt": torch_bytes(state)})

    def load_state(self, name: str) -> dict | None:
        """The stored state, or None when it is absent or damaged: the engine then re-derives it (every
        state is derivable from the config), so a half-written file is never trained on."""
        path = f"state/{name}.pt"
        if path not in {f.path for f in self.client.list_artifacts(self.run_id, "state")}:
            if name != "init":  # the init is never stored (only runs of older sddkit kept it): not a loss
                self.note_rebuilt(name, f"{path} of run {self.run_id} is missing")
            return None
        try:
            return read_torch(self.tracker, self.run_id, path)
        except TrackingError as exc:
            self.note_rebuilt(name, f"{path} of run {self.run_id} is unreadable ({exc.__cause__.__class__.__name__})")
            return None

    def note_rebuilt(self, name: str, problem: str) -> None:
        """Say (and tag ``sddkit.rebuilt.<name>``) that a lost state is being re-derived from the config."""
        print(f"{problem}: rebuilding it", file=sys.stderr)
        self.client.set_tag(self.run_id, f"sddkit.rebuilt.{name}", time.strftime("%Y-%m-%d %H:%M:%S"))

    def load_round(self, round_index: int):
        run_id = self._round_id(round_index)
        return read_mask(self.tracker, run_id), read_weights(self.tracker, run_id)

    def init_digest(self) -> str | None:
        return self.client.get_run(self.run_id).data.tags.get(INIT_DIGEST)

    def record_init_digest(self, digest: str) -> None:
        self.client.set_tag(self.run_id, INIT_DIGEST, digest)

    def log_round(self, round_index, metrics, history, masks, weights) -> None:
        epoch_metrics = [Metric(f"epoch/{k}", float(v), 0, row["epoch"])
                         for row in history for k, v in row.items() if k != "epoch"]
        files = {"mask.npz": pack_mask(masks), WEIGHTS: sparse_weights(weights, masks),
                 "metrics.json": json.dumps(metrics, indent=1).encode()}
        if self._published == (round_index, self._started and self._started[1]):
            del files["mask.npz"]  # stored when the round started (publish_mask)
        self.store_round(round_index, metrics, epoch_metrics, files, {})

    def publish_mask(self, round_index: int, masks: dict[str, torch.Tensor]) -> None:
        """Store round ``round_index``'s mask in its run under way, as soon as it is pruned: a reinit twin
        (``LotteryMasks``) trains its own round k beside this one from it. Written atomically, like every file."""
        self.check_owner()
        if self._started is None or self._started[0] != round_index:
            self.start_round(round_index)
        log_files(self.client, self._started[1], {"mask.npz": pack_mask(masks)})
        self._published = (round_index, self._started[1])

    def set_state(self, text: str | None) -> None:
        """What the trajectory is doing when it is not training (``waiting for lottery round 3 …``), as the
        parent's tag ``sddkit.state`` (shown in the MLflow UI); None removes it."""
        if text is not None:
            self.client.set_tag(self.run_id, "sddkit.state", text)
        elif "sddkit.state" in self.client.get_run(self.run_id).data.tags:
            self.client.delete_tag(self.run_id, "sddkit.state")

    def adopt_round(self, round_index: int, source) -> dict:
        """Round ``round_index`` as a copy of ``source``, an identical round run of another trajectory (reinit's
        round 0 is its lottery twin's): its metrics, per-epoch history and artifacts, tagged
        ``sddkit.copied_from``. ``round_seconds`` is the copy's time; ``copied_round_seconds`` the training's."""
        started = time.perf_counter()
        source_id = source.info.run_id
        epoch_metrics = [m for key in source.data.metrics if key.startswith("epoch/")
                         for m in self.client.get_metric_history(source_id, key)]
        files = {name: self.tracker.read_bytes(source_id, name) for name in ("mask.npz", WEIGHTS, "metrics.json")}
        metrics = round_row(source)
        metrics["copied_round_seconds"] = metrics.get("round_seconds", float("nan"))
        metrics["round_seconds"] = time.perf_counter() - started
        files["metrics.json"] = json.dumps(metrics, indent=1).encode()
        self.store_round(round_index, metrics, epoch_metrics, files, {"sddkit.copied_from": source_id})
        return metrics

    def start_round(self, round_index: int, sparsity_target: float | None = None) -> None:
        """Create the round's nested run now, RUNNING, so its duration is the round's: with the round's
        params (``round``, ``sparsity_target``) and the parent's config params, to search rounds by them. A
        round cut off midway stays RUNNING (``close_interrupted_rounds`` marks it KILLED on resume)."""
        self.check_owner()
        tags = {"mlflow.parentRunId": self.run_id, "sddkit.kind": ROUND, "sddkit.round": str(round_index)}
        name = f"{self.name}/round-{round_index:02d}"
        child = self.client.create_run(self.experiment_id, tags=tags, run_name=name).info.run_id
        own = {"round": str(round_index)}
        if sparsity_target is not None:
            own["sparsity_target"] = f"{sparsity_target:.6g}"
        params = {**self.client.get_run(self.run_id).data.params, **own}
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(child, params=items[i:i + 100])
        self._started = (round_index, child)

    def store_round(self, round_index: int, metrics: dict, epoch_metrics: list[Metric], files: dict[str, bytes],
                    tags: dict[str, str]) -> None:
        """A round's nested run (the one ``start_round`` created): its metrics, history and files; FINISHED
        only once all are stored."""
        self.check_owner()
        if self._started is None or self._started[0] != round_index:
            self.start_round(round_index)
        child = self._started[1]
        stamp = now_ms()
        epoch_metrics = [Metric(m.key, m.value, stamp, m.step) for m in epoch_metrics]
        round_metrics = [Metric(k, float(v), stamp, round_index) for k, v in metrics.items()]
        # A failure here (a full disk, a server gone) leaves the round under way: the runner marks it and the
        # parent as the run ends (runner.ending), and a rerun redoes the round.
        self.client.log_batch(child, tags=[RunTag(k, v) for k, v in tags.items()])
        log_metrics(self.client, child, epoch_metrics + round_metrics)
        log_files(self.client, child, files)
        self.client.set_terminated(child, "FINISHED")  # only now does the round count as done
        self._started = None
        # One batch, one transaction: test_acc is there exactly when the others are (complete_parent_curve).
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(metrics[k]), stamp, round_index)
                                                    for k in PARENT_METRICS if k in metrics])
        self.completed.append(metrics)

    # ---- end of a trajectory
    def finish(self, files: dict[str, bytes], summary: dict[str, float], tags: dict[str, str]) -> None:
        """Close the trajectory: its files, its one-value metrics (``summary``: named ``summary/…`` and
        ``phase/…`` by ``results.parent_summary``), tags (``mlflow.note.content`` is its description)."""
        self.check_owner()
        log_files(self.client, self.run_id, files)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now_ms(), 0) for k, v in summary.items()],
                              tags=[RunTag(k, str(v)) for k, v in tags.items()])
        self.client.set_terminated(self.run_id, "FINISHED")
        self.finished = True

    @property
    def round_under_way(self) -> int:
        """The round being trained or stored (the next one when none is)."""
        return self._started[0] if self._started is not None else len(self.completed)

    def stop(self, status: str) -> None:
        """End the run (and the round under way) as ``status``: KILLED on Ctrl-C, FAILED on an error."""
        if self._started is not None:
            terminate_quietly(self.client, self._started[1], status)
            self._started = None
        terminate_quietly(self.client, self.run_id, status)

    def _round_id(self, round_index: int) -> str:
        for r in self.tracker.round_runs(self.run_id, experiment_id=self.experiment_id):
            if int(r.data.tags["sddkit.round"]) == round_index:
                return r.info.run_id
        raise TrackingError(f"trajectory run {self.run_id} has no finished round {round_index}")


def terminate_quietly(client: MlflowClient, run_id: str, status: str) -> None:
    """Best effort, on the way out of an error: a store that cannot take the status must not hide the error."""
    try:
        client.set_terminated(run_id, status)
    except Exception:  # noqa: BLE001 - the original error is what the user needs to see
        pass


def store_problem(exc: BaseException) -> str:
    """The gist of a storage error, on one line (an OSError's message and file, MLflow's first line)."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else exc.__class__.__name__


def contiguous(rounds: list) -> list:
    """Finished round runs 0, 1, 2, … up to the first gap (sorted by round)."""
    done = []
    for expected, r in enumerate(rounds):
        if int(r.data.tags["sddkit.round"]) != expected:
            break
        done.append(r)
    return done


def round_row(run) -> dict:
    """A finished round run's metrics, as the trajectory engine produced them."""
    row = {k: v for k, v in run.data.metrics.items() if not k.startswith("epoch/")}
    row["round"] = int(row.get("round", run.data.tags["sddkit.round"]))
    return row


# ---------------------------------------------------------------- artifacts

def pack_mask(masks: dict[str, torch.Tensor]) -> bytes:
    """Bit-packed bool masks: 1 bit a weight, with each tensor's shape alongside."""
    import numpy as np
    arrays = {}
    for name, mask in masks.items():
        arrays[f"bits:{name}"] = np.packbits(mask.cpu().numpy().astype(bool).ravel())
        arrays[f"shape:{name}"] = np.asarray(mask.shape, dtype=np.int64)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def unpack_mask(content: bytes) -> dict[str, torch.Tensor]:
    import numpy as np
    import torch
    with np.load(io.BytesIO(content)) as arrays:
        out = {}
        for key in arrays.files:
            if key.startswith("shape:"):
                name, shape = key[len("shape:"):], tuple(arrays[key])
                bits = np.unpackbits(arrays[f"bits:{name}"], count=int(np.prod(shape)))
                out[name] = torch.from_numpy(bits.astype(bool).reshape(shape))
        return out


def log_files(client: MlflowClient, run_id: str, files: dict[str, bytes]) -> None:
    """Store each ``{artifact path: content}`` as an artifact of the run (a path may name a folder: ``state/x.pt``).

    Into a local artifact folder each file is written atomically (a temporary file, then a rename): a kill
    never leaves half a file under its final name, which a resume would read. Elsewhere, in one upload."""
    local = local_artifact_folder(client.get_run(run_id).info.artifact_uri)
    if local is not None:
        for name, content in files.items():
            target = local / name
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(target, content)
        return
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in files.items():
            local = Path(tmp) / name
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(content)
        client.log_artifacts(run_id, tmp)


def local_artifact_folder(artifact_uri: str) -> Path | None:
    """The folder of a ``file:`` (or plain path) artifact URI; None for a server or cloud store."""
    parsed = urllib.parse.urlparse(artifact_uri)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    return Path(artifact_uri) if parsed.scheme == "" else None


def log_metrics(client: MlflowClient, run_id: str, metrics: list[Metric]) -> None:
    for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics a batch
        client.log_batch(run_id, metrics=metrics[i:i + 1000])


def read_mask(tracker: Tracker, run_id: str, content: bytes | None = None) -> dict[str, torch.Tensor]:
    """A round run's mask (``content``: its bytes, already read)."""
    content = tracker.read_bytes(run_id, "mask.npz") if content is None else content
    try:
        return unpack_mask(content)
    except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise damaged(tracker, run_id, "mask.npz", f"corrupt ({exc.__class__.__name__})") from exc


def read_torch(tracker: Tracker, run_id: str, path: str) -> dict:
    import torch
    with tempfile.TemporaryDirectory() as tmp:
        local = tracker.download(run_id, path, tmp)
        try:
            state = torch.load(local, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a damaged file
            raise damaged(tracker, run_id, path, f"corrupt or unreadable ({exc.__class__.__name__})") from exc
    if not isinstance(state, dict):
        raise damaged(tracker, run_id, path, f"not a state dict (a {type(state).__name__})")
    return state


# A round's weights. Since the sparse format (``checkpoint``) it holds the kept values only; before, the dense
# state dict. The name stayed: runs of either kind load alike, and tools that list a round's files still find it.
WEIGHTS = "weights.pt"
ROUND_FILES = ("mask.npz", WEIGHTS)  # what a later round, load_round and reinit read of a round
LABELS = "noisy_labels.npy"  # the parent's copy of the labels it trained on


def sparse_weights(weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> bytes:
    """A round's weights file: the values ``masks`` keeps, plus every tensor it does not cover (``checkpoint``)."""
    from sddkit import checkpoint
    return checkpoint.to_bytes(weights, masks)


def read_weights(tracker: Tracker, run_id: str, masks: dict[str, torch.Tensor] | None = None
                 ) -> dict[str, torch.Tensor]:
    """A round run's final weights as a dense state dict on the CPU: exact zeros where the round pruned.

    Reads either format: a sparse file is expanded with the round's mask (``masks``: it, already read; else
    mask.npz is read), a dense one (runs stored before) is returned as it is."""
    from sddkit import checkpoint
    stored = read_torch(tracker, run_id, WEIGHTS)
    if not checkpoint.is_sparse(stored):
        return stored
    masks = read_mask(tracker, run_id) if masks is None else masks
    try:
        return checkpoint.unpack(stored, masks)
    except checkpoint.CheckpointError as exc:
        raise damaged(tracker, run_id, WEIGHTS, f"corrupt or does not fit the round's mask.npz ({exc})") from exc


def damaged(tracker: Tracker, run_id: str, path: str, problem: str) -> TrackingError:
    """The error for an artifact that is missing or unreadable, naming the run and the file, with the repair
    that keeps the finished rounds (never a bare --force, which would retrain all of them)."""
    try:
        tags = tracker.client.get_run(run_id).data.tags
    except MlflowException:
        return TrackingError(f"run {run_id}: {path} is {problem}, and the run itself is not in {tracker.uri}")
    where = f"run {run_id}"
    if tags.get("sddkit.kind") == ROUND:
        k, parent = int(tags["sddkit.round"]), tags.get("mlflow.parentRunId", "?")
        repair = (f"repair it with that trajectory's `sddkit run` (same settings) plus --redo-from {k}: it retrains "
                  f"round {k} on and keeps rounds 0–{k - 1}" if k else
                  "repair it with that trajectory's `sddkit run` (same settings) plus --redo-from 0")
        where = f"run {run_id} (round {k} of trajectory run {parent})"
    elif path.startswith("state/"):
        repair = ("it is derived from the config: its `sddkit run` rebuilds it when it continues the trajectory "
                  "(for a finished one, add --redo-from with its last round, which retrains that round only)")
    else:
        repair = "rerun the trajectory's `sddkit run` with --redo-from 0 to rebuild it in place"
    return TrackingError(f"{where}: {path} is {problem}; {repair} (--force would instead start a new run and "
                         f"retrain every round)")


def load_mask(run_id: str, uri: str | None = None) -> dict[str, torch.Tensor]:
    """A round run's mask by ID (for tests; notebooks use ``sddkit.load_mask``, sddkit.api, which checks more)."""
    from sddkit.paths import missing_project
    if missing_project(uri):  # else a stray, empty mlflow.db would appear wherever this runs
        raise TrackingError(f"{missing_project(uri)}; pass uri= or cd into the project")
    root = project_root()
    return read_mask(Tracker(tracking_uri(uri, root), root), run_id)


def load_weights(run_id: str, uri: str | None = None) -> dict[str, torch.Tensor]:
    """A round run's weights by ID (for tests; notebooks use ``sddkit.load_weights``, sddkit.api)."""
    from sddkit.paths import missing_project
    if missing_project(uri):
        raise TrackingError(f"{missing_project(uri)}; pass uri= or cd into the project")
    root = project_root()
    return read_weights(Tracker(tracking_uri(uri, root), root), run_id)


def bytes_needed(state: dict[str, torch.Tensor], rounds: int, prunable: list[str] | None = None,
                 rate: float = 0.0, first: int = 0) -> int:
    """An upper bound on the bytes rounds ``first`` … ``rounds`` − 1 of a model with ``state`` add to the
    artifact store: each round's sparse weights (``checkpoint.size_bound``) and mask, plus one dense state (a
    rewind state, where the mode keeps one) and a MiB of slack. Start weights and the init are never stored.

    Round r keeps (1 − ``rate``)^r of the ``prunable`` weights (the names its masks cover; ``pruning.prune``
    keeps at most one weight a tensor more). Without ``prunable`` nothing says which tensors a mask covers, so
    every round is counted dense: still an upper bound, but up to 1/density times a round's real size."""
    from sddkit import checkpoint, pruning
    weights = sum(t.numel() * t.element_size() for t in state.values())
    mask = sum(t.numel() for t in state.values()) // 8
    density = lambda r: pruning.density_after(r, rate) if prunable else 1.0  # noqa: E731
    rounds_bytes = sum(checkpoint.size_bound(state, prunable or (), density(r)) for r in range(first, rounds))
    return rounds_bytes + max(0, rounds - first) * mask + weights + 2**20


def torch_bytes(state: dict) -> bytes:
    import torch
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state.items()}, buffer)
    return buffer.getvalue()


def _npy(array: np.ndarray) -> bytes:
    import numpy as np
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def now_ms() -> int:
    return int(time.time() * 1000)


# ---------------------------------------------------------------- provenance

IDENTITY_TAG = "sddkit.identity"


def current_identity(run) -> bool:
    """Whether the run's hashes were made the way this sddkit makes them (else it predates the scheme)."""
    return run.data.tags.get(IDENTITY_TAG) == IDENTITY_VERSION


def trajectory_tags(cfg: Config, root: Path, code: str) -> dict[str, str]:
    commit = git_commit(root)
    return {
        "sddkit.kind": TRAJECTORY,
        "sddkit.config_hash": cfg.identity_hash(),
        "sddkit.code_hash": code,  # the run's identity is config + code (fingerprint.code_hash)
        IDENTITY_TAG: IDENTITY_VERSION,  # how the two hashes were made: older runs lack it (README: upgrading)
        "sddkit.group": cfg.group_hash(),  # replicates (same config, other seeds) share it
        "sddkit.name": cfg.name,
        "sddkit.preset": cfg.preset,
        "sddkit.retrain_mode": cfg.retrain.mode,
        "sddkit.criterion": cfg.prune.criterion,
        "sddkit.noise_kind": cfg.noise.kind,
        "sddkit.noise_ratio": str(cfg.noise.ratio),
        "sddkit.seed": str(cfg.seed),
        "sddkit.deterministic": str(cfg.train.deterministic),
        "sddkit.git_commit": commit,
        "mlflow.source.git.commit": commit,
        "sddkit.versions": package_versions(),
        **dvc_tags(),
    }


def run_label(cfg: Config) -> str:
    """The parent run's name in the MLflow UI: the trajectory's name (``Config.name``, the ``sddkit.name`` tag,
    kept exactly as given) and what tells it from its neighbours in the experiment: under `dvc exp run` the
    DVC experiment's name (``lottery·bushy-lamb``), else the noise ratio and seed (``lottery·ε=0.4·s1``).
    Only a label: runs are found by their tags (config hash), never by this name."""
    exp = os.environ.get("DVC_EXP_NAME")
    return f"{cfg.name}·{exp}" if exp else f"{cfg.name}·ε={param_text(cfg.noise.ratio)}·s{cfg.seed}"


def trajectory_name(run) -> str:
    """A trajectory run's name as given (``sddkit.name``; runs of older sddkit: their run name)."""
    return run.data.tags.get("sddkit.name") or run.info.run_name


SUMMARY_PREFIX, PHASE_PREFIX = "summary/", "phase/"


def stored_summary(run) -> dict[str, float]:
    """A finished trajectory's one-value metrics under their ``results.summary`` / ``analysis.phase_metrics``
    names (``dense_test_acc``, ``phase_light_first``), read from ``summary/…`` and ``phase/…``, or from the
    unprefixed names runs of older sddkit logged."""
    out = {}
    for key, value in run.data.metrics.items():
        if key.startswith(SUMMARY_PREFIX):
            out[key[len(SUMMARY_PREFIX):]] = value
        elif key.startswith(PHASE_PREFIX):
            out[f"phase_{key[len(PHASE_PREFIX):]}"] = value
    if out:
        return out
    curve = {*PARENT_METRICS, "noise_realised_rate"}
    return {k: v for k, v in run.data.metrics.items() if k not in curve and "/" not in k}


def dvc_tags() -> dict[str, str]:
    """Inside a DVC stage: the stage and, under `dvc exp run`, the experiment's name."""
    names = {"DVC_STAGE": "sddkit.dvc_stage", "DVC_EXP_NAME": "sddkit.dvc_exp_name"}
    return {tag: os.environ[env] for env, tag in names.items() if os.environ.get(env)}


def log_data_inputs(tracker: Tracker, run_id: str, files) -> None:
    """Record pinned data files (``prepare.DataFile``: path, md5) as the run's dataset inputs; the digest is
    the md5 ``dvc.lock`` lists for the same path. Logging the same file again adds nothing."""
    inputs = [DatasetInput(Dataset(name=f.path, digest=f.md5, source_type="dvc", source=f.path),
                           tags=[InputTag("mlflow.data.context", "training")]) for f in files]
    tracker.client.log_inputs(run_id, datasets=inputs)


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (out.stdout.strip() + ("-dirty" if dirty else "")) if out.returncode == 0 else "unknown"


def package_versions() -> str:
    names = ("sddkit", "torch", "torchvision", "timm", "mlflow", "numpy")
    found = []
    for name in names:
        try:
            found.append(f"{name}={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return " ".join(found)


# ---------------------------------------------------------------- lookups by name

def find_trajectories(tracker: Tracker, selector: str, experiment: str) -> list:
    """Trajectories whose run ID, run name or ``sddkit.name`` tag is ``selector`` (newest first)."""
    runs = tracker.trajectories(experiment)
    return [r for r in runs if selector in (r.info.run_id, r.info.run_name, r.data.tags.get("sddkit.name"))]


def known_names(tracker: Tracker, experiment: str) -> list[str]:
    return sorted({trajectory_name(r) for r in tracker.trajectories(experiment)})


def select_trajectories(tracker: Tracker, selector: str, experiment: str, finished: bool = True,
                        heading: str = "", hint: str = "") -> list:
    """The trajectories whose run ID, run name or ``sddkit.name`` tag is ``selector`` (newest first); with
    ``finished``, only the finished ones. ``heading`` (say ``--runs x``) starts each error, ``hint`` ends the
    one for an unknown name."""
    what = (f"{heading}: " if heading else "") + f"no trajectory named {selector!r}"
    found = find_trajectories(tracker, selector, experiment)
    if not found:
        raise unknown_trajectory(tracker, experiment, what, hint)
    return finished_only(found, what) if finished else found


def unknown_trajectory(tracker: Tracker, experiment: str, what: str, hint: str = "") -> TrackingError:
    """The error for a selector that matched nothing: ``what`` (``no trajectory named 'x'``), then the names
    the experiment does hold."""
    names = known_names(tracker, experiment)
    if not names:
        return TrackingError(f"{what}; experiment {experiment!r} in {tracker.uri} holds no trajectories yet; "
                             f"run `dvc repro` or `sddkit run` first (or name another experiment)")
    return TrackingError(f"{what} in experiment {experiment!r} of {tracker.uri}; names there: {', '.join(names)}"
                         + (f"; {hint}" if hint else ""))


def finished_only(runs: list, what: str) -> list:
    """The finished ones of ``runs``, or an error saying how the others ended (``what``: ``no trajectory …``)."""
    finished = [r for r in runs if r.info.status == "FINISHED"]
    if not finished:
        statuses = ", ".join(sorted({r.info.status for r in runs}))
        raise TrackingError(f"{what} has finished ({len(runs)} found: {statuses}); rerun its `sddkit run` to "
                            f"finish it")
    return finished


RUN_ID = re.compile(r"[0-9a-f]{32}")


# A reinit follows its lottery twin round by round (``LotteryMasks.wait_for``): how often it looks, and how long a
# twin with no live owner (failed, killed) is given to be resumed before the reinit stops.
TWIN_POLL_S = 1.0
TWIN_GRACE_S = 90.0


class LotteryMasks:
    """reinit's mask source (``trajectory.MaskSource``): round r -> the mask of round r of its lottery trajectory.

    That is the exact twin (this config in lottery mode, run by the same code), or the run whose ID
    ``retrain.masks_from`` gives. A name in ``masks_from`` narrows the twins to runs of that name; no other run is
    ever taken, so a run of another noise level or schedule cannot slip in. The twin need not have finished: it
    stores each round's mask as that round starts (right after pruning), so the reinit trains round k beside the
    twin's round k. ``follow`` (``--wait``, every sweep cell): wait for a twin still training, round by round;
    else every round must be there now, and the error names the first one missing. The masks there already are
    read and checked here, before any training: a damaged one must not stop the run rounds in."""

    def __init__(self, tracker: Tracker, cfg: Config, code: str, follow: bool = False):
        from sddkit import lease
        chosen = cfg.retrain.masks_from
        self.tracker, self.code, self.follow, self.rounds_total = tracker, code, follow, cfg.prune.rounds
        self.twin_hash = lottery_twin(cfg).identity_hash()
        self.heading = f"retrain.masks_from = {chosen!r}" if chosen else "reinit's lottery twin"
        self.lease_key = lease.key_for(lease.identity(self.twin_hash, code))
        self.source = (explicit_source(tracker, cfg) if chosen and RUN_ID.fullmatch(chosen)
                       else self.twin_run(cfg))
        self.packed: dict[int, bytes] = {}
        self.rounds: dict[int, object] = {}
        for r in range(1, cfg.prune.rounds + 1):  # those there now are checked before training
            run = self.round_run(r)
            if run is None:
                if not follow:
                    raise TrackingError(self.missing(r))
                break
            self.keep(r, run)

    # ---- trajectory.MaskSource
    def masks(self, round_index: int) -> dict[str, torch.Tensor]:
        if round_index not in self.packed:
            self.wait_for(round_index, lambda text: None)
        return read_mask(self.tracker, self.rounds[round_index].info.run_id, self.packed[round_index])

    def wait_for(self, round_index: int, waiting) -> bool:
        """Block until the source has round ``round_index``'s mask (round 0: its finished round 0, which
        ``same_round_zero`` may copy), the caller's lease beating meanwhile; ``waiting(text)`` is told once
        when it has to wait. True if it waited. A source with no live owner for ``TWIN_GRACE_S`` (failed,
        killed and not resumed) stops it with a TrackingError saying what to resume."""
        if round_index in self.packed or (round_index == 0 and not self.exact()):
            return False
        told, orphaned_since = False, None
        while True:
            run = self.round_run(round_index)
            if run is not None:
                if round_index > 0:
                    self.keep(round_index, run)
                else:
                    self.rounds[0] = run
                return told
            if not self.follow:
                raise TrackingError(self.missing(round_index))
            if self.owner_alive():
                orphaned_since = None
            else:
                orphaned_since = orphaned_since or time.monotonic()
                if time.monotonic() - orphaned_since > TWIN_GRACE_S:
                    raise TrackingError(self.missing(round_index, waited=True))
            if not told:
                waiting(f"waiting for lottery round {round_index} (run {self.source.info.run_id})")
                told = True
            time.sleep(TWIN_POLL_S)

    def same_round_zero(self, init_digest: str):
        """The source's round 0 run when it is the exact twin's (its config in lottery mode, this code, this
        init): then that round is this trajectory's round 0, bit for bit. Else None."""
        if not self.exact():
            return None
        if 0 not in self.rounds:
            self.wait_for(0, lambda text: None)
        tags = self.tracker.client.get_run(self.source.info.run_id).data.tags  # the digest comes after the run
        return self.rounds.get(0) if tags.get(INIT_DIGEST) in (init_digest, None) else None

    # ---- the source's rounds
    def exact(self) -> bool:
        tags = self.source.data.tags
        return tags.get("sddkit.config_hash") == self.twin_hash and tags.get("sddkit.code_hash") == self.code

    def round_run(self, round_index: int):
        """The source's round run holding round ``round_index``'s mask: the finished one, else the one under way
        once it has stored its mask (round 0: finished only). None when there is none yet."""
        runs = [r for r in self.tracker.round_runs(self.source.info.run_id, finished_only=False,
                                                   experiment_id=self.source.info.experiment_id)
                if int(r.data.tags["sddkit.round"]) == round_index and "sddkit.replaced" not in r.data.tags]
        finished = [r for r in runs if r.info.status == "FINISHED"]
        if finished or round_index == 0:
            return finished[-1] if finished else None
        for run in (r for r in runs if r.info.status == "RUNNING"):
            if "mask.npz" in {f.path for f in self.tracker.client.list_artifacts(run.info.run_id)}:
                return run
        return None

    def keep(self, round_index: int, run) -> None:
        """Read round ``round_index``'s mask now and check it (a damaged one stops the run here)."""
        content = self.tracker.read_bytes(run.info.run_id, "mask.npz")
        read_mask(self.tracker, run.info.run_id, content)
        self.rounds[round_index], self.packed[round_index] = run, content

    def owner_alive(self) -> bool:
        """Whether the source is being trained now: RUNNING, with a live lease holder."""
        from sddkit import lease
        run = self.tracker.client.get_run(self.source.info.run_id)
        if run.info.status != "RUNNING":
            return False
        holder = lease.read(self.tracker.client, run.info.experiment_id, self.lease_key)
        return holder is not None and not holder.is_stale()

    def missing(self, round_index: int, waited: bool = False) -> str:
        """The one line for a source without round ``round_index``'s mask: which round, and what to do."""
        run = self.tracker.client.get_run(self.source.info.run_id)
        run_id, status = run.info.run_id, run.info.status
        what = f"finished round {round_index}" if round_index == 0 else f"round-{round_index} mask"
        if status == "FINISHED":
            return (f"{self.heading}: run {run_id} has no {what}; finish that trajectory (its `sddkit run`, "
                    f"--redo-from {round_index}) or lower prune.rounds")
        if self.owner_alive():
            return (f"{self.heading}: run {run_id} has no {what} yet (it is still training); rerun with --wait to "
                    f"follow it round by round, or once it has finished")
        stopped = f"waited {TWIN_GRACE_S:.0f} s for it to be resumed; " if waited else ""
        return (f"{self.heading}: run {run_id} stopped ({status}, no live process) before its {what}; {stopped}"
                f"resume it (its `sddkit run`, same settings), then rerun this command: it continues after its "
                f"last finished round")

    def twin_run(self, cfg: Config):
        """The exact twin's run; while following, one that is about to start (its owner holds its lease, or
        the grace has not passed) is waited for."""
        from sddkit import lease
        waited_since = time.monotonic()
        while True:
            try:
                return lottery_twin_run(self.tracker, cfg, self.code, unfinished=True)
            except TrackingError:
                if not self.follow:
                    raise
                exp = self.tracker.experiment_id(cfg.tracking.experiment)
                holder = lease.read(self.tracker.client, exp, self.lease_key)
                if holder is not None and not holder.is_stale():
                    waited_since = time.monotonic()
                elif time.monotonic() - waited_since > TWIN_GRACE_S:
                    raise
                time.sleep(TWIN_POLL_S)


def lottery_twin_run(tracker: Tracker, cfg: Config, code: str, unfinished: bool = False):
    """The newest finished run of this config in lottery mode by this code (named ``masks_from``, if set);
    ``unfinished``: when none has finished, the newest one under way (or stopped: it may be resumed)."""
    twin = lottery_twin(cfg).identity_hash()
    query = f"tags.`sddkit.config_hash` = {literal(twin)} and tags.`sddkit.code_hash` = {literal(code)}"
    name = cfg.retrain.masks_from
    runs = [r for r in tracker.trajectories(cfg.tracking.experiment, query)
            if name in (None, r.info.run_name, r.data.tags.get("sddkit.name"))]
    named = [r for r in runs if r.info.status == "FINISHED"] or (runs[:1] if unfinished else [])
    if not named:
        which = f"named {name!r} " if name else ""
        raise TrackingError(f"reinit: no {'' if unfinished else 'finished '}lottery twin {which}in experiment "
                            f"{cfg.tracking.experiment!r} (this config in lottery mode: config {twin}, code {code}); "
                            f"run it first or beside it (`sddkit run --set retrain.mode=lottery` with the same "
                            f"settings; then this with --wait follows it round by round), or set "
                            f"retrain.masks_from to a lottery run ID")
    return named[0]


def explicit_source(tracker: Tracker, cfg: Config):
    """The run ``retrain.masks_from`` names by ID, after checking its masks fit this config."""
    run_id = cfg.retrain.masks_from
    try:
        run = tracker.client.get_run(run_id)
    except MlflowException as exc:
        raise TrackingError(f"retrain.masks_from = {run_id!r}: no such run in {tracker.uri}") from exc
    if run.data.tags.get("sddkit.kind") != TRAJECTORY or run.data.params.get("retrain.mode") == "reinit":
        raise TrackingError(f"retrain.masks_from = {run_id!r}: not a pruned trajectory of sddkit (kind "
                            f"{run.data.tags.get('sddkit.kind')}, mode {run.data.params.get('retrain.mode')})")
    mismatch = mask_mismatch(run, cfg)
    if mismatch:
        raise TrackingError(f"retrain.masks_from = {run_id!r}: its masks do not fit this config ({mismatch}); "
                            f"point it at a lottery run of the same model, data and pruning settings")
    return run


# The keys that decide which weights a mask covers, their shapes and how sparse each round is.
MASK_KEYS = ("model.arch", "data.name", "data.downsample", "prune.rate", "prune.scope", "prune.criterion",
             "prune.exclude")


def mask_mismatch(run, cfg: Config) -> str:
    """'' when the run's masks fit ``cfg``, else which keys differ."""
    ours = {k: v for k, v in cfg.flat().items() if k in MASK_KEYS}
    differ = [f"{k}: {run.data.params.get(k)} there, {param_text(v)} here" for k, v in ours.items()
              if run.data.params.get(k) != param_text(v)]
    return "; ".join(differ)


def param_text(value) -> str:
    """A config value as it is logged as an MLflow param."""
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def lottery_twin(cfg: Config) -> Config:
    """The lottery trajectory a reinit config takes its masks from: the same config in lottery mode."""
    return dataclasses.replace(cfg, retrain=dataclasses.replace(cfg.retrain, mode="lottery", masks_from=None))

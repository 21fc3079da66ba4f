"""The store's front door: ``Tracker``, a project's MLflow store (experiments, paged searches, the run of a config
and code, the run and artifact operations the commands use). One parent run per trajectory, one nested run per
round (``runs``)."""
from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from sddkit.config import Config
from sddkit.files import unwritable, unwritable_file, write_atomic
from sddkit.fingerprint import code_hash, param_text, run_label, trajectory_tags
from sddkit.paths import StoreURI, store_file_problem
from sddkit.relocation import artifact_home, local_path
from sddkit.listing import PARENT_METRICS, ROUND, TRAJECTORY, stored_summary
from sddkit.runs import INIT_DIGEST, TrajectoryRun, damaged, read_mask, read_weights, round_row
from sddkit.store import STORE_ERRORS, TrackingError, open_client

if TYPE_CHECKING:  # torch only where files are packed or read: `sddkit ls` and compare never do
    import torch

# The store's vocabulary, met here by its callers (some of it defined in ``runs`` and ``store``).
__all__ = ["INIT_DIGEST", "PARENT_METRICS", "ROUND", "RUN_ID", "SAFE_LITERAL", "STORE_ERRORS", "TRAJECTORY",
           "Tracker", "TrackingError", "TrajectoryRun", "literal", "load_mask", "load_weights", "param_text",
           "read_mask", "read_weights", "round_row", "stored_summary"]
SEARCH_PAGE = 1000  # runs per page of a search (a test shrinks it to see the paging work)
# The experiment holds model training, not GenAI traces (MLflow UIs choose their view by it).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
RESERVE_BYTES = 2**20  # Tracker.keep_reserve: room for a run's last few sqlite writes on a full disk
SAFE_LITERAL = re.compile(r"[^'\"`\\\x00-\x1f]*")  # no quote, backtick, backslash or control character
RUN_ID = re.compile(r"[0-9a-f]{32}")


def literal(value: str) -> str:
    """``value`` quoted for an MLflow filter string. The grammar has no escape for a quote, so a value with one
    is refused rather than spliced in (it could rewrite the filter)."""
    if not SAFE_LITERAL.fullmatch(value):
        raise TrackingError(f"{value!r}: quotes, backticks and backslashes cannot be searched for in MLflow")
    return f"'{value}'"


class Tracker:
    """The project's MLflow store. Nothing is opened or created until a command first reads or writes it:
    a command that stops on bad input leaves no store behind."""

    def __init__(self, uri: str, root: Path):
        self.uri, self.root = StoreURI(uri), root.resolve()
        self.db = self.uri.db
        problem = store_file_problem(uri)  # before MLflow opens it: it would replace a damaged file by an empty store
        if problem:
            raise TrackingError(problem)
        self._client = None

    @property
    def client(self):
        if self._client is None:
            self._client = open_client(self.uri)
        return self._client

    @property
    def exists(self) -> bool:
        """False for a local sqlite store not created yet (no need to create it to look)."""
        return self.db is None or self.db.exists()

    @property
    def artifact_home(self) -> Path | None:
        """mlruns/ beside a sqlite file (it moves with it), <root>/mlruns for a file store, None for a server."""
        if self.db is not None:
            return artifact_home(self.db)
        return self.root / "mlruns" if self.uri.startswith("file:") else None

    def check_writable(self) -> None:
        for folder in (f for f in (self.db.parent if self.db else None, self.artifact_home) if f is not None):
            problem = unwritable(folder)
            if problem:
                raise TrackingError(f"cannot write into {folder} ({problem}): the store {self.uri} needs it "
                                    f"writable; fix its permissions or mount, or free space, then rerun")
        problem = unwritable_file(self.db) if self.db is not None and self.db.is_file() else None
        if problem:
            raise TrackingError(f"cannot write to the tracking store {self.db} ({problem}); fix its permissions or "
                                f"mount, then rerun")

    def check_room(self, needed: int) -> None:
        folder = self.artifact_home
        free = shutil.disk_usage(folder if folder.exists() else folder.parent).free if folder else needed
        if free < needed:
            raise TrackingError(f"{folder} has {free / 2**20:.1f} MiB free, and this trajectory needs about "
                                f"{needed / 2**20:.1f} MiB for its rounds' masks and weights; free space "
                                f"(or point tracking.uri at a bigger disk), then rerun")

    @property
    def reserve_file(self) -> Path | None:
        return self.db.with_name(f".{self.db.name}.reserve") if self.db is not None else None

    def keep_reserve(self) -> None:
        """Hold RESERVE_BYTES beside a local store's database: when the disk fills mid-run, ``free_reserve``
        leaves sqlite the room to mark the run FAILED and release its lease."""
        if self.reserve_file is not None and not self.reserve_file.exists():
            with contextlib.suppress(OSError):  # no room even for that (check_room said so first)
                write_atomic(self.reserve_file, bytes(RESERVE_BYTES))

    def free_reserve(self) -> None:
        if self.reserve_file is not None:
            self.reserve_file.unlink(missing_ok=True)

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

    # ---- searches: every one pages, so a store past a page's worth never silently drops its oldest runs
    def search(self, experiment_ids: list[str], query: str, order_by: list[str] | None = None) -> list:
        return [run for page in self.pages(experiment_ids, query, order_by) for run in page]

    def pages(self, experiment_ids: list[str], query: str, order_by: list[str] | None = None,
              size: int | None = None):
        """``search``'s pages of at most ``size`` runs: a reader that only counts them holds one page in memory."""
        token = None
        while True:
            page = self.client.search_runs(experiment_ids, query, order_by=order_by,
                                           max_results=min(size or SEARCH_PAGE, SEARCH_PAGE), page_token=token)
            yield page
            token = page.token
            if not token:
                return

    def newest(self, experiment_ids: list[str], query: str):
        found = self.client.search_runs(experiment_ids, query, order_by=["attributes.start_time DESC"],
                                        max_results=1)
        return found[0] if found else None

    def trajectories(self, experiment: str, filter_string: str = "") -> list:
        """The experiment's trajectory runs matching ``filter_string``, newest first."""
        exp = self.experiment_id(experiment, create=False)
        if exp is None:
            return []
        query = f"tags.`sddkit.kind` = {literal(TRAJECTORY)}" + (f" and {filter_string}" if filter_string else "")
        return self.search([exp], query, order_by=["attributes.start_time DESC"])

    def round_runs(self, parent_id: str, finished_only: bool = True, experiment_id: str | None = None,
                   round_index: int | None = None) -> list:
        exp = experiment_id or self.run(parent_id).info.experiment_id
        query = f"tags.`mlflow.parentRunId` = {literal(parent_id)} and tags.`sddkit.kind` = {literal(ROUND)}"
        if round_index is not None:  # one round's runs: a look that stays cheap however many rounds there are
            query += f" and tags.`sddkit.round` = {literal(str(round_index))}"
        runs = [r for r in self.search([exp], query) if r.info.status == "FINISHED" or not finished_only]
        return sorted(runs, key=lambda r: int(r.data.tags["sddkit.round"]))

    def find_trajectory(self, cfg: Config, code: str):
        """The newest run of this config made by this code (to report or continue), or None for a new run.
        Raises TrackingError when the newest run of the config is unfinished and was started by other code:
        it is never continued (its rounds would mix two codes), and a silent new run would hide it."""
        runs = self.trajectories(cfg.tracking.experiment,
                                 f"tags.`sddkit.config_hash` = {literal(cfg.identity_hash())}")
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
                        lease=None, redo_from: int | None = None) -> TrajectoryRun:
        """The unfinished run of this config and code to continue, the finished one to report, or a new one.
        ``existing``: ``find_trajectory``'s answer already; ``lease``: checked before every write of a round."""
        code = code or code_hash()
        existing = None if force else (existing or self.find_trajectory(cfg, code))
        if existing is None:
            exp = self.experiment_id(cfg.tracking.experiment)
            run = self.client.create_run(exp, tags=trajectory_tags(cfg, self.root, code), run_name=run_label(cfg))
            self.complete_identity(run, cfg, code)
            return TrajectoryRun(self, run.info.run_id, lease)
        store = TrajectoryRun(self, existing.info.run_id, lease)
        store.check_rounds_kept(redo_from)  # before anything changes: a refused resume leaves the run as it was
        store.close_interrupted_rounds()  # only an owner may: a live owner's round is RUNNING too
        self.complete_identity(existing, cfg, code)  # a kill between creating the run and logging its params
        store.complete_parent_curve()
        if redo_from is not None:
            store.redo_from(redo_from)
        store.reopen()
        return store

    def complete_identity(self, run, cfg: Config, code: str) -> None:
        """Log the config params and provenance tags ``run`` lacks. Values it holds are kept: MLflow never changes
        a logged param, and keys outside the identity (device, threads) may differ between its processes."""
        params = {k: param_text(v) for k, v in cfg.flat().items() if k not in run.data.params}
        tags = {k: v for k, v in trajectory_tags(cfg, self.root, code).items() if k not in run.data.tags}
        self.log(run.info.run_id, params=params, tags=tags)

    # ---- run operations
    def run(self, run_id: str):
        return self.client.get_run(run_id)

    def find_run(self, run_id: str):
        """None where the store has no run of that ID."""
        try:
            return self.client.get_run(run_id)
        except MlflowException:
            return None

    def create_run(self, experiment_id: str, tags: dict[str, str], name: str, params: dict | None = None) -> str:
        run_id = self.client.create_run(experiment_id, tags=tags, run_name=name).info.run_id
        self.log(run_id, params=params)
        return run_id

    def log(self, run_id: str, metrics=(), params: dict | None = None, tags: dict[str, str] | None = None) -> None:
        """``metrics``: ``(key, value, step)`` triples, or MLflow metrics (their timestamps replaced by now). In
        batches of MLflow's limits: what fits one is one transaction."""
        stamp = int(time.time() * 1000)
        metrics = [Metric(m.key, float(m.value), stamp, m.step) if isinstance(m, Metric) else
                   Metric(m[0], float(m[1]), stamp, m[2]) for m in metrics]
        params = [Param(k, str(v)) for k, v in (params or {}).items()]
        tags = [RunTag(k, v) for k, v in (tags or {}).items()]
        batches = max(-(-len(metrics) // 1000), -(-len(params) // 100), -(-len(tags) // 100))
        for i in range(batches):  # MLflow takes at most 1000 metrics, 100 params and 100 tags a batch
            self.client.log_batch(run_id, metrics=metrics[i * 1000:(i + 1) * 1000],
                                  params=params[i * 100:(i + 1) * 100], tags=tags[i * 100:(i + 1) * 100])

    def log_metrics(self, run_id: str, values, tags: dict[str, str] | None = None) -> None:
        self.log(run_id, values, tags=tags)

    def metric_history(self, run_id: str, key: str) -> list:
        return self.client.get_metric_history(run_id, key)

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self.client.set_tag(run_id, key, value)

    def delete_tag(self, run_id: str, key: str) -> None:
        if key in self.run(run_id).data.tags:
            self.client.delete_tag(run_id, key)

    def set_status(self, run_id: str, status: str, quietly: bool = False) -> None:
        """FINISHED, KILLED, FAILED, or RUNNING again. ``quietly``: best effort, on the way out of an error."""
        try:
            if status == "RUNNING":
                self.client.update_run(run_id, status=status)
            else:
                self.client.set_terminated(run_id, status)
        except Exception:  # noqa: BLE001 - the original error is what the user needs to see
            if not quietly:
                raise

    def log_data_inputs(self, run_id: str, files) -> None:
        """Pinned data files (``prepare.DataFile``: path, md5, the md5 ``dvc.lock`` lists) as dataset inputs."""
        inputs = [DatasetInput(Dataset(name=f.path, digest=f.md5, source_type="dvc", source=f.path),
                               tags=[InputTag("mlflow.data.context", "training")]) for f in files]
        self.client.log_inputs(run_id, datasets=inputs)

    # ---- artifacts
    def artifact_paths(self, run_id: str, folder: str | None = None) -> set[str]:
        return {f.path for f in self.client.list_artifacts(run_id, folder)}

    def log_files(self, run_id: str, files: dict[str, bytes]) -> None:
        """Store each ``{artifact path: content}``; into a local artifact folder atomically: a kill never leaves
        half a file a resume would read."""
        local = local_path(self.run(run_id).info.artifact_uri)
        with tempfile.TemporaryDirectory() as tmp:
            for name, content in files.items():
                target = (local or Path(tmp)) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(target, content)
            if local is None:
                self.client.log_artifacts(run_id, tmp)

    def download(self, run_id: str, path: str, dst: str) -> Path:
        try:
            return Path(self.client.download_artifacts(run_id, path, dst))
        except STORE_ERRORS as exc:
            raise damaged(self, run_id, path, f"missing ({exc.__class__.__name__})") from exc

    def read_bytes(self, run_id: str, path: str) -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            return self.download(run_id, path, tmp).read_bytes()

    def read_torch(self, run_id: str, path: str) -> dict:
        import torch
        with tempfile.TemporaryDirectory() as tmp:
            local = self.download(run_id, path, tmp)
            try:
                state = torch.load(local, map_location="cpu", weights_only=True)
            except Exception as exc:  # torch raises many types for a damaged file
                raise damaged(self, run_id, path, f"corrupt or unreadable ({exc.__class__.__name__})") from exc
        if not isinstance(state, dict):
            raise damaged(self, run_id, path, f"not a state dict (a {type(state).__name__})")
        return state


# A round run's mask and weights by ID, for tests (notebooks use ``sddkit.load_mask``, which checks more).
def load_mask(run_id: str, uri: str | None = None) -> dict[str, torch.Tensor]:
    return read_mask(project_tracker(uri), run_id)


def load_weights(run_id: str, uri: str | None = None) -> dict[str, torch.Tensor]:
    return read_weights(project_tracker(uri), run_id)


def project_tracker(uri: str | None = None) -> Tracker:
    """Outside a project without a URI: an error, not a stray empty mlflow.db wherever this runs."""
    from sddkit.paths import missing_project, project_root, tracking_uri
    if missing_project(uri):
        raise TrackingError(f"{missing_project(uri)}; pass uri= or cd into the project")
    root = project_root()
    return Tracker(tracking_uri(uri, root), root)

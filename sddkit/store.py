"""The MLflow client on a tracking URI, and the store's one error type. A sqlite store is opened (created,
migrated) under a lock; a moved or copied project's store is relocated, or read through when read-only."""
from __future__ import annotations

import logging
import os
import sqlite3
import sys
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from sddkit import failures, relocation
from sddkit.files import locked
from sddkit.paths import sqlite_path, store_lock

# One bar per downloaded mask or weights file would bury the progress display.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# On a tracking server MLflow prints "View run … at" on stdout for every run ended, amid sddkit's tables.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
# A dead tracking server fails a call within seconds (failures.HTTP_BOUNDS), not after many silent minutes.
failures.bound_http_calls()
# MLflow logs every failed database call with its traceback before raising it; the raised error says it once.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)

STORE_ERRORS = (OSError, MlflowException)


class TrackingError(RuntimeError):
    """A run that cannot be found or read; the message says which and what to do."""


def open_client(uri: str) -> MlflowClient:
    """Processes starting together on a fresh sqlite store would each create and migrate its tables, and all but
    one crash: the first creates it under a lock file, the others then find it ready."""
    failures.note_store(uri)
    db = sqlite_path(uri)
    if db is None:
        return MlflowClient(tracking_uri=uri)
    # A read-only folder takes no lock file; nothing can be created or migrated there either.
    with locked(store_lock(db), required=False):
        home = moved_store(db)
        client = MlflowClient(tracking_uri=uri) if home is None else RelocatingClient(uri, home)
        client.search_experiments(max_results=1)
    return client


_read_only_noted: set[Path] = set()


def moved_store(db: Path) -> Path | None:
    """Point a moved project's store at its own artifacts (``relocation``), or refuse it. A store that cannot be
    written is not rewritten: the mlruns/ folder its artifacts are read from is returned (else None)."""
    try:
        try:
            relocation.relocate(db)
            return None
        except sqlite3.Error as exc:  # read-only, or locked for a minute
            if not read_only(db, exc):
                raise TrackingError(f"tracking store {db} belongs to a moved or copied project and cannot be "
                                    f"updated ({exc}); let the process holding it finish, then rerun") from exc
        home = relocation.readable_view(db)
    except relocation.StoreElsewhere as exc:
        raise TrackingError(str(exc)) from exc
    if home is not None and db not in _read_only_noted:
        _read_only_noted.add(db)
        print(f"{db}: a read-only copy of a moved project: its artifacts are read from {home} (the store is "
              f"not rewritten; anything that writes to it will fail)", file=sys.stderr)
    return home


def read_only(db: Path, exc: sqlite3.Error) -> bool:
    return "readonly" in str(exc) or not os.access(db, os.W_OK) or not os.access(db.parent, os.W_OK)


class RelocatingClient(MlflowClient):
    """A client on a store that cannot be written: locations frozen into the original project's mlruns/ are
    resolved into this one's (``home``) on every read. Writes fail in the store as usual."""

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


# ---------------------------------------------------------------- the tracking server's app (`sddkit server`)

def default_allowed_hosts() -> list[str]:
    from mlflow.server.security_utils import get_default_allowed_hosts
    return list(get_default_allowed_hosts())


def set_admin_password(ini: Path, user: str, password: str) -> None:
    """MLflow's basic auth takes the admin password only when it creates the user: on a later start, set it."""
    os.environ["MLFLOW_AUTH_CONFIG_PATH"] = str(ini)  # read when mlflow.server.auth is imported
    from mlflow.server.auth import auth_config
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore
    users = SqlAlchemyStore()
    users.init_db(auth_config.database_uri)
    if users.has_user(user, use_primary=True):
        users.update_user(user, password=password)

"""Where the project and its store live, resolved without heavy imports (the CLI needs it at start-up). The
tracking URI is resolved in one place (``tracking_uri``) and parsed once: a ``StoreURI`` carries its sqlite file."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

ROOT_MARKERS = ("params.yaml", "dvc.yaml", ".git")


def project_root() -> Path:
    """``find_project_root``, else the working directory (where ``sddkit run`` then makes the project)."""
    return find_project_root() or Path.cwd().resolve()


def find_project_root() -> Path | None:
    """``DVC_ROOT`` inside DVC stages, else the nearest folder up from here holding a ``ROOT_MARKERS``."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if any((folder / marker).exists() for marker in ROOT_MARKERS):
            return folder
    return None


def missing_project(uri: str | None = None) -> str | None:
    """Why there is no store to read here (the caller adds the remedy): outside a project without a tracking
    URI, the default store would be a new, empty mlflow.db right there."""
    if uri or os.environ.get("MLFLOW_TRACKING_URI") or find_project_root() is not None:
        return None
    markers = f"{', '.join(ROOT_MARKERS[:-1])} or {ROOT_MARKERS[-1]}"
    return f"no sddkit project here (no {markers} in {Path.cwd()} or any folder above it, and no DVC_ROOT)"


class StoreURI(str):
    """A tracking URI, parsed once: ``db`` is its sqlite file (None for a server or another database)."""

    db: Path | None

    def __new__(cls, text: str) -> StoreURI:
        if isinstance(text, StoreURI):
            return text
        uri = super().__new__(cls, text)
        path = text[len("sqlite:///"):].split("?", 1)[0] if text.startswith("sqlite:///") else ""
        uri.db = None if path in ("", ":memory:") else Path(path)  # SQLAlchemy's form: 4 slashes when absolute
        return uri


def tracking_uri(config_uri: str | None = None, root: Path | None = None) -> StoreURI:
    """``store_uri``, or while ``sddkit server`` serves that store, the server's URI (this machine's commands
    then write through it, as its workers do)."""
    uri = store_uri(config_uri, root)
    server = live_server(uri.db) if uri.db is not None else None
    return StoreURI(server["uri"]) if server else uri


def store_uri(config_uri: str | None = None, root: Path | None = None) -> StoreURI:
    """``MLFLOW_TRACKING_URI`` if set, else ``tracking.uri``, else sqlite mlflow.db at the project root."""
    return StoreURI(os.environ.get("MLFLOW_TRACKING_URI") or config_uri
                    or f"sqlite:///{(root or project_root()) / 'mlflow.db'}")


def server_marker(db: Path) -> Path:
    """The file ``sddkit server`` keeps beside the sqlite store ``db`` while it serves it."""
    return db.with_name(f".{db.name}.server.json")


def store_lock(db: Path) -> Path:
    """The lock every process takes before changing a sqlite store's layout or locations."""
    return db.with_name(f".{db.name}.lock")


def live_server(db: Path) -> dict | None:
    """What the marker of a live ``sddkit server`` on ``db`` says (pid, started, host, uri). A dead server's
    is ignored (``relocation`` removes it); one written on another machine cannot be checked, and counts."""
    try:
        server = json.loads(server_marker(db).read_text())
        alive = server["host"] != socket.gethostname() or process_started(server["pid"]) == server["started"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # none, or not one sddkit wrote (it writes them whole): nothing to trust
    return server if alive else None


def process_started(pid: int) -> float | None:
    """When the live process ``pid`` started, or None (a zombie too): with the pid, it names one process."""
    import psutil  # here: the CLI imports this module at start-up
    try:
        proc = psutil.Process(pid)
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc.create_time()
    except psutil.Error:
        return None


SQLITE_HEADER = b"SQLite format 3\x00"


def sqlite_path(uri: str) -> Path | None:
    return StoreURI(uri).db


def store_file_problem(uri: str) -> str | None:
    """What is wrong with a sqlite store file that is not a database. Checked before MLflow opens it: it would
    put a new, empty store in its place and orphan every artifact the old one indexed."""
    db = sqlite_path(uri)
    if db is None or not (db.exists() or db.is_symlink()):
        return None
    if not db.is_file():
        return (f"{db} is not a file (a {'folder' if db.is_dir() else 'special file'}); the tracking store must be "
                f"the sqlite file there: move that aside, or set tracking.uri elsewhere")
    with open(db, "rb") as f:
        header = f.read(len(SQLITE_HEADER))
    if header == SQLITE_HEADER:
        return None
    what = "empty (0 bytes)" if not header else "not an SQLite database (its header is overwritten)"
    runs = db.parent / "mlruns"
    held = f"; the artifacts it indexed stay in {runs}" if runs.is_dir() else ""
    return (f"tracking store {db} is {what}: restore it from a backup (or a copy of the project), or move it aside "
            f"to start a new, empty store{held}")

"""A store that fails, in one line (a tracking server that does not answer or asks for credentials, a full
disk): ``explain``, asked by the CLI, the runner and the API alike. Standard library only (CLI start-up)."""
from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

# MLflow's own HTTP defaults retry a failing call 7 times with a backoff factor of 2 (about 4 minutes of
# back-off), each try waiting up to 120 s: a killed tracking server held a run silent for over 10 minutes.
# These bound one call at about 15 s against a dead server (connection refused) and about 2 minutes against a
# frozen one, and still ride out a server restart of ~10 s. Set in the environment, they win.
HTTP_BOUNDS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "20", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4",
               "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
_last_store: list[str] = []  # the store this process opened last (store.open_client): where a failure was


def bound_http_calls() -> None:
    for key, value in HTTP_BOUNDS.items():
        os.environ.setdefault(key, value)


def note_store(uri: str) -> None:
    _last_store[:] = [uri]


def chain(exc: BaseException):
    """``exc`` and the exceptions it was raised from or while handling, outermost first."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


# ---------------------------------------------------------------- what went wrong

SILENT = re.compile(r"API request to (\S+?) failed with (?:timeout )?exception")


def silent_server(exc: BaseException) -> tuple[str, str] | None:
    """(the server's address, why) when MLflow's HTTP client gave up on a tracking server, else None."""
    for e in chain(exc):
        found = SILENT.search(str(e))
        if found:
            text = str(e).lower()
            why = ("connection refused" if "refused" in text else
                   "no answer within MLFLOW_HTTP_REQUEST_TIMEOUT" if "timed out" in text or "timeout" in text else
                   "connection lost")
            server = re.match(r"[a-z+]+://[^/]+", found.group(1))  # http://host:port of the request's URL
            return server.group(0) if server else found.group(1), why
    return None


def full_disk(exc: BaseException) -> Path | str | None:
    """Where a write failed on a full disk: the file an OSError names (else ``""``), ``"database"`` for
    sqlite's "database or disk is full"; None when the disk is not the problem."""
    for e in chain(exc):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return Path(e.filename) if isinstance(e.filename, (str, Path)) and e.filename else ""
        if "database or disk is full" in str(e):
            return "database"
    return None


# ---------------------------------------------------------------- the line

def explain(exc: BaseException, uri: str | None = None, folder: Path | None = None,
            needed: int | None = None) -> str | None:
    """The one line for a store failure, or None (anything else keeps its traceback). ``uri``: the store in use
    (else the last opened); ``folder``: a local store's, for sqlite's full disk; ``needed``: bytes still to write."""
    uri = uri or (_last_store[0] if _last_store else os.environ.get("MLFLOW_TRACKING_URI")) or "the tracking store"
    silent = silent_server(exc)
    if silent is not None:
        return (f"the tracking server at {silent[0]} is not answering ({silent[1]}); start it again (`sddkit "
                f"server`) or check MLFLOW_TRACKING_URI")
    codes = {"UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403}  # no credentials, or no rights
    status = next((codes[e.error_code] for e in chain(exc) if getattr(e, "error_code", None) in codes), None)
    if status is not None:
        return refused(uri, status)
    where = full_disk(exc)
    if where is not None:
        if isinstance(where, Path):
            folder = where
        elif folder is None and uri.startswith("sqlite:///"):
            folder = Path(uri[len("sqlite:///"):].split("?", 1)[0]).parent
        return disk_full_line(folder, needed) if folder else f"the disk of the tracking store {uri} is full"
    return None


def refused(uri: str, status: int) -> str:
    user = os.environ.get(CREDENTIALS[0])
    if status == 403:
        return (f"the tracking server at {uri} does not let user {user or '(none)'} do this (403 permission "
                f"denied): use the admin's credentials, which `sddkit server --auth` printed")
    if user and os.environ.get(CREDENTIALS[1]):
        return (f"the tracking server at {uri} refused the credentials of user {user} (401): set "
                f"{' and '.join(CREDENTIALS)} to those `sddkit server --auth` printed")
    return (f"the tracking server at {uri} asks for credentials (401): set {' and '.join(CREDENTIALS)} to those "
            f"`sddkit server --auth` printed (export {CREDENTIALS[0]}=admin {CREDENTIALS[1]}=…)")


def disk_full_line(where: Path, needed: int | None) -> str:
    folder = Path(where) if Path(where).is_dir() else Path(where).parent
    while not folder.exists() and folder != folder.parent:  # a failed write may have left no file
        folder = folder.parent
    mount = folder.resolve()
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    more = f", about {needed / 2**20:.1f} MiB more needed to finish" if needed else ""
    return (f"the disk of {folder} (mounted at {mount}) is full: {shutil.disk_usage(folder).free / 2**20:.1f} MiB "
            f"free{more}; free space (or point tracking.uri at a bigger disk)")

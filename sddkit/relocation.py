"""A project you can move: a sqlite store's artifact locations follow the store file.

MLflow freezes absolute artifact locations into its private tables. Before the store is opened, every location
under another ``…/mlruns`` is rewritten to this store's ``mlruns/`` (if that holds the runs' artifacts: a ``cp -a``
or ``mv`` of the project), else the store is refused in one line. While ``sddkit server`` serves the store, its
locations read ``mlflow-artifacts:/…``. Only sqlite3 and the standard library: ``sddkit ui`` uses it too."""
from __future__ import annotations

import contextlib
import shlex
import sqlite3
import sys
import urllib.parse
import urllib.request
from pathlib import Path

from sddkit.paths import live_server, server_marker

HOME = "mlruns"
# (table, key column, location column): where MLflow keeps artifact locations of what sddkit stores.
LOCATIONS = (("experiments", "experiment_id", "artifact_location"), ("runs", "run_uuid", "artifact_uri"))
SERVED = "mlflow-artifacts:/"  # a location the tracking server resolves against its --artifacts-destination
# The MLflow releases whose schema these tables and columns were checked against (pyproject pins the same).
MLFLOW_SUPPORTED = ">=3.17,<3.18"


class StoreElsewhere(RuntimeError):
    """The store cannot be opened here (its artifacts are in another project's mlruns/, or its schema is not
    one sddkit knows); the message says what to do."""


def artifact_home(db: Path) -> Path:
    return db.resolve().parent / HOME


def local_path(location: str | None) -> Path | None:
    """The folder of a ``file:`` URI or plain absolute path; None for anything else (a server, a bucket)."""
    if not location:
        return None
    parsed = urllib.parse.urlparse(location)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    return Path(location) if parsed.scheme == "" and location.startswith("/") else None


def moved_from(location: str | None, home: Path) -> tuple[Path, Path] | None:
    """(the other ``mlruns`` folder ``location`` lies in, its path inside), or None when it lies under ``home``
    already or in no folder named mlruns."""
    path = local_path(location)
    if path is None or HOME not in path.parts:
        return None
    cut = len(path.parts) - path.parts[::-1].index(HOME)
    old = Path(*path.parts[:cut])
    return None if old == home else (old, Path(*path.parts[cut:]))


def moved_location(location: str | None, home: Path) -> str | None:
    """``location`` moved into ``home`` (in the same form) when it lies under another mlruns/, else None."""
    moved = moved_from(location, home)
    if moved is None:
        return None
    new = home / moved[1]
    return new.as_uri() if location.startswith("file:") else str(new)


def moved_runs(con: sqlite3.Connection, home: Path) -> list[tuple[str, Path, Path]]:
    """(run ID, the other mlruns/ folder, the run's folder in ``home``) of each run located under another one."""
    return [(run_id, moved[0], (home / moved[1]).parent) for run_id, location in
            con.execute("select run_uuid, artifact_uri from runs") if (moved := moved_from(location, home))]


def relocate(db: Path) -> int:
    """Rewrite the locations of the store ``db`` under another project's mlruns/ into this one's; returns how
    many. Run it under the store's lock. StoreElsewhere, with nothing rewritten, when a run's artifacts are not
    in this project's mlruns/ (a store copied without them)."""
    if not db.is_file():
        return 0
    home = artifact_home(db)
    with sqlite3.connect(db, timeout=60) as con:
        if not has_locations(con, db):
            return 0  # not created yet: MLflow creates it with this process's locations
        # A server killed -9 left its marker (a live one is serving: its locations must stay as they are).
        gone = server_marker(db).exists() and live_server(db) is None
        served_back = back_from_server(con, db, home) if gone else 0
        runs = moved_runs(con, home)
        check_copied(db, home, runs)
        count = rewrite(con, lambda location: moved_location(location, home))
    if runs:  # an experiment alone can differ without a move (MLflow's Default one, made in the caller's folder)
        olds = ", ".join(sorted({str(old) for _, old, _ in runs}))
        print(f"{db}: the project was moved or copied; the artifact locations of {len(runs)} runs now point "
              f"into {home} instead of {olds}", file=sys.stderr)
    return served_back + count


def read_moved_runs(db: Path) -> list | None:
    """``moved_runs`` of ``db``, read without writing; None before MLflow has made its tables."""
    with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)) as con:
        return moved_runs(con, artifact_home(db)) if has_locations(con, db) else None


def in_place(db: Path) -> bool:
    """Whether ``db`` has nothing to relocate (no run's artifacts under another mlruns/, no server marker):
    `sddkit ls` then reads it by SQL, else through MLflow, which relocates."""
    if server_marker(db).exists():
        return False
    try:
        return read_moved_runs(db) == []
    except (sqlite3.Error, StoreElsewhere):
        return False


def readable_view(db: Path) -> Path | None:
    """For a read-only copy of a moved project: the mlruns/ folder to read its artifacts from (each location
    moved on the fly, ``moved_location``), or None. Checked as ``relocate`` checks."""
    runs = read_moved_runs(db) if db.is_file() else None
    if not runs:
        return None
    check_copied(db, artifact_home(db), runs)
    return artifact_home(db)


def has_locations(con: sqlite3.Connection, db: Path) -> bool:
    """Whether MLflow has made its tables; StoreElsewhere, before anything is written, where one lacks a column
    this module reads or writes (a schema of another MLflow)."""
    tables = {row[0] for row in con.execute("select name from sqlite_master where type = 'table'")}
    if not {table for table, _, _ in LOCATIONS} <= tables:
        return False
    for table, *columns in LOCATIONS:
        have = {row[1] for row in con.execute(f"pragma table_info({table})")}
        for column in columns:
            if column not in have:
                raise StoreElsewhere(f"tracking store {db}: MLflow's table {table} has no column {column}, which "
                                     f"sddkit rewrites when a project moves; sddkit supports mlflow"
                                     f"{MLFLOW_SUPPORTED} (installed: {mlflow_version()}): install "
                                     f"'mlflow{MLFLOW_SUPPORTED}' and open the store with it")
    return True


def mlflow_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("mlflow")
    except PackageNotFoundError:
        return "none"


def rewrite(con: sqlite3.Connection, new_location) -> int:
    count = 0
    for table, key, column in LOCATIONS:
        rows = [(new, value) for value, location in con.execute(f"select {key}, {column} from {table}")
                if (new := new_location(location)) is not None]
        if rows:
            con.executemany(f"update {table} set {column} = ? where {key} = ?", rows)
        count += len(rows)
    return count


def check_copied(db: Path, home: Path, runs: list[tuple[str, Path, Path]]) -> None:
    """StoreElsewhere when a moved run's folder is only in the other mlruns/, or none of them is in ``home`` (a
    run that never stored a file has no folder anywhere: that alone is no reason to refuse)."""
    present = [folder.is_dir() for _, _, folder in runs]
    left_behind = [(value, old) for (value, old, folder), here in zip(runs, present)
                   if not here and (old / folder.relative_to(home)).is_dir()]
    if left_behind or (runs and not any(present)):
        value, old = left_behind[0] if left_behind else runs[0][:2]
        # ``cp -a old home`` onto an existing home would nest mlruns/mlruns
        copy = (f"cp -a {shlex.quote(str(old))} {shlex.quote(str(home))}" if not home.exists() else
                f"cp -an {shlex.quote(str(old) + '/.')} {shlex.quote(str(home) + '/')}")
        raise StoreElsewhere(f"tracking store {db} keeps its artifacts in {old}, outside this project, and "
                             f"{home} lacks them (run {value}): copy them with `{copy}`, then "
                             f"rerun; or set tracking.uri to the store beside {old}")


# ---------------------------------------------------------------- a store served by `sddkit server`

def set_served(db: Path, served: bool) -> int:
    """Rewrite the locations of ``db`` under its mlruns/ to ``mlflow-artifacts:/…`` for a server that starts, or
    back (``served=False``, the marker removed) for one that stops; returns how many. Run it under the store's
    lock, after ``relocate``."""
    if not db.is_file():
        return 0
    home = artifact_home(db)
    with sqlite3.connect(db, timeout=60) as con:
        if not has_locations(con, db):
            return 0
        if not served:
            return back_from_server(con, db, home)
        return rewrite(con, lambda location: served_location(location, home))


def back_from_server(con: sqlite3.Connection, db: Path, home: Path) -> int:
    """Turn the served locations of ``db`` back into ``file:`` ones in ``home``, remove the server's marker."""
    count = rewrite(con, lambda location: local_location(location, home))
    con.commit()  # before the marker goes: a crash in between leaves the marker, and the next open redoes it
    try:
        server_marker(db).unlink(missing_ok=True)
    except OSError:
        pass  # a read-only folder: sqlite refused the rewrite above already
    return count


def served_location(location: str | None, home: Path) -> str | None:
    """``mlflow-artifacts:/<path in home>`` for a local location under ``home``, else None."""
    path = local_path(location)
    if path is None or not path.is_relative_to(home):
        return None
    inside = path.relative_to(home).as_posix()
    return SERVED + ("" if inside == "." else inside)


def local_location(location: str | None, home: Path) -> str | None:
    """The ``file:`` URI in ``home`` of a served location (one naming a host is another server's), else None."""
    if not location or not location.startswith(SERVED) or location.startswith(SERVED + "/"):
        return None
    inside = urllib.parse.unquote(location[len(SERVED):])
    return (home / inside).as_uri() if inside else home.as_uri()

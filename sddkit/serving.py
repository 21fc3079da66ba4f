"""An ``mlflow server`` on the project's store, as ``sddkit ui`` and ``sddkit server`` start it: in a process
group of its own led by a guard (``lifeline``), so no server outlives the command, kill -9 included. No mlflow
or torch here: ``sddkit ui`` only starts a server."""
from __future__ import annotations

import errno
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from sddkit import lifeline, relocation
from sddkit.files import locked, unwritable, unwritable_file
from sddkit.paths import sqlite_path, store_file_problem, store_lock

LOOPBACK = "127.0.0.1"
SERVABLE = ("sqlite:", "file:", "postgresql", "mysql", "mssql")


class ServeError(RuntimeError):
    """The store cannot be served; the message says why and what to do."""


def run(command: list[str], root: Path, url: str, on_ready: Callable[[str], None], env: dict[str, str] | None = None,
        ready_timeout: float = 180.0) -> int:
    """Run the guarded server ``command`` until Ctrl-C, SIGTERM or SIGHUP (exit code 0) or its own exit (its
    code); ``on_ready(url)`` once ``url`` answers. The server's group is gone when this returns."""
    previous = {sig: signal.signal(sig, _exit_on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    server = None
    try:
        # -P: the guard runs as a plain file, importing nothing from its folder. Its stdout goes to stderr: the
        # command's stdout holds only what it prints for use.
        server = subprocess.Popen([sys.executable, "-P", lifeline.__file__, str(os.getpid()), *command], cwd=root,
                                  env={**os.environ, **(env or {}), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                                  start_new_session=True, stdout=sys.stderr.fileno())
        wait_ready(server, url, ready_timeout)
        on_ready(url)
        code = server.wait()
        print(f"mlflow server stopped by itself (exit code {code})", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        return 0
    finally:
        if server is not None:  # its whole group: the guard leads it
            lifeline.stop_group(server.pid, 10.0)
            server.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def mlflow_server(uri: str, root: Path, host: str, port: int, command: str, *extra: str) -> list[str]:
    """``mlflow server`` on ``uri``, one worker, artifacts in mlruns/ beside the store; said now, not after minutes
    of retries, where a sqlite store is not a database (the server would make an empty one) or not writable (the
    server writes even to browse: it checks the schema, sqlite keeps a journal). A moved project's store is
    pointed at its own artifacts first (``relocation``), as every command that opens it does."""
    if not uri.startswith(SERVABLE):
        raise ServeError(f"the tracking store {uri} is not a database this command can serve; "
                         f"if it is a server already, use it directly (in a browser, or as MLFLOW_TRACKING_URI)")
    problem = store_file_problem(uri)
    if problem:
        raise ServeError(problem)
    db = sqlite_path(uri)
    if db is not None:
        db = root / db  # an absolute path stays as it is
        where, problem = db.parent, unwritable(db.parent)
        if problem is None and db.exists():
            where, problem = db, unwritable_file(db)
        if problem is not None:
            raise ServeError(f"{where} is not writable ({problem}), and mlflow server must write there even to "
                             f"browse {db.name}: make it writable, or copy the project to a writable folder and "
                             f"run `{command}` there")
        with locked(store_lock(db), required=False):
            try:
                relocation.relocate(db)
            except (relocation.StoreElsewhere, sqlite3.Error) as exc:
                raise ServeError(str(exc)) from exc
    home = relocation.artifact_home(db) if db is not None else root / "mlruns"
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host,
            "--port", str(port), "--workers", "1", "--artifacts-destination", str(home), *extra]


def wait_ready(server: subprocess.Popen, url: str, timeout: float) -> None:
    """Return once ``url``'s ``/health`` answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise ServeError(f"mlflow server exited with code {server.returncode} before answering "
                             f"(its messages are above)")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.3)
    raise ServeError(f"mlflow server gave no answer on {url} within {timeout:.0f} s")


def checked_port(port: int | None, host: str = LOOPBACK) -> int:
    """``port`` if it is free on ``host``, or a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As uvicorn binds it: a port whose last connections linger in TIME_WAIT (a server just stopped) is
        # free; one with a listener on it still is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port or 0))
        except OSError as exc:
            if port is None or exc.errno != errno.EADDRINUSE:
                raise ServeError(f"--host {host}: cannot listen there ({exc.strerror})") from exc
            raise ServeError(f"--port {port}: already in use on {host}; pick another or leave --port "
                             f"out for a free one") from exc
        return probe.getsockname()[1]


def _exit_on_signal(signum, frame) -> None:
    raise SystemExit(128 + signum)

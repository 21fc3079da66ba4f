"""``sddkit ui``: the MLflow UI on the project's one store, kept light and local.

``mlflow server`` runs in a process group of its own (127.0.0.1, one worker, MLflow's job runner off), led by
a guard (``sddkit.lifeline``). Ctrl-C, SIGTERM, SIGHUP (a closed terminal) or any error in here terminates
that whole group; if this command is killed -9, the guard ends it. So no server outlives the command.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import webbrowser
from pathlib import Path

from rich.console import Console

import sqlite3

from sddkit import lifeline, relocation
from sddkit.files import locked, unwritable, unwritable_file
from sddkit.paths import sqlite_path, store_file_problem

HOST = "127.0.0.1"
console = Console(stderr=True)


class ServeError(RuntimeError):
    """The UI cannot be served; the message says why and what to do. (Not tracking's TrackingError: that
    would import mlflow and torch into a command that only starts a server.)"""


def serve(uri: str, root: Path, port: int | None = None, ready_timeout: float = 180.0, experiment: str = "sddkit",
          open_browser: bool = False) -> int:
    """Run the server until Ctrl-C (exit code 0) or until it exits on its own (its exit code). Prints the
    link to ``experiment``'s trajectories (``trajectories_link``), and opens it in a browser if asked."""
    port = checked_port(port)
    check_store_writable(uri, root)
    follow_moved_project(uri, root)
    previous = {sig: signal.signal(sig, _exit_on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    server = None
    try:
        server = start(uri, root, port)
        url = wait_ready(server, port, ready_timeout)
        link = trajectories_link(url, experiment)
        console.print(f"MLflow UI of {uri} at [bold]{url}[/] (Ctrl-C stops it); the trajectories of experiment "
                      f"{experiment!r}:", highlight=False, soft_wrap=True)
        print(link, flush=True)
        if open_browser:
            webbrowser.open(link)
        code = server.wait()
        console.print(f"mlflow server stopped by itself (exit code {code})", highlight=False)
        return code
    except KeyboardInterrupt:
        return 0
    finally:
        if server is not None:
            stop(server)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# What MLflow 3.17's UI reads from the link (its experiment page routes): ``workflowType=machine_learning``
# shows the training runs rather than the GenAI overview, ``searchFilter`` fills the runs table's search box.
TRAJECTORY_FILTER = "tags.`sddkit.kind` = 'trajectory'"
# The experiment's kind (tracking.EXPERIMENT_KIND), for UIs that choose the view by it. 3.17.2's, which has the
# GenAI | Model training switch, chooses by the link's workflowType, else the browser's last choice of the switch.
ML_KIND = ("mlflow.experimentKind", "custom_model_development")


def trajectories_link(url: str, experiment: str) -> str:
    """The UI's runs table of ``experiment`` in the machine-learning view, filtered to trajectories (round runs
    stay nested under theirs). The experiment's own page when the server does not know it (yet): ``url``."""
    found = api(url, "experiments/get-by-name?" + urllib.parse.urlencode({"experiment_name": experiment}))
    if found is None:
        return url
    exp = found["experiment"]
    if not any(t.get("key") == ML_KIND[0] for t in exp.get("tags", [])):  # created by older sddkit
        api(url, "experiments/set-experiment-tag",
            {"experiment_id": exp["experiment_id"], "key": ML_KIND[0], "value": ML_KIND[1]})
    query = urllib.parse.urlencode({"workflowType": "machine_learning", "searchFilter": TRAJECTORY_FILTER},
                                   quote_via=urllib.parse.quote)
    return f"{url}/#/experiments/{exp['experiment_id']}/runs?{query}"


def api(url: str, path: str, body: dict | None = None) -> dict | None:
    """One call of the server's REST API (POST when ``body`` is given); None when it answers with an error."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{url}/api/2.0/mlflow/{path}", data=data,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"{}")
    except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
        return None


def follow_moved_project(uri: str, root: Path) -> None:
    """A copied or moved project's store is pointed at its own artifacts first (``relocation``), as every
    command that opens it does: the UI must not show, or write into, the original project's mlruns/."""
    db = sqlite_path(uri)
    if db is None:
        return
    db = root / db
    with locked(db.with_name(f".{db.name}.lock"), required=False):
        try:
            relocation.relocate(db)
        except (relocation.StoreElsewhere, sqlite3.Error) as exc:
            raise ServeError(str(exc)) from exc


def server_command(uri: str, root: Path, port: int) -> list[str]:
    # Artifacts of experiments created from the UI land beside the store too, never in the working directory.
    db = sqlite_path(uri)
    home = relocation.artifact_home(root / db) if db is not None else root / "mlruns"
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", HOST,
            "--port", str(port), "--workers", "1", "--artifacts-destination", str(home)]


def start(uri: str, root: Path, port: int) -> subprocess.Popen:
    if not uri.startswith(("sqlite:", "file:", "postgresql", "mysql", "mssql")):
        raise ServeError(f"the tracking store {uri} is not a database this command can serve; "
                            f"if it is a server already, open it in a browser")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    # The guard leads the new session's process group and ends it when this process dies, kill -9 included
    # (mlflow server starts uvicorn as a child of its own). -P: run it as a plain file, importing nothing
    # from its folder.
    guarded = [sys.executable, "-P", lifeline.__file__, str(os.getpid()), *server_command(uri, root, port)]
    return subprocess.Popen(guarded, cwd=root, env=env, start_new_session=True)


def check_store_writable(uri: str, root: Path) -> None:
    """A sqlite store must be a database (else mlflow server would create a new, empty one in its place) and
    writable even to be browsed (mlflow server checks its schema, sqlite keeps a journal next to the file):
    say so now, instead of the server retrying for minutes in silence."""
    problem = store_file_problem(uri)
    if problem:
        raise ServeError(problem)
    db = sqlite_path(uri)
    if db is None:
        return
    db = root / db  # an absolute path stays as it is
    where, problem = db.parent, unwritable(db.parent)
    if problem is None and db.exists():
        where, problem = db, unwritable_file(db)
    if problem is not None:
        raise ServeError(f"{where} is not writable ({problem}), and mlflow server must write there even to "
                         f"browse {db.name}: make it writable, or copy the project to a writable folder and run "
                         f"`sddkit ui` there")


def wait_ready(server: subprocess.Popen, port: int, timeout: float) -> str:
    """The UI's URL once ``/health`` answers; an error if the server exits or stays silent."""
    url, deadline = f"http://{HOST}:{port}", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise ServeError(f"mlflow server exited with code {server.returncode} before answering "
                                f"(its messages are above)")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return url
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.3)
    raise ServeError(f"mlflow server gave no answer on {url} within {timeout:.0f} s")


def stop(server: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM to the server's process group, SIGKILL after ``grace`` seconds (workers included)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            break  # the whole group is gone
        try:
            server.wait(grace)
            _wait_group_gone(server.pid, grace)
            break
        except subprocess.TimeoutExpired:
            continue


def _wait_group_gone(pgid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise subprocess.TimeoutExpired(f"process group {pgid}", timeout)


def checked_port(port: int | None) -> int:
    """``port`` if it is free on loopback (else a clear error), or a free one."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As uvicorn binds it: a port whose last connections linger in TIME_WAIT (a UI just stopped) is free;
        # one with a listener on it still is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port or 0))
        except OSError as exc:
            raise ServeError(f"--port {port}: already in use on {HOST}; pick another or leave --port "
                                f"out for a free one") from exc
        return probe.getsockname()[1]


def _exit_on_signal(signum, frame) -> None:
    raise SystemExit(128 + signum)

"""``sddkit ui``: the MLflow UI on the project's one store, kept light and local.

``mlflow server`` runs as a child in its own process group (127.0.0.1, one worker, MLflow's job runner off);
Ctrl-C, SIGTERM or any error in here terminates that whole group, so no server outlives the command.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from rich.console import Console

HOST = "127.0.0.1"
console = Console(stderr=True)


class ServeError(RuntimeError):
    """The UI cannot be served; the message says why and what to do. (Not tracking's TrackingError: that
    would import mlflow and torch into a command that only starts a server.)"""


def serve(uri: str, root: Path, port: int | None = None, ready_timeout: float = 180.0) -> int:
    """Run the server until Ctrl-C (exit code 0) or until it exits on its own (its exit code)."""
    port = checked_port(port)
    server = start(uri, root, port)
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        url = wait_ready(server, port, ready_timeout)
        console.print(f"MLflow UI of {uri} at [bold]{url}[/] (Ctrl-C stops it)", highlight=False)
        print(url, flush=True)
        code = server.wait()
        console.print(f"mlflow server stopped by itself (exit code {code})", highlight=False)
        return code
    except KeyboardInterrupt:
        return 0
    finally:
        stop(server)
        signal.signal(signal.SIGTERM, previous)


def server_command(uri: str, root: Path, port: int) -> list[str]:
    # Artifacts of experiments created from the UI land in <root>/mlruns too, never in the working directory.
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", HOST,
            "--port", str(port), "--workers", "1", "--artifacts-destination", str(root / "mlruns")]


def start(uri: str, root: Path, port: int) -> subprocess.Popen:
    if not uri.startswith(("sqlite:", "file:", "postgresql", "mysql", "mssql")):
        raise ServeError(f"the tracking store {uri} is not a database this command can serve; "
                            f"if it is a server already, open it in a browser")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return subprocess.Popen(server_command(uri, root, port), cwd=root, env=env, start_new_session=True)


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
        try:
            probe.bind((HOST, port or 0))
        except OSError as exc:
            raise ServeError(f"--port {port}: already in use on {HOST}; pick another or leave --port "
                                f"out for a free one") from exc
        return probe.getsockname()[1]


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)

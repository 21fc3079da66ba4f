"""`sddkit server` for real: a tracking server on the project's store, a worker logging a trajectory through it
from another folder, the store read locally once it stops; refusals, basic auth, kill -9, a stale marker."""
from __future__ import annotations

import base64
import json
import os
import queue
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

import sddkit
from sddkit import lease, paths
from sddkit.cli import main
from test_ui import accepts, group_members, servers_on

TINY_RUN = ["--set", "data.train_size=500", "--set", "data.test_size=200", "--set", "train.epochs=1",
            "--set", "prune.rounds=1", "--set", "train.milestones=[]", "--set", "train.threads=1"]
PASSWORD = "a-long-test-password"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without a store or DVC stage of its own (PYTHONPATH stays: the worktree's package)."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "SDDKIT_SERVER"))}
    return {**keep, "SDDKIT_NO_DOWNLOAD": "1", **extra}


def start_server(project, tmp_path, *args: str, **env: str) -> tuple[int, subprocess.Popen]:
    """`sddkit server` on a free port in its own session, its stderr in server.log; (port, process)."""
    port = free_port()
    log = open(tmp_path / "server.log", "a")
    return port, subprocess.Popen([sys.executable, "-m", "sddkit.cli", "server", "--port", str(port), *args],
                                  cwd=project, env=clean_env(**env), stdout=subprocess.PIPE, stderr=log, text=True,
                                  start_new_session=True)


def workers_line(stdout, timeout: float = 180.0) -> str | None:
    """The line `sddkit server` prints on stdout once it serves."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True).start()
    try:
        while not (line := lines.get(timeout=timeout)).startswith("workers: "):
            pass
        return line.strip()
    except queue.Empty:
        return None


def stop_and_clean(server: subprocess.Popen, port: int) -> None:
    for pid in servers_on(port) + ([server.pid] if server.poll() is None else []):
        os.kill(pid, signal.SIGKILL)
    server.wait(timeout=30)


def locations(db) -> list[str]:
    with sqlite3.connect(db) as con:
        return [row[0] for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri"))
                for row in con.execute(f"select {column} from {table}")]


def call(url: str, path: str, password: str | None = None) -> int:
    """The HTTP status of a GET of the REST API, with basic auth as admin when ``password`` is given."""
    request = urllib.request.Request(f"{url}/api/2.0/mlflow/{path}")
    if password is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"admin:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_worker_elsewhere_logs_through_the_server_and_the_store_reads_locally_after(project, tmp_path):
    db = project / "mlflow.db"
    port, server = start_server(project, tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        assert workers_line(server.stdout) == f"workers: MLFLOW_TRACKING_URI={url}", (tmp_path / "server.log").read_text()
        assert paths.tracking_uri(None, project) == url  # this machine's commands go through it too
        assert all(loc.startswith("mlflow-artifacts:/") for loc in locations(db))  # the experiment, made up front

        worker = tmp_path / "worker"  # another machine: none of the project's files are at hand
        worker.mkdir()
        done = subprocess.run([sys.executable, "-m", "sddkit.cli", "run", *TINY_RUN], cwd=worker,
                              env=clean_env(MLFLOW_TRACKING_URI=url), capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert not (worker / "mlruns").exists() and not (worker / "mlflow.db").exists()
        client = MlflowClient(url)
        experiment = client.get_experiment_by_name("sddkit").experiment_id
        rounds = client.search_runs([experiment], "tags.`sddkit.kind` = 'round'")
        assert len(rounds) == 2
        round_id = rounds[0].info.run_id
        served = sddkit.load_mask(round_id, uri=url)
        assert (project / "mlruns" / round_id / "artifacts" / "mask.npz").is_file()  # proxied into the project
        assert all(loc.startswith("mlflow-artifacts:/") for loc in locations(db))

        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=60) == 0
        assert servers_on(port) == [] and not paths.server_marker(db).exists()
    finally:
        stop_and_clean(server, port)
    assert paths.tracking_uri(None, project) == f"sqlite:///{db}"
    home = (project / "mlruns").as_uri()
    assert all(loc.startswith(home) for loc in locations(db))  # back to local paths
    local = sddkit.load_mask(round_id, uri=f"sqlite:///{db}")
    assert local.keys() == served.keys() and all((local[k] == served[k]).all() for k in local)


def test_an_open_interface_without_auth_is_refused_and_nothing_starts(project):
    port = free_port()
    result = CliRunner().invoke(main, ["server", "--host", "0.0.0.0", "--port", str(port)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--auth" in lines[0] and "--insecure-no-auth-on-open-network" in lines[0]
    assert sorted(p.name for p in project.iterdir()) == [".git"]  # no store, no marker
    assert servers_on(port) == [] and not accepts(port)


def test_auth_refuses_anonymous_calls_and_takes_the_admin_password(project, tmp_path):
    port, server = start_server(project, tmp_path, "--auth", SDDKIT_SERVER_PASSWORD=PASSWORD)
    url = f"http://127.0.0.1:{port}"
    try:
        line = workers_line(server.stdout)
        assert line is not None, (tmp_path / "server.log").read_text()
        assert line.endswith('MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD="$SDDKIT_SERVER_PASSWORD"')
        assert call(url, "experiments/get-by-name?experiment_name=sddkit") == 401
        assert call(url, "experiments/get-by-name?experiment_name=sddkit", PASSWORD) == 200
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    finally:
        stop_and_clean(server, port)

    # Started again without it: a new password, printed this once; the user database keeps no old one.
    port, server = start_server(project, tmp_path, "--auth")
    url = f"http://127.0.0.1:{port}"
    try:
        line = workers_line(server.stdout) or ""
        generated = line.rpartition("MLFLOW_TRACKING_PASSWORD=")[2]
        assert len(generated) >= 12, (tmp_path / "server.log").read_text()
        assert call(url, "experiments/get-by-name?experiment_name=sddkit", generated) == 200
        assert call(url, "experiments/get-by-name?experiment_name=sddkit", PASSWORD) == 401
    finally:
        stop_and_clean(server, port)


def test_kill_9_of_the_command_ends_the_server_and_its_marker_is_ignored(project, tmp_path):
    db = project / "mlflow.db"
    port, server = start_server(project, tmp_path)
    groups: set[int] = set()
    try:
        assert workers_line(server.stdout) is not None, (tmp_path / "server.log").read_text()
        groups = {os.getpgid(pid) for pid in servers_on(port)} - {server.pid}
        assert groups
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=30)
        deadline = time.monotonic() + 20
        while (accepts(port) or any(map(group_members, groups))) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not accepts(port) and [pid for g in groups for pid in group_members(g)] == []
    finally:
        for pid in [pid for g in groups for pid in group_members(g)]:
            os.kill(pid, signal.SIGKILL)
        stop_and_clean(server, port)
    assert paths.server_marker(db).exists()  # left behind by the kill
    assert paths.tracking_uri(None, project) == f"sqlite:///{db}"  # and ignored
    listed = CliRunner().invoke(main, ["ls"])  # in the project, in this process
    assert listed.exit_code == 0, listed.output
    assert not paths.server_marker(db).exists()  # the local open cleaned it up ...
    assert all(loc.startswith("file:") for loc in locations(db))  # ... and took the locations back


def test_a_marker_counts_only_while_its_process_lives(project):
    db = project / "mlflow.db"
    ended = subprocess.Popen(["true"])
    ended.wait()
    marker = {"host": socket.gethostname(), "uri": "http://127.0.0.1:1"}
    paths.server_marker(db).write_text(json.dumps({**marker, "pid": ended.pid, "started": "1"}))
    assert paths.tracking_uri(None, project) == f"sqlite:///{db}"
    me = {**marker, "pid": os.getpid(), "started": paths.process_started(os.getpid())}
    paths.server_marker(db).write_text(json.dumps(me))
    assert paths.tracking_uri(None, project) == "http://127.0.0.1:1"
    paths.server_marker(db).write_text(json.dumps({**me, "started": "1"}))  # the pid, reused by another process
    assert paths.tracking_uri(None, project) == f"sqlite:///{db}"


def test_a_trajectory_training_straight_into_the_store_keeps_the_server_from_starting(project):
    db = project / "mlflow.db"
    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.create_experiment("sddkit", artifact_location=(project / "mlruns").as_uri())
    trainer = subprocess.Popen(["sleep", "120"])  # a live `sddkit run` of this machine, holding its lease
    try:
        now = time.time()
        holder = {"token": "t", "host": socket.gethostname(), "pid": trainer.pid, "since": now, "heartbeat": now}
        client.set_experiment_tag(experiment, "sddkit.lease.abc.def", json.dumps(holder))
        result = CliRunner().invoke(main, ["server", "--port", str(free_port())])
    finally:
        trainer.kill()
        trainer.wait()
    assert result.exit_code == 1 and f"pid {trainer.pid}" in result.output and "being trained" in result.output
    assert not paths.server_marker(db).exists()
    assert not any(loc.startswith("mlflow-artifacts:") for loc in locations(db))


# ---------------------------------------------------------------- a server that dies, one that asks for credentials

def test_a_run_whose_server_is_killed_says_so_in_one_line_and_its_rerun_continues(project, tmp_path):
    """kill -9 of `sddkit server` while a run logs through it: the run stops within a bound (MLflow's HTTP
    retries bounded), in one line naming the server, leaving a lease no live process holds; the rerun (on the
    local store, the server gone) continues after the last stored round."""
    db = project / "mlflow.db"
    args = [sys.executable, "-m", "sddkit.cli", "run", "--set", "data.train_size=500", "--set", "data.test_size=200",
            "--set", "train.epochs=2", "--set", "prune.rounds=8", "--set", "train.milestones=[]",
            "--set", "train.threads=1"]
    port, server = start_server(project, tmp_path)
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "run.log"
    try:
        assert workers_line(server.stdout) is not None, (tmp_path / "server.log").read_text()
        with open(log, "w") as err:  # this machine's run: through the server, as its marker says
            run = subprocess.Popen(args, cwd=project, env=clean_env(), stdout=subprocess.DEVNULL, stderr=err)
            try:
                deadline = time.monotonic() + 300
                while "round 1/8  sparsity" not in log.read_text() and time.monotonic() < deadline:
                    assert run.poll() is None, log.read_text()
                    time.sleep(0.1)
                server.send_signal(signal.SIGKILL)
                killed = time.monotonic()
                assert run.wait(timeout=120) == 1, log.read_text()
                took = time.monotonic() - killed
            finally:
                run.kill()
    finally:
        stop_and_clean(server, port)
    output = log.read_text()
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in output, output
    assert f"the tracking server at {url} is not answering (connection refused)" in errors[0], errors[0]
    assert "rerun the same command: it continues after round" in errors[0], errors[0]
    assert took < 60, took
    with sqlite3.connect(db) as con:
        (record,) = [json.loads(v) for (v,) in con.execute(
            "select value from experiment_tags where key like 'sddkit.lease.%'")]
    assert record["pid"] == run.pid and lease.Holder(**record).is_stale()  # names the ended run: taken over

    again = CliRunner().invoke(main, args[3:])  # `sddkit run` again, in the project, in this process
    assert again.exit_code == 0, again.output
    assert "continuing after round" in again.stderr
    with sqlite3.connect(db) as con:
        parents = con.execute("select status from runs where name not like '%/round-%'").fetchall()
    assert parents == [("FINISHED",)]


def test_without_credentials_ls_run_compare_and_load_trajectory_ask_for_them_in_one_line(project, tmp_path,
                                                                                       monkeypatch):
    """Against `sddkit server --auth`: one line naming the variables to set, never MLflow's 401 traceback."""
    import traceback
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    port, server = start_server(project, tmp_path, "--auth", SDDKIT_SERVER_PASSWORD=PASSWORD)
    url = f"http://127.0.0.1:{port}"
    asked = (f"error: the tracking server at {url} asks for credentials (401): set MLFLOW_TRACKING_USERNAME and "
             f"MLFLOW_TRACKING_PASSWORD")
    try:
        assert workers_line(server.stdout) is not None, (tmp_path / "server.log").read_text()
        for command in (["ls"], ["run", *TINY_RUN], ["compare", "--runs", "lottery"]):
            result = CliRunner().invoke(main, command)  # this machine's commands go through the server
            assert result.exit_code == 1, (command, result.output)
            assert result.output.strip().startswith(asked) and len(result.output.strip().splitlines()) == 1, \
                (command, result.output)
        with pytest.raises(sddkit.TrackingError) as caught:
            sddkit.load_trajectory("lottery")
        assert str(caught.value).startswith(asked.removeprefix("error: "))
        assert len(traceback.format_exception(caught.value)) < 8  # MLflow's chain is not shown

        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
        result = CliRunner().invoke(main, ["ls"])
        assert result.exit_code == 1 and "refused the credentials of user admin (401)" in result.output
    finally:
        stop_and_clean(server, port)

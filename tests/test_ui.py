"""`sddkit ui` for real: the MLflow server on loopback over a stored trajectory, read through its REST API,
then stopped with Ctrl-C (SIGINT); the server must always be gone afterwards."""
from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from sddkit import config, runner
from sddkit.cli import main

TINY = {"data.train_size": 500, "data.test_size": 200, "train.epochs": 1, "train.batch_size": 100,
        "prune.rounds": 2, "train.threads": 1}


def get(url: str, path: str, **query) -> dict:
    with urllib.request.urlopen(f"{url}{path}?{urllib.parse.urlencode(query)}", timeout=30) as response:
        return json.loads(response.read())


def post(url: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(f"{url}{path}", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def first_url(stdout, timeout: float = 180.0) -> str | None:
    """The URL line `sddkit ui` prints on stdout once the server answers."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True).start()
    try:
        while True:
            line = lines.get(timeout=timeout)
            if line.startswith("http://127.0.0.1:"):
                return line.strip()
    except queue.Empty:
        return None


def servers_on(port: int) -> list[int]:
    """PIDs of live `mlflow server` and uvicorn processes serving ``port`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if (b"server" in args or b"uvicorn" in args) and b"--port" in args and str(port).encode() in args:
            found.append(int(entry.name))
    return found


def start_ui(project, tmp_path, *extra: str, **env_extra: str) -> tuple[int, subprocess.Popen]:
    """`sddkit ui` on a free port in its own session, its stderr in ui.log; (port, process)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}, **env_extra}
    log = open(tmp_path / "ui.log", "w")
    return port, subprocess.Popen([sys.executable, "-m", "sddkit.cli", "ui", "--port", str(port), *extra],
                                  cwd=project, env=env, stdout=subprocess.PIPE, stderr=log, text=True,
                                  start_new_session=True)


def test_ui_serves_the_trajectory_and_stops_on_ctrl_c(project, tmp_path):
    cfg = config.load_config(overrides=TINY)
    store, _ = runner.run_trajectory(cfg, project, quiet=True)  # the default store: <project>/mlflow.db
    opened = tmp_path / "opened.txt"  # the "browser" --open starts (webbrowser runs $BROWSER, %s: the link)
    port, ui = start_ui(project, tmp_path, "--open", BROWSER=f"sh -c 'echo \"$0\" > {opened}' %s")
    try:
        link = first_url(ui.stdout)
        url = f"http://127.0.0.1:{port}"
        assert link is not None and link.startswith(f"{url}/#/experiments/"), (tmp_path / "ui.log").read_text()
        check_rest_api(url, store.run_id, cfg.prune.rounds)
        check_link(url, link)
        deadline = time.monotonic() + 30
        while not opened.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert opened.read_text().strip() == link

        ui.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground process
        assert ui.wait(timeout=60) == 0
        assert servers_on(port) == []
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0  # nothing listens any more
    finally:
        leftovers = servers_on(port) + ([ui.pid] if ui.poll() is None else [])
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
        ui.wait(timeout=30)


def check_rest_api(url: str, parent_id: str, rounds: int) -> None:
    experiment = get(url, "/api/2.0/mlflow/experiments/get-by-name", experiment_name="sddkit")["experiment"]
    found = post(url, "/api/2.0/mlflow/runs/search", {
        "experiment_ids": [experiment["experiment_id"]],
        "filter": f"tags.`mlflow.parentRunId` = '{parent_id}'", "max_results": 100})["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"]["tags"]} for r in found]
    assert sorted(int(t["sddkit.round"]) for t in tags) == list(range(rounds + 1))  # one nested run a round
    for r in found:
        listed = get(url, "/api/2.0/mlflow/artifacts/list", run_id=r["info"]["run_id"])
        names = {f["path"] for f in listed["files"]}
        assert {"mask.npz", "weights.pt", "metrics.json"} <= names
        assert all(int(f["file_size"]) > 0 for f in listed["files"])


def check_link(url: str, link: str) -> None:
    """The link opens the experiment's training runs (not the GenAI overview), filtered to trajectories."""
    experiment = get(url, "/api/2.0/mlflow/experiments/get-by-name", experiment_name="sddkit")["experiment"]
    route, _, query = link.removeprefix(f"{url}/#").partition("?")
    assert route == f"/experiments/{experiment['experiment_id']}/runs"
    params = urllib.parse.parse_qs(query)
    assert params["workflowType"] == ["machine_learning"]
    assert params["searchFilter"] == ["tags.`sddkit.kind` = 'trajectory'"]
    found = post(url, "/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]],
                                                      "filter": params["searchFilter"][0]})["runs"]
    assert len(found) == 1  # the filter is valid MLflow search syntax and keeps the trajectory only
    # Its default view is the ML one too (a link without workflowType, a bookmark).
    assert {"key": "mlflow.experimentKind", "value": "custom_model_development"} in experiment["tags"]


def test_ui_port_in_use_is_a_clear_error(project):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(main, ["ui", "--port", str(port)])
    assert result.exit_code == 1
    assert f"--port {port}: already in use" in result.output



def test_ui_command_imports_neither_mlflow_nor_torch(project):
    """The server runs mlflow in its own process; the command only starts it (or says why it cannot)."""
    code = ("import sys\nfrom sddkit.cli import main\ntry:\n    main(['ui', '--port', sys.argv[1]])\n"
            "except SystemExit as done:\n    print(done.code, [m for m in ('mlflow', 'torch') if m in sys.modules])")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run([sys.executable, "-c", code, str(port)], cwd=project, capture_output=True, text=True,
                              timeout=120)
    assert f"--port {port}: already in use" in done.stderr
    assert done.stdout.strip() == "1 []"


def uvicorn_on(port: int) -> list[int]:
    """PIDs of the uvicorn processes serving ``port``: mlflow server's own children."""
    found = []
    for pid in servers_on(port):
        try:
            if b"uvicorn" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                found.append(pid)
        except OSError:
            continue
    return found


def group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid`` (from /proc; zombies excluded)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if int(group) == pgid and state != "Z":
            found.append(int(stat.parent.name))
    return found


def accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("sig, when", [(signal.SIGKILL, "serving"), (signal.SIGHUP, "starting")],
                         ids=["SIGKILL-serving", "SIGHUP-starting"])
def test_the_server_dies_with_the_command(project, tmp_path, sig, when):
    """kill -9 of `sddkit ui`, or SIGHUP (its terminal closed): mlflow server and its uvicorn must not keep
    listening. SIGHUP comes once uvicorn has started, before it answers (left alone it would go on to listen):
    that spares the test the rest of a start-up; stopping a serving server is what the Ctrl-C test checks."""
    port, ui = start_ui(project, tmp_path)
    groups: set[int] = set()
    try:
        if when == "serving":
            served = first_url(ui.stdout) or ""
            assert served.startswith(f"http://127.0.0.1:{port}"), (tmp_path / "ui.log").read_text()
        deadline = time.monotonic() + 60
        while not uvicorn_on(port) and time.monotonic() < deadline:  # mlflow server's own child
            time.sleep(0.1)
        groups = {os.getpgid(pid) for pid in servers_on(port)} - {ui.pid}
        assert groups, (tmp_path / "ui.log").read_text()
        ui.send_signal(sig)
        ui.wait(timeout=30)
        deadline = time.monotonic() + 10
        while (accepts(port) or any(map(group_members, groups))) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not accepts(port), (tmp_path / "ui.log").read_text()
        assert [pid for g in groups for pid in group_members(g)] == []
    finally:
        for pid in [pid for g in groups for pid in group_members(g)] + servers_on(port):
            os.kill(pid, signal.SIGKILL)
        if ui.poll() is None:
            ui.kill()
        ui.wait(timeout=30)


@pytest.fixture
def read_only_project(tmp_path):
    """A project with a store, on a real read-only mount (root writes through chmod, not through ro mounts)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"a read-only project needs a read-only mount, and mount was refused: {mounted.stderr!r}")
    try:
        (folder / ".git").mkdir()
        # Made outside and copied in: the store this process opens stays open, and would keep the mount busy.
        MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").search_experiments()
        shutil.copy(tmp_path / "mlflow.db", folder / "mlflow.db")
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True, capture_output=True)
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_ui_on_a_read_only_project_fails_fast_in_one_line(read_only_project):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    started = time.monotonic()
    ui = subprocess.Popen([sys.executable, "-m", "sddkit.cli", "ui", "--port", str(port)], cwd=read_only_project,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = ui.communicate(timeout=30)
    finally:
        for pid in servers_on(port) + ([ui.pid] if ui.poll() is None else []):
            os.kill(pid, signal.SIGKILL)
    assert time.monotonic() - started < 20
    assert ui.returncode == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(read_only_project) in lines[0] and "not writable" in lines[0], err
    assert not servers_on(port)


def test_a_port_just_freed_by_a_stopped_server_is_accepted_and_a_listened_one_refused():
    from sddkit import ui as port_probe  # (`ui` names the server process in the tests above)
    # The stopped server (uvicorn binds with SO_REUSEADDR) leaves its closed connection in TIME_WAIT.
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((port_probe.HOST, 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection((port_probe.HOST, port))
    served, _ = listener.accept()
    served.close()  # the server closes first: its side of the connection waits in TIME_WAIT
    client.close()
    with socket.socket() as busy:
        busy.bind((port_probe.HOST, 0))
        busy.listen()
        with pytest.raises(port_probe.ServeError, match="already in use"):
            port_probe.checked_port(busy.getsockname()[1])
    listener.close()
    assert port_probe.checked_port(port) == port

"""`sddkit ui` for real: the MLflow server on loopback over a stored trajectory, read through its REST API,
then stopped with Ctrl-C (SIGINT); the server must always be gone afterwards."""
from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from pathlib import Path

from click.testing import CliRunner

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
    """PIDs of live `mlflow server` processes listening on ``port`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"server" in args and b"--port" in args and str(port).encode() in args:
            found.append(int(entry.name))
    return found


def test_ui_serves_the_trajectory_and_stops_on_ctrl_c(project, tmp_path):
    cfg = config.load_config(overrides=TINY)
    store, _ = runner.run_trajectory(cfg, project, quiet=True)  # the default store: <project>/mlflow.db
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    log = open(tmp_path / "ui.log", "w")
    ui = subprocess.Popen([sys.executable, "-m", "sddkit.cli", "ui", "--port", str(port)], cwd=project, env=env,
                          stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
    try:
        url = first_url(ui.stdout)
        assert url == f"http://127.0.0.1:{port}", (tmp_path / "ui.log").read_text()
        check_rest_api(url, store.run_id, cfg.prune.rounds)

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
        log.close()


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

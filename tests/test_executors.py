"""Executors on a real Ray: a 2×2 sweep equals the same cells run one after another, a cell whose Ray worker is
killed with -9 is retried and ends with the same metrics and no duplicate runs, and (slow) two Ray nodes log
into one `sddkit server`. Without Ray these skip, and `--executor ray` stops in one line naming the extra."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from sddkit import runner, sweep
from sddkit.config import SweepConfig, load_config
from sddkit.tracking import Tracker, read_mask

from conftest import TINY

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]' to run these")

GRID_OVERRIDES = {**TINY, "prune.rounds": 2}
COMPARED = ("sparsity", "test_acc", "test_loss", "train_acc_noisy", "train_acc_clean", "learning_distance")


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "RAY_"))}
    return {**env, "DVC_NO_ANALYTICS": "1", **extra}


def reference_rows(cells, folder) -> dict[str, list[dict]]:
    """The cells run one after another, in this process, into a store of their own: key -> rows."""
    folder.mkdir()
    out = {}
    for cell in cells:  # lottery twins come first
        cfg = dataclasses.replace(cell.cfg, tracking=dataclasses.replace(cell.cfg.tracking,
                                                                         uri=f"sqlite:///{folder}/mlflow.db"))
        _, rows = runner.run_trajectory(cfg, folder, quiet=True)
        out[cell.key] = rows
    return out


def assert_same_rows(ours: list[dict], theirs: list[dict]) -> None:
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert {k: a[k] for k in COMPARED} == {k: b[k] for k in COMPARED}, (a["round"], a, b)


def masks_of(tracker: Tracker, run_id: str) -> dict[int, dict]:
    return {int(r.data.tags["sddkit.round"]): read_mask(tracker, r.info.run_id) for r in tracker.round_runs(run_id)}


def test_a_2x2_grid_on_ray_matches_the_same_cells_run_one_after_another(project, tmp_path):
    base = load_config(overrides=GRID_OVERRIDES)
    settings = SweepConfig(grid={"noise.ratio": [0.2, 0.4]}, modes=["lottery", "reinit"], executor="ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        done = sweep.run_sweep(base, settings, project)
    finally:
        ray.shutdown()

    tracker = done.tracker
    runs = {r.data.tags["sddkit.config_hash"]: r for r in tracker.trajectories("sddkit")}
    assert sorted(runs) == sorted(c.key for c in done.cells) and len(done.cells) == 4
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    assert {r.data.tags["sddkit.sweep"] for r in runs.values()} == {done.sweep_id}
    for cell in done.cells:
        assert len(tracker.round_runs(runs[cell.key].info.run_id)) == 3
        if cell.cfg.retrain.mode == "reinit":  # exactly its twin's masks, round by round
            twin = masks_of(tracker, runs[cell.needs].info.run_id)
            ours = masks_of(tracker, runs[cell.key].info.run_id)
            assert sorted(ours) == sorted(twin) == [0, 1, 2]
            for r in (1, 2):
                assert all(ours[r][name].equal(twin[r][name]) for name in twin[r])
            other = [c for c in done.cells if c.cfg.retrain.mode == "lottery" and c.key != cell.needs][0]
            assert not all(ours[2][n].equal(masks_of(tracker, runs[other.key].info.run_id)[2][n]) for n in ours[2])

    expected = reference_rows(done.cells, tmp_path / "sequential")
    for cell in done.cells:
        assert_same_rows(done.outcomes[cell.key].rows, expected[cell.key])


def lease_holder(db) -> dict | None:
    import sqlite3
    with sqlite3.connect(db) as con:
        rows = con.execute("select value from experiment_tags where key like 'sddkit.lease.%'").fetchall()
    return json.loads(rows[0][0]) if rows else None


def finished_rounds(db) -> int:
    import sqlite3
    with sqlite3.connect(db) as con:
        return con.execute("select count(*) from runs r join tags t on r.run_uuid = t.run_uuid where "
                           "t.key = 'sddkit.kind' and t.value = 'round' and r.status = 'FINISHED'").fetchone()[0]


def test_a_cell_whose_ray_worker_is_killed_is_retried_to_the_same_metrics_without_duplicates(project, tmp_path):
    sets = {**TINY, "train.epochs": 12, "prune.rounds": 4}
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    log = tmp_path / "sweep.log"
    db = project / "mlflow.db"
    with open(log, "w") as err:
        job = subprocess.Popen([sys.executable, "-m", "sddkit.cli", "sweep", "--executor", "ray", "--modes",
                                "lottery", *args], cwd=project, env=clean_env(), stdout=subprocess.DEVNULL,
                               stderr=err, start_new_session=True)
        try:
            deadline = time.monotonic() + 240
            while job.poll() is None and time.monotonic() < deadline and not (
                    db.exists() and finished_rounds(db) >= 2 and lease_holder(db)):
                time.sleep(0.2)
            holder = lease_holder(db)
            assert job.poll() is None and holder, log.read_text()
            os.kill(holder["pid"], signal.SIGKILL)  # the Ray worker running the cell (it holds the lease)
            assert job.wait(timeout=300) == 0, log.read_text()
        finally:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
    text = log.read_text()
    assert text.count(": started on ") == 2, text  # the first attempt and Ray's retry

    tracker = Tracker(f"sqlite:///{db}", project)
    (parent,) = tracker.trajectories("sddkit")  # one parent run: the retry continued it
    assert parent.info.status == "FINISHED"
    rounds = tracker.round_runs(parent.info.run_id, finished_only=False)
    finished = [int(r.data.tags["sddkit.round"]) for r in rounds if r.info.status == "FINISHED"]
    assert sorted(finished) == [0, 1, 2, 3, 4]  # each round counted once
    assert all(r.info.status == "KILLED" for r in rounds if r.info.status != "FINISHED")  # the cut-off one
    assert len(rounds) - len(finished) <= 1

    cfg = load_config(overrides={**sets, "retrain.mode": "lottery"})
    cell = sweep.Cell(cfg, {})
    expected = reference_rows([cell], tmp_path / "uninterrupted")[cell.key]
    from sddkit.tracking import TrajectoryRun
    assert_same_rows(TrajectoryRun(tracker, parent.info.run_id).completed, expected)


def test_executor_ray_without_ray_stops_in_one_line_naming_the_extra(project):
    # Python treats a None entry in sys.modules as a module that cannot be imported: Ray is absent.
    code = "import sys; sys.modules['ray'] = None; from sddkit.cli import main; main()"
    result = subprocess.run([sys.executable, "-c", code, "sweep", "--executor", "ray", "--set", "prune.rounds=1"],
                            cwd=project, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "pip install -e '.[ray]'" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (project / "mlflow.db").exists()  # nothing written before the executor could start


def test_ctrl_c_cancels_a_ray_sweep_cleanly_and_the_next_invocation_continues_it(project, tmp_path):
    sets = {**TINY, "train.epochs": 12, "prune.rounds": 4}
    args = [sys.executable, "-m", "sddkit.cli", "sweep", "--executor", "ray", "--modes", "lottery",
            *(a for k, v in sets.items() for a in ("--set", f"{k}={json.dumps(v)}"))]
    log = tmp_path / "sweep.log"
    db = project / "mlflow.db"
    with open(log, "w") as err:
        job = subprocess.Popen(args, cwd=project, env=clean_env(), stdout=subprocess.DEVNULL, stderr=err,
                               start_new_session=True)
        try:
            deadline = time.monotonic() + 240
            while job.poll() is None and time.monotonic() < deadline and not (db.exists() and finished_rounds(db) >= 2):
                time.sleep(0.2)
            assert job.poll() is None, log.read_text()
            os.killpg(job.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: to the whole process group
            assert job.wait(timeout=90) == 130, log.read_text()
        finally:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
    assert "interrupted: rerun the same command to continue the sweep" in log.read_text()
    tracker = Tracker(f"sqlite:///{db}", project)
    (parent,) = tracker.trajectories("sddkit")
    assert parent.info.status == "KILLED"  # marked, not left RUNNING
    assert lease_holder(db) is None  # released
    done_before = len(tracker.round_runs(parent.info.run_id))
    assert 2 <= done_before < 5

    again = subprocess.run(args, cwd=project, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    (parent,) = tracker.trajectories("sddkit")  # continued, not started anew
    assert parent.info.status == "FINISHED"
    assert sorted(int(r.data.tags["sddkit.round"]) for r in tracker.round_runs(parent.info.run_id)) == [0, 1, 2, 3, 4]


def test_local_workers_each_see_their_own_gpu_or_none():
    from sddkit.executors import LocalExecutor, local_jobs
    assert local_jobs(0, 4, None, 18) == 4 and local_jobs(0, 4, 0.5, 18) == 8 and local_jobs(0, 4, None, 2) == 2
    assert local_jobs(3, 4, None, 18) == 3 and local_jobs(0, 0, None, 18) == min(os.cpu_count(), 18)
    for gpus, hide, expected in ((2, False, ["0", "1", "0"]), (0, True, ["", "", ""])):
        executor = LocalExecutor(3, gpus, hide_gpus=hide)
        try:  # each worker's view of the GPUs, asked of all three workers at once
            calls = [executor.call(worker_devices, 1.0) for _ in range(3)]
            deadline = time.monotonic() + 120
            while not all(c.done for c in calls) and time.monotonic() < deadline:
                executor.wait(calls, 1.0)
            assert sorted(executor.outcome(c) for c in calls) == sorted(expected)
        finally:
            executor.close()


def worker_devices(hold: float) -> str:
    time.sleep(hold)  # keep this worker busy so each of the three answers once
    return os.environ.get("CUDA_VISIBLE_DEVICES", "unset")


def ray_cli(*args: str, env: dict) -> None:
    subprocess.run(["ray", *args], env=env, check=True, capture_output=True, timeout=180)


@pytest.mark.slow
def test_two_ray_nodes_log_into_one_sddkit_server_and_a_local_store_is_refused(project, tmp_path):
    """Two Ray "nodes" on this machine (`ray start --head`, `ray start --address …`) and `sddkit server`: the
    sweep over that cluster with the local sqlite store is refused in one line; through the server every run
    lands in the project's store, with artifacts readable by `sddkit.load_mask` over HTTP."""
    import sddkit
    from test_server import free_port, start_server, stop_and_clean, workers_line
    port = free_port()
    address = f"127.0.0.1:{port}"
    # A cluster of one test's own: no usage reports, and no token to share between its processes.
    env = clean_env(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    sets = [a for k, v in GRID_OVERRIDES.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    sweep_args = [sys.executable, "-m", "sddkit.cli", "sweep", "--executor", "ray", "--address", address,
                  "--grid", "noise.ratio=0.2,0.4", "--modes", "lottery", *sets]
    ray_cli("start", "--head", "--port", str(port), "--num-cpus", "1", "--include-dashboard=false", env=env)
    server = None
    try:
        ray_cli("start", "--address", address, "--num-cpus", "1", env=env)
        refused = subprocess.run(sweep_args, cwd=project, env=env, capture_output=True, text=True, timeout=300)
        assert refused.returncode == 1, refused.stderr
        errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "sddkit server" in errors[0] and "2 nodes" in errors[0], refused.stderr

        server_port, server = start_server(project, tmp_path)
        line = workers_line(server.stdout)
        assert line is not None, (tmp_path / "server.log").read_text()
        uri = line.split("MLFLOW_TRACKING_URI=")[1].split()[0]
        done = subprocess.run(sweep_args, cwd=project, env={**env, "MLFLOW_TRACKING_URI": uri},
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        assert "on 2 nodes" in done.stderr, done.stderr

        tracker = Tracker(uri, project)
        runs = tracker.trajectories("sddkit")
        assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
        for run in runs:
            rounds = tracker.round_runs(run.info.run_id)
            assert len(rounds) == 3
            assert rounds[-1].info.artifact_uri.startswith("mlflow-artifacts:")  # proxied, no shared folder needed
            mask = sddkit.load_mask(rounds[-1].info.run_id, tracking_uri=uri)
            assert mask and all(m.dtype == torch_bool() for m in mask.values())
        assert any((project / "mlruns").rglob("mask.npz"))  # the server kept them in the project
    finally:
        if server is not None:
            stop_and_clean(server, server_port)
        subprocess.run(["ray", "stop", "--force"], env=env, capture_output=True, timeout=120)


def torch_bool():
    import torch
    return torch.bool


def test_an_address_where_nothing_answers_fails_in_one_line_within_seconds(project):
    """ray.init at a closed port retried for minutes, showing only Ray's warnings."""
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"  # closed once the probe is
    result = subprocess.run([sys.executable, "-m", "sddkit.cli", "sweep", "--executor", "ray", "--address", address,
                             "--set", "prune.rounds=1"], cwd=project, env=clean_env(), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: --address {address}: no Ray cluster answers at {address} (Connection refused); start its head "
        f"there (`ray start --head --port {address.split(':')[1]}`) or fix the address, or drop --address to start "
        f"Ray here"], result.stderr


def test_kill_9_of_a_sweep_driver_ends_the_ray_it_started(project, tmp_path):
    """The Ray a sweep starts ends with it, kill -9 included: its agents outlived the driver by 1-2 minutes."""
    import psutil
    sets = {**TINY, "train.epochs": 30, "prune.rounds": 30}
    args = [sys.executable, "-m", "sddkit.cli", "sweep", "--executor", "ray", "--modes", "lottery",
            *(a for k, v in sets.items() for a in ("--set", f"{k}={json.dumps(v)}"))]
    log = tmp_path / "sweep.log"
    started = []
    with open(log, "w") as err:
        driver = subprocess.Popen(args, cwd=project, env=clean_env(RAY_USAGE_STATS_ENABLED="0"),
                                  stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while "round 0/30 done" not in log.read_text() and time.monotonic() < deadline:
                assert driver.poll() is None, log.read_text()
                time.sleep(0.2)
            started = psutil.Process(driver.pid).children(recursive=True)
            assert any("Agent" in p.name() for p in started), [p.name() for p in started]
            driver.kill()
            driver.wait()
            def alive() -> list[str]:
                return [p.name() for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
            deadline = time.monotonic() + 20
            while alive() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert alive() == []
        finally:
            for p in started:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            if driver.poll() is None:
                driver.kill()


def test_a_ray_started_by_the_sweep_prints_none_of_rays_own_lines(tmp_path):
    """Ray's coloured INFO/WARNING lines leaked into the sweep's output (issue 29). As a newcomer meets it:
    a first Ray on this machine (a fresh HOME: Ray also warns then that it made an auth token)."""
    code = "import ray\nfrom sddkit import executors\nexecutors.start_ray(ray, None, {})\nray.shutdown()\n"
    done = subprocess.run([sys.executable, "-c", code], env=clean_env(HOME=str(tmp_path)), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "WARNING" not in done.stderr and "INFO" not in done.stderr, done.stderr

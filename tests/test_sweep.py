"""Seed replicates: the group hash, mean ± std by round, and ``sddkit run --seeds … --jobs 2`` in worker
processes writing to one real MLflow sqlite store."""
import csv
import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from sddkit import cli
from sddkit.config import load_config
from sddkit.lease import process_alive
from sddkit.tracking import Tracker


def test_replicates_share_a_group_hash_but_not_an_identity():
    base = load_config()
    other_seed = load_config(overrides={"seed": 1})
    assert base.group_hash() == other_seed.group_hash()
    assert base.identity_hash() != other_seed.identity_hash()
    assert base.group_hash() == load_config(overrides={"train.threads": 4, "tracking.run_name": "x"}).group_hash()
    assert base.group_hash() != load_config(overrides={"noise.ratio": 0.4}).group_hash()


def test_a_pinned_noise_seed_stays_in_the_group():
    pinned = load_config(overrides={"noise.seed": 3})
    assert pinned.group_hash() == load_config(overrides={"noise.seed": 3, "seed": 5}).group_hash()
    assert pinned.group_hash() != load_config(overrides={"noise.seed": 4}).group_hash()
    assert pinned.group_hash() != load_config().group_hash()


def test_jobs_without_seeds_is_refused(project):
    result = CliRunner().invoke(cli.main, ["run", "--jobs", "2"])
    assert result.exit_code == 2 and "--seeds" in result.output


def test_seeds_run_in_parallel_workers_into_one_store(project):
    sets = ["--set", "data.train_size=500", "--set", "train.epochs=1", "--set", "prune.rounds=1",
            "--set", "train.milestones=[]", "--set", "train.threads=0"]
    result = CliRunner().invoke(cli.main, ["run", "--seeds", "3", "4", "--jobs", "2", *sets,
                                           "--results", str(project / "results" / "seeds")])
    assert result.exit_code == 0, result.output
    assert "±" in result.output

    tracker = Tracker(f"sqlite:///{project}/mlflow.db", project)
    runs = tracker.trajectories("sddkit")
    assert sorted(r.data.tags["sddkit.seed"] for r in runs) == ["3", "4"]
    assert all(r.info.status == "FINISHED" for r in runs)
    cfg = load_config(overrides={"data.train_size": 500, "train.epochs": 1, "prune.rounds": 1, "train.milestones": []})
    assert {r.data.tags["sddkit.group"] for r in runs} == {cfg.group_hash()}
    assert len({r.data.tags["sddkit.config_hash"] for r in runs}) == 2
    assert all(len(tracker.round_runs(r.info.run_id)) == 2 for r in runs)

    # The group's mean ± std is the mean and sample std of the stored per-round test accuracies.
    client = MlflowClient(tracker.uri)
    accs = np.array([[m.value for m in sorted(client.get_metric_history(r.info.run_id, "test_acc"),
                                               key=lambda m: m.step)] for r in runs])
    for r in runs:
        assert {f.path for f in client.list_artifacts(r.info.run_id, "replicates")} == \
            {"replicates/mean_std.csv", "replicates/curve_mean_std.png"}
    table = list(csv.DictReader(io.StringIO((project / "results" / "seeds" / "mean_std.csv").read_text())))
    assert [float(row["test_acc"]) for row in table] == pytest.approx(accs.mean(0).tolist())
    assert [float(row["test_acc_std"]) for row in table] == pytest.approx(accs.std(0, ddof=1).tolist())
    assert (project / "results" / "seeds" / "seed-3" / "trajectory.csv").is_file()
    assert (project / "results" / "seeds" / "curve_mean_std.png").read_bytes()[:4] == b"\x89PNG"


def test_a_seed_given_twice_is_refused(project):
    result = CliRunner().invoke(cli.main, ["run", "--seeds", "1", "1"])
    assert result.exit_code == 1 and "each seed once" in result.output
    assert not (project / "mlflow.db").exists()


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def test_ctrl_c_drops_the_queued_seeds_and_stops_the_workers(project, tmp_path):
    sets = ["--set", "data.train_size=200", "--set", "train.epochs=1", "--set", "prune.rounds=6",
            "--set", "train.milestones=[]", "--set", "train.threads=1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    log = tmp_path / "run.log"
    with open(log, "w") as err:
        run = subprocess.Popen([sys.executable, "-m", "sddkit.cli", "run", "--seeds", "0", "1", "2", "3", "4", "5",
                                "--jobs", "2", *sets], cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=err,
                               start_new_session=True)
        try:
            deadline = time.monotonic() + 240
            while ": round " not in log.read_text() and run.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert run.poll() is None, log.read_text()  # the workers are mid-trajectory
            os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: to the whole process group
            assert run.wait(timeout=30) == 130, log.read_text()
            assert "interrupted: rerun the same command" in log.read_text()
            deadline = time.monotonic() + 15
            while group_alive(run.pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not group_alive(run.pid)  # no worker left behind
        finally:
            if group_alive(run.pid):
                os.killpg(run.pid, signal.SIGKILL)
    seeds = {r.data.tags["sddkit.seed"] for r in Tracker(f"sqlite:///{project}/mlflow.db", project)
             .trajectories("sddkit")}
    assert len(seeds) < 6  # the queued seeds never started


def children_of(pid: int) -> list[int]:
    """Live child processes of ``pid`` (from /proc; zombies excluded)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError):
            continue
        if int(ppid) == pid and state != "Z":
            found.append(int(stat.parent.name))
    return found


def test_sigkill_of_the_parent_stops_the_workers_as_ctrl_c_would(project, tmp_path):
    """kill -9 of `sddkit run --seeds … --jobs 2`: its workers must not train on under init; they stop as on
    Ctrl-C, so the runs they were training are marked KILLED, not left RUNNING."""
    # 30 epochs a round: both workers are still mid-trajectory once each has stored its round 0.
    sets = ["--set", "data.train_size=200", "--set", "train.epochs=30", "--set", "prune.rounds=8",
            "--set", "train.milestones=[]", "--set", "train.threads=1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    log = tmp_path / "run.log"
    with open(log, "w") as err:
        run = subprocess.Popen([sys.executable, "-m", "sddkit.cli", "run", "--seeds", "0", "1", "2", "3",
                                "--jobs", "2", *sets], cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=err,
                               start_new_session=True)
        try:
            deadline = time.monotonic() + 240
            opened = lambda: log.read_text().count(": round 0/8 done")  # noqa: E731 - runs open (the view's lines)
            while opened() < 2 and run.poll() is None and time.monotonic() < deadline:  # both workers train
                time.sleep(0.2)
            workers = children_of(run.pid)
            assert run.poll() is None and len(workers) >= 2, log.read_text()
            run.kill()
            run.wait()
            deadline = time.monotonic() + 15
            while any(process_alive(w) for w in workers) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert [w for w in workers if process_alive(w)] == [], log.read_text()
        finally:
            if group_alive(run.pid):
                os.killpg(run.pid, signal.SIGKILL)
    runs = Tracker(f"sqlite:///{project}/mlflow.db", project).trajectories("sddkit")
    assert runs and {r.info.status for r in runs} == {"KILLED"}, log.read_text()

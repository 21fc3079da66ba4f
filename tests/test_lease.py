"""One owner per trajectory: a second process stops (or waits) while the owner lives, a dead owner's lease
is taken over, and an owner whose lease was taken over never writes another round."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from sddkit import fingerprint, lease, runner
from sddkit.config import load_config
from sddkit.tracking import Tracker

# Long enough (~10 s of training) for this process to ask while the owner still trains.
SETS = ["data.train_size=1000", "train.epochs=20", "prune.rounds=3", "train.batch_size=50"]


def sddkit_run(project: Path, *extra: str) -> list[str]:
    sets = [a for s in SETS for a in ("--set", s)]
    return [sys.executable, "-m", "sddkit.cli", "run", *sets, "--set", f"tracking.uri=sqlite:///{project}/mlflow.db",
            *extra]


def child_env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}


def wait_for_lease(uri: str, timeout: float = 120) -> lease.Holder:
    client, deadline = MlflowClient(uri), time.time() + timeout
    while time.time() < deadline:
        exp = client.get_experiment_by_name("sddkit")
        tags = exp.tags if exp else {}
        held = [lease.Holder(**json.loads(v)) for k, v in tags.items() if k.startswith("sddkit.lease.")]
        if held and held[0].run_id:
            return held[0]
        time.sleep(0.3)
    raise AssertionError("the first process never took its lease")


def test_a_second_process_is_refused_while_the_owner_trains_and_never_touches_its_rounds(project):
    """The owner is a real `sddkit run` process; this test process is the second one on the same store."""
    uri = f"sqlite:///{project}/mlflow.db"
    cfg = load_config(overrides=[*SETS, f"tracking.uri={uri}"])
    owner = subprocess.Popen(sddkit_run(project), cwd=project, env=child_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        holder = wait_for_lease(uri)
        assert holder.pid == owner.pid and holder.host == socket.gethostname()
        with pytest.raises(lease.LeaseHeld) as refused:
            runner.run_trajectory(cfg, project, quiet=True)
        assert owner.poll() is None, "the owner finished before the second process asked: lengthen SETS"
        assert f"being trained by pid {owner.pid} on host {holder.host} on run {holder.run_id}" in str(refused.value)
        assert owner.wait(timeout=300) == 0, owner.stderr.read()
    finally:
        owner.kill()
        owner.wait()

    client = MlflowClient(uri)
    runs = Tracker(uri, project).trajectories("sddkit")
    assert [r.info.run_id for r in runs] == [holder.run_id] and runs[0].info.status == "FINISHED"
    rounds = client.search_runs([runs[0].info.experiment_id], "tags.`sddkit.kind` = 'round'")
    assert sorted(int(r.data.tags["sddkit.round"]) for r in rounds) == [0, 1, 2, 3]  # no duplicate, none killed
    assert all(r.info.status == "FINISHED" for r in rounds)
    assert not any(k.startswith("sddkit.lease.") for k in client.get_experiment(runs[0].info.experiment_id).tags)

    store, rows = runner.run_trajectory(cfg, project, quiet=True)  # the owner is gone: its run is reported
    assert store.run_id == holder.run_id and len(rows) == 4


def test_with_wait_a_second_process_waits_for_the_owner_then_takes_over(project, capsys):
    """--wait: while the owner (a live process holding the lease) lives, wait; once it is gone, train."""
    uri = f"sqlite:///{project}/mlflow.db"
    cfg = load_config(overrides=["data.train_size=300", "train.epochs=1", "prune.rounds=1", f"tracking.uri={uri}"])
    experiment_id = Tracker(uri, project).experiment_id("sddkit")
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        plant(uri, experiment_id, f"{cfg.identity_hash()}.{fingerprint.code_hash()}", pid=owner.pid)
        threading.Timer(4.0, owner.kill).start()  # the owner dies while the second process waits
        started = time.time()
        store, rows = runner.run_trajectory(cfg, project, quiet=True, wait=True)
    finally:
        owner.kill()
        owner.wait()
    assert time.time() - started >= 4.0 and len(rows) == 2
    assert f"waiting for pid {owner.pid}" in capsys.readouterr().err
    assert MlflowClient(uri).get_run(store.run_id).info.status == "FINISHED"


@pytest.fixture
def experiment(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    return uri, Tracker(uri, tmp_path).experiment_id("sddkit")


def plant(uri: str, experiment_id: str, identity: str, **fields) -> None:
    """A lease record written by some other process."""
    now = time.time()
    record = {"token": "other", "host": socket.gethostname(), "pid": 1, "since": now, "heartbeat": now, **fields}
    MlflowClient(uri).set_experiment_tag(experiment_id, lease.key_for(identity), json.dumps(record))


def test_a_live_lease_of_another_machine_is_refused_and_a_silent_one_taken_over(experiment):
    uri, exp = experiment
    plant(uri, exp, "a.b", host="gpu-node-7", pid=4242)
    with pytest.raises(lease.LeaseHeld, match="pid 4242 on host gpu-node-7"):
        lease.Lease(uri, exp, "a.b").acquire()
    plant(uri, exp, "a.b", host="gpu-node-7", pid=4242, heartbeat=time.time() - lease.STALE_AFTER_S - 5)
    with lease.Lease(uri, exp, "a.b").acquire() as taken:
        assert lease.read(MlflowClient(uri), exp, lease.key_for("a.b")).token == taken.record.token
    assert lease.read(MlflowClient(uri), exp, lease.key_for("a.b")) is None  # released


def test_the_lease_of_a_killed_process_on_this_host_is_taken_over_at_once(experiment):
    uri, exp = experiment
    dead = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead.kill()
    dead.wait()
    plant(uri, exp, "a.b", pid=dead.pid)  # a fresh heartbeat, but its process is gone
    with lease.Lease(uri, exp, "a.b").acquire():
        pass
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        plant(uri, exp, "a.b", pid=alive.pid)
        with pytest.raises(lease.LeaseHeld, match=f"pid {alive.pid}"):
            lease.Lease(uri, exp, "a.b").acquire()
    finally:
        alive.kill()
        alive.wait()


def test_an_owner_whose_lease_was_taken_over_stops_writing(experiment, monkeypatch):
    uri, exp = experiment
    monkeypatch.setattr(lease, "HEARTBEAT_S", 0.1)
    held = lease.Lease(uri, exp, "a.b").acquire()
    try:
        held.check()  # still ours
        plant(uri, exp, "a.b", host="elsewhere", pid=7)  # another process judged us dead and took over
        deadline = time.time() + 10
        while not held.lost and time.time() < deadline:
            time.sleep(0.05)
        with pytest.raises(lease.LeaseLost, match="taken over"):
            held.check()
    finally:
        held.release()
    assert lease.read(MlflowClient(uri), exp, lease.key_for("a.b")).host == "elsewhere"  # not ours to delete

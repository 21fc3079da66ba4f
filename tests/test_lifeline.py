"""Nothing outlives what started it: the parent-death signal, the watch on a `dvc` ancestor and the guard of a
process group, on real processes; and a real `dvc repro` killed mid-stage, then run again."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest
from test_pipeline import repo, run, set_param, store  # noqa: F401 - repo: the fixture of a DVC project

from sddkit import lifeline

STOPS_LIKE_CTRL_C = """
import signal, sys, time
from sddkit import lifeline
lifeline.stop_like_ctrl_c(signal.SIGTERM)
try:
    {setup}
    print("ready", flush=True)
    time.sleep(60)
except KeyboardInterrupt:
    print("stopped like Ctrl-C", flush=True)
    sys.exit(130)
"""


def wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)
    return condition()


def test_dvc_is_recognised_however_it_was_started():
    assert lifeline.is_dvc(["/usr/bin/dvc", "repro"])
    assert lifeline.is_dvc(["/venv/bin/python3.11", "/venv/bin/dvc", "repro"])
    assert lifeline.is_dvc(["python", "-m", "dvc", "exp", "run"])
    assert not lifeline.is_dvc(["/bin/sh", "-c", "dvc repro"])
    assert not lifeline.is_dvc(["python", "/venv/bin/sddkit", "run", "--set", "tracking.run_name=dvc"])
    assert not lifeline.is_dvc([])


def test_a_parent_gone_before_the_death_signal_was_set_still_stops_the_child():
    """The race die_with_parent closes: the parent it is told of is not (any more) its parent."""
    code = STOPS_LIKE_CTRL_C.format(setup="lifeline.die_with_parent(parent=1)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout) == (130, "stopped like Ctrl-C\n"), done.stderr


@pytest.mark.parametrize("between", ["shell", "nothing"])
def test_a_stage_stops_like_ctrl_c_when_its_dvc_is_killed(tmp_path, between):
    """dvc -> sh -> python: kill -9 of dvc leaves the shell waiting on the stage, and the stage's watcher
    notices; dvc -> python: the parent-death signal."""
    child = tmp_path / "stage.py"
    watching = "is not None" if between == "shell" else "is None"
    child.write_text(STOPS_LIKE_CTRL_C.format(setup=f"assert lifeline.follow_dvc() {watching}"))
    out = tmp_path / "stage.out"
    stage = f"{sys.executable} {child} > {out} 2>&1; true"  # `; true`: the shell waits instead of exec
    fake_dvc = tmp_path / "bin" / "dvc"
    fake_dvc.parent.mkdir()
    fake_dvc.write_text(f"#!/bin/sh\nsh -c '{stage}'\n" if between == "shell" else f"#!/bin/sh\n{stage}\n")
    fake_dvc.chmod(0o755)
    dvc = subprocess.Popen([str(fake_dvc), "repro"], env={**os.environ, "DVC_STAGE": "train"},
                           start_new_session=True)
    try:
        assert wait_for(lambda: out.is_file() and "ready" in out.read_text(), 30), out.read_text()
        dvc.kill()
        dvc.wait()
        assert wait_for(lambda: not lifeline.group(dvc.pid), 5)  # a shell between left with the stage
        assert out.read_text() == "ready\nstopped like Ctrl-C\n"
    finally:
        lifeline.send(lifeline.group(dvc.pid), signal.SIGKILL)


def test_the_guard_ends_its_whole_group_when_its_parent_is_killed():
    """Parent -> guard -> sh -> 2 x sleep (grandchildren, as uvicorn is mlflow server's): kill -9 of the parent."""
    parent = subprocess.Popen([sys.executable, "-c", (
        "import os, subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-P', {lifeline.__file__!r}, str(os.getpid()), 'sh', '-c', "
        "'sleep 60 & sleep 60; wait'], start_new_session=True)\n"
        "time.sleep(60)")])
    guard = None
    try:
        assert wait_for(lambda: len(guarded(parent.pid)) == 4, 30)  # guard, sh and the two sleeps
        guard = min(guarded(parent.pid))
        parent.kill()
        parent.wait()
        assert wait_for(lambda: not lifeline.group(guard), 5)
    finally:
        lifeline.send(lifeline.group(guard) if guard else [], signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()


def test_the_reaper_ends_what_it_was_given_even_orphans_once_the_parent_is_killed_and_nothing_else():
    """Parent -> sh -> sleep (as a raylet and the agents that outlive it), the sh given to a reaper; parent ->
    another sleep, not given. kill -9 of the parent leaves the sh and its sleep orphans: the reaper ends them,
    and leaves the other sleep alone."""
    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        "from sddkit import lifeline\n"
        "other = subprocess.Popen(['sleep', '300'])\n"
        "ray = subprocess.Popen(['sh', '-c', 'sleep 300 & wait'])\n"
        "reaper = lifeline.start_reaper({ray.pid})\n"
        "print(reaper.pid, other.pid, flush=True)\n"
        "time.sleep(300)")], stdout=subprocess.PIPE, text=True)
    everyone: dict[int, psutil.Process] = {}
    try:
        reaper, other = map(int, parent.stdout.readline().split())
        roots = lifeline.handles([parent.pid])
        assert wait_for(lambda: len(lifeline.family(roots)) == 5, 30)  # parent, reaper, sleep, sh, sleep
        time.sleep(2 * lifeline.REAP_POLL_S)  # the reaper has looked at them
        everyone = lifeline.family(roots)
        given = [p for pid, p in everyone.items() if pid not in (parent.pid, reaper, other)]
        parent.kill()
        parent.wait()
        alive = lambda: [p for p in given if lifeline.running(p)]  # noqa: E731
        assert wait_for(lambda: not alive() and not lifeline.running(everyone[reaper]), 10), alive()
        assert lifeline.running(everyone[other])
    finally:
        lifeline.stop(list(everyone.values()), grace=0)
        if parent.poll() is None:
            parent.kill()


def guarded(parent: int) -> list[int]:
    """The process group led by ``parent``'s child, the guard (empty until it leads one)."""
    try:
        children = psutil.Process(parent).children()
    except psutil.Error:
        return []
    for child in children:
        if lifeline.group(child.pid):
            return [p.pid for p in lifeline.group(child.pid)]
    return []


@pytest.mark.slow  # about 70 s: two `dvc repro` of the whole pipeline
def test_killing_dvc_repro_stops_its_stage_and_the_next_repro_runs_each_round_once(repo, tmp_path):
    """kill -9 of `dvc repro` while the lottery stage trains: `sddkit run` stops as on Ctrl-C (its run KILLED);
    a second `dvc repro` continues that run and finishes both trajectories with every round once."""
    repo, env = repo
    set_param(repo, ["train"], {"epochs": 2, "batch_size": 100})
    set_param(repo, ["prune"], {"rounds": 3})
    log = tmp_path / "dvc.log"
    with open(log, "w") as out:
        dvc = subprocess.Popen(["dvc", "repro"], cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        assert wait_for(lambda: re.search(r"->\s+run", log.read_text()) or dvc.poll() is not None, 300)
        assert dvc.poll() is None, log.read_text()  # the lottery stage has opened its run and trains
        dvc.kill()
        dvc.wait()
        assert wait_for(lambda: not lifeline.group(dvc.pid), 10), log.read_text()
    finally:
        lifeline.send(lifeline.group(dvc.pid), signal.SIGKILL)
    (lottery,) = store(repo).trajectories("sddkit")
    assert lottery.info.status == "KILLED", log.read_text()

    run(["dvc", "repro"], repo, env)
    parents = store(repo).trajectories("sddkit")
    assert sorted(r.data.tags["sddkit.name"] for r in parents) == ["lottery", "reinit"]  # lottery was continued
    assert lottery.info.run_id in {r.info.run_id for r in parents}
    for parent in parents:
        assert parent.info.status == "FINISHED"
        rounds = [int(r.data.tags["sddkit.round"]) for r in store(repo).round_runs(parent.info.run_id)]
        assert sorted(rounds) == [0, 1, 2, 3]

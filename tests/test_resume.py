"""Resume, end to end on real MLflow sqlite stores: oneshot and reinit trajectories interrupted after a
round end with exactly the metrics of uninterrupted ones, and a `sddkit run` process killed (SIGKILL) in
the middle of a round is continued by the same command, with no round counted twice."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

import sddkit
from sddkit import runner, trajectory, twin
from conftest import StopAfter
from sddkit.config import load_config



def science(rows):
    """What a resumed trajectory must reproduce: every metric but the wall-clock times."""
    return [{k: v for k, v in r.items() if k not in ("round_seconds", "copied_round_seconds")} for r in rows]


def trajectories(client, experiment, mode=None):
    """The trajectory (parent) runs of ``experiment``, of retrain ``mode`` if given."""
    exp = client.get_experiment_by_name(experiment)
    query = "tags.`sddkit.kind` = 'trajectory'" + (f" and tags.`sddkit.retrain_mode` = '{mode}'" if mode else "")
    return client.search_runs([exp.experiment_id], query) if exp else []


def round_runs(client, parent_id):
    exp = client.get_run(parent_id).info.experiment_id
    runs = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.`sddkit.kind` = 'round'")
    return sorted(runs, key=lambda r: int(r.data.tags["sddkit.round"]))


def stored_masks(client, uri, parent_id):
    """Round -> mask of each finished round run, read with the documented loader."""
    return {int(r.data.tags["sddkit.round"]): sddkit.load_mask(r.info.run_id, uri)
            for r in round_runs(client, parent_id) if r.info.status == "FINISHED"}


def same_masks(a, b):
    return a.keys() == b.keys() and all(bool((a[n] == b[n]).all()) for n in a)


TINY_RESUME = {"data.train_size": 300, "train.epochs": 2, "prune.rounds": 3, "train.batch_size": 64,
               "train.milestones": [], "train.threads": 1}


def test_oneshot_interrupted_after_round_1_then_resumed_equals_an_uninterrupted_one(project, tmp_path):
    # One store, two experiments: the experiment is not part of a run's identity, so each holds its own run.
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    overrides = {**TINY_RESUME, "retrain.mode": "oneshot", "tracking.uri": uri}
    whole_cfg = load_config(overrides={**overrides, "tracking.experiment": "whole"})
    whole_store, whole = runner.run_trajectory(whole_cfg, project, quiet=True)

    cfg = load_config(overrides={**overrides, "tracking.experiment": "cut"})
    with pytest.raises(SystemExit) as stopped:
        runner.run_trajectory(cfg, project, quiet=True, reporter=StopAfter(1))
    assert stopped.value.code == 130
    client = MlflowClient(uri)
    (cut,) = trajectories(client, "cut")
    assert cut.info.status == "KILLED"
    assert [int(r.data.tags["sddkit.round"]) for r in round_runs(client, cut.info.run_id)] == [0, 1]

    store, resumed = runner.run_trajectory(cfg, project, quiet=True)
    assert store.run_id == cut.info.run_id and client.get_run(store.run_id).info.status == "FINISHED"
    assert len(resumed) == 4 and science(resumed) == science(whole)
    # Rounds 2 and 3 are pruned from the dense weights of round 0, reloaded from the store on resume.
    cut_masks, whole_masks = stored_masks(client, uri, store.run_id), stored_masks(client, uri, whole_store.run_id)
    assert sorted(cut_masks) == sorted(whole_masks) == [0, 1, 2, 3]
    for r in range(4):
        assert same_masks(cut_masks[r], whole_masks[r]), f"round {r}: the resumed mask differs"


def test_reinit_interrupted_after_round_1_then_resumed_equals_an_uninterrupted_one(project, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    base = {**TINY_RESUME, "tracking.uri": uri}
    client = MlflowClient(uri)
    reinit_rows = {}
    for experiment in ("whole", "cut"):
        lottery_cfg = load_config(overrides={**base, "retrain.mode": "lottery", "tracking.experiment": experiment})
        runner.run_trajectory(lottery_cfg, project, quiet=True)  # the lottery twin, to completion
        cfg = load_config(overrides={**base, "retrain.mode": "reinit", "tracking.experiment": experiment})
        assert cfg.retrain.masks_from is None
        if experiment == "cut":
            with pytest.raises(SystemExit) as stopped:
                runner.run_trajectory(cfg, project, quiet=True, reporter=StopAfter(1))
            assert stopped.value.code == 130
            (cut,) = trajectories(client, "cut", "reinit")
            assert cut.info.status == "KILLED"
            assert [int(r.data.tags["sddkit.round"]) for r in round_runs(client, cut.info.run_id)] == [0, 1]
        store, reinit_rows[experiment] = runner.run_trajectory(cfg, project, quiet=True)
    assert store.run_id == cut.info.run_id and client.get_run(store.run_id).info.status == "FINISHED"
    assert len(reinit_rows["cut"]) == 4 and science(reinit_rows["cut"]) == science(reinit_rows["whole"])

    # The resumed reinit trajectory trained round by round on its lottery twin's masks.
    (lottery,) = trajectories(client, "cut", "lottery")
    assert lottery.info.status == "FINISHED"
    lottery_round_masks = stored_masks(client, uri, lottery.info.run_id)
    reinit_masks = stored_masks(client, uri, store.run_id)
    assert sorted(reinit_masks) == sorted(lottery_round_masks) == [0, 1, 2, 3]
    for r in range(1, 4):
        assert same_masks(reinit_masks[r], lottery_round_masks[r]), f"round {r}: reinit's mask is not the lottery's"
        assert not bool(all(m.all() for m in reinit_masks[r].values()))  # a real (pruned) mask
    assert all(bool(m.all()) for m in reinit_masks[0].values())  # round 0 is dense


# ---------------------------------------------------------------- a real process, killed mid-round

# Rounds of about a second each on one CPU thread, so a SIGKILL can land in the middle of round 2.
KILLED_RUN = {"data.train_size": 1000, "train.epochs": 40, "prune.rounds": 3, "train.threads": 1}
# A dead owner's lease must be taken over at once: a rerun waiting for its heartbeat to go stale (a minute)
# cannot finish within this many seconds of the kill.
RERUN_LIMIT_S = 50


def sddkit_run(folder: Path, uri: str, log: Path) -> subprocess.Popen:
    """``sddkit run`` of KILLED_RUN in ``folder`` (a project root), in its own process group."""
    sets = [arg for key, value in {**KILLED_RUN, "tracking.uri": uri}.items() for arg in ("--set", f"{key}={value}")]
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME")}
    env["SDDKIT_NO_DOWNLOAD"] = "1"
    # The process runs the sddkit this test imported, wherever the test runs from.
    env["PYTHONPATH"] = os.pathsep.join([str(Path(sddkit.__file__).resolve().parent.parent),
                                         *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.Popen([sys.executable, "-m", "sddkit.cli", "run", *sets], cwd=folder, env=env,
                            stdin=subprocess.DEVNULL, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


def wait_until(what: str, check, proc: subprocess.Popen, log: Path, timeout: float):
    """Poll ``check`` (exceptions from a store being written meanwhile count as 'not yet') until it
    returns something truthy; fail if the process ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = check()
        except Exception:  # sqlite busy, run half-created: look again
            found = None
        if found:
            return found
        if proc.poll() is not None:
            pytest.fail(f"sddkit run exited ({proc.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    pytest.fail(f"no {what} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def per_round_science(client, parent_id):
    """Each finished round's stored metrics (latest values) and per-epoch histories, without round_seconds."""
    out = {}
    for run in round_runs(client, parent_id):
        if run.info.status != "FINISHED":
            continue
        metrics = {k: v for k, v in run.data.metrics.items() if k not in ("round_seconds", "copied_round_seconds")}
        epochs = {k: [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, k),
                                                         key=lambda m: (m.step, m.timestamp))]
                  for k in metrics if k.startswith("epoch/")}
        out[int(run.data.tags["sddkit.round"])] = (metrics, epochs)
    return out


def test_sddkit_run_killed_mid_round_is_continued_by_the_same_command(tmp_path):
    cut_root, whole_root = tmp_path / "cut", tmp_path / "whole"
    for root in (cut_root, whole_root):
        (root / ".git").mkdir(parents=True)  # marks the project root
    cut_uri = f"sqlite:///{cut_root}/mlflow.db"
    experiment = load_config().tracking.experiment
    whole_cfg = load_config(overrides={**KILLED_RUN, "tracking.uri": f"sqlite:///{whole_root}/mlflow.db"})

    procs = []
    try:
        first_log = tmp_path / "first.log"
        first = sddkit_run(cut_root, cut_uri, first_log)
        procs.append(first)
        # The store exists once the run has written its first artifact (before round 0 trains).
        wait_until("artifact folder", lambda: (cut_root / "mlruns").exists(), first, first_log, 120)
        client = MlflowClient(cut_uri)

        def round_1_finished():
            exp = client.get_experiment_by_name(experiment)
            runs = client.search_runs([exp.experiment_id], "tags.`sddkit.kind` = 'round' and tags.`sddkit.round` = '1'")
            return next((r for r in runs if r.info.status == "FINISHED"), None)
        round_1 = wait_until("finished round 1", round_1_finished, first, first_log, 120)
        # Round 2 is training now (its run, created when it started, is RUNNING): kill a third of a round in.
        time.sleep(min(max(0.3 * round_1.data.metrics["round_seconds"], 0.1), 2.0))
        assert first.poll() is None, f"sddkit run ended before the kill:\n{first_log.read_text()[-3000:]}"
        os.killpg(first.pid, signal.SIGKILL)
        assert first.wait(timeout=30) == -signal.SIGKILL
        killed_at = time.monotonic()

        found = trajectories(client, experiment)
        assert len(found) == 1, [r.info.run_id for r in found]
        parent = found[0]
        assert parent.info.status == "RUNNING"  # nobody closed it: the process died
        before = {int(r.data.tags["sddkit.round"]): r.info.run_id
                  for r in round_runs(client, parent.info.run_id) if r.info.status == "FINISHED"}
        assert sorted(before) == [0, 1], f"the kill should land in round 2, but rounds {sorted(before)} had finished"

        second_log = tmp_path / "second.log"
        second = sddkit_run(cut_root, cut_uri, second_log)
        procs.append(second)
        # Meanwhile, the reference: the same config, uninterrupted, in another project and store.
        whole_store, _ = runner.run_trajectory(whole_cfg, whole_root, quiet=True)
        # The dead process's ownership lease is taken over at once (same host, its pid is gone), not after
        # its heartbeat goes stale: the rerun takes seconds (about 20 on two busy cores).
        try:
            code = second.wait(timeout=max(1.0, killed_at + RERUN_LIMIT_S - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"the rerun did not finish within {RERUN_LIMIT_S} s of the kill (waiting for the dead "
                        f"process's lease to go stale?):\n{second_log.read_text()[-3000:]}")
        assert code == 0, f"the rerun failed ({code}):\n{second_log.read_text()[-3000:]}"
    finally:
        for proc in procs:
            kill_group(proc)

    whole_client = MlflowClient(whole_cfg.tracking.uri)
    # The rerun continued the killed trajectory instead of starting another one, and finished it.
    found = trajectories(client, experiment)
    assert [r.info.run_id for r in found] == [parent.info.run_id], "the rerun started another trajectory"
    resumed = found[0]
    assert resumed.info.run_id == parent.info.run_id and resumed.info.status == "FINISHED"
    assert resumed.data.tags["sddkit.config_hash"] == whole_client.get_run(whole_store.run_id).data.tags[
        "sddkit.config_hash"]
    # Exactly one finished run per round; rounds 0 and 1 were kept, not redone; a round cut off midway may
    # remain, but only as KILLED.
    rounds = round_runs(client, parent.info.run_id)
    finished = [int(r.data.tags["sddkit.round"]) for r in rounds if r.info.status == "FINISHED"]
    assert finished == [0, 1, 2, 3]
    assert {r.info.status for r in rounds} <= {"FINISHED", "KILLED"}
    kept = {int(r.data.tags["sddkit.round"]): r.info.run_id for r in rounds if r.info.status == "FINISHED"}
    assert {r: kept[r] for r in (0, 1)} == before
    # The parent's per-round series counts each round once.
    assert sorted(m.step for m in client.get_metric_history(parent.info.run_id, "test_acc")) == [0, 1, 2, 3]
    # And the science equals the uninterrupted run's, round by round, epoch by epoch.
    cut_science = per_round_science(client, parent.info.run_id)
    whole_science = per_round_science(whole_client, whole_store.run_id)
    assert sorted(whole_science) == [0, 1, 2, 3]
    for r in range(4):
        assert cut_science[r] == whole_science[r], f"round {r} differs from the uninterrupted run"


# ---------------------------------------------------------------- reinit beside its lottery twin, round by round

def test_a_reinit_beside_a_stopped_twin_waits_then_stops_in_one_line_and_both_resume_exactly(project, tmp_path,
                                                                                            monkeypatch):
    """The twin stops after round 1 (its round-2 mask never comes): without --wait the reinit says which round
    it lacks; with it, it trains rounds 0 and 1, waits, then stops in one line. Once the twin is resumed and
    finished, the reinit's rerun continues it, to exactly the numbers of the sequential order."""
    from sddkit.tracking import TrackingError
    monkeypatch.setattr(twin, "TWIN_GRACE_S", 1.0)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    base = {**TINY_RESUME, "tracking.uri": uri}
    config = lambda mode, exp: load_config(overrides={**base, "retrain.mode": mode, "tracking.experiment": exp})  # noqa: E731
    runner.run_trajectory(config("lottery", "sequential"), project, quiet=True)
    _, sequential = runner.run_trajectory(config("reinit", "sequential"), project, quiet=True)

    with pytest.raises(SystemExit):
        runner.run_trajectory(config("lottery", "side"), project, quiet=True, reporter=StopAfter(1))
    reinit = config("reinit", "side")
    with pytest.raises(TrackingError, match=r"has no round-2 mask|stopped \(KILLED"):
        runner.run_trajectory(reinit, project, quiet=True)  # no --wait: every round must be there
    told = []

    class Waiting(trajectory.Reporter):
        def waiting(self, round_index, text):
            told.append((round_index, text))
    with pytest.raises(TrackingError) as stopped:
        runner.run_trajectory(reinit, project, quiet=True, wait=True, reporter=Waiting())
    line = str(stopped.value)
    assert "\n" not in line and "before its round-2 mask" in line and "resume it" in line, line
    assert [r for r, _ in told] == [2] and told[0][1].startswith("waiting for lottery round 2")
    client = MlflowClient(uri)
    (cut,) = trajectories(client, "side", "reinit")
    assert cut.info.status == "FAILED"
    assert [int(r.data.tags["sddkit.round"]) for r in round_runs(client, cut.info.run_id)
            if r.info.status == "FINISHED"] == [0, 1]

    runner.run_trajectory(config("lottery", "side"), project, quiet=True)  # the twin resumed
    store, resumed = runner.run_trajectory(reinit, project, quiet=True, wait=True)
    assert store.run_id == cut.info.run_id and science(resumed) == science(sequential)


def sddkit_mode(folder: Path, uri: str, log: Path, mode: str, *extra: str) -> subprocess.Popen:
    """``sddkit run`` of KILLED_RUN in ``mode`` (its own process group), with ``extra`` arguments."""
    sets = [arg for key, value in {**KILLED_RUN, "tracking.uri": uri, "retrain.mode": mode}.items()
            for arg in ("--set", f"{key}={value}")]
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME")}
    env["SDDKIT_NO_DOWNLOAD"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(Path(sddkit.__file__).resolve().parent.parent),
                                         *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.Popen([sys.executable, "-m", "sddkit.cli", "run", *sets, *extra], cwd=folder, env=env,
                            stdin=subprocess.DEVNULL, stdout=log.open("a"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def test_reinit_beside_its_twin_both_killed_mid_round_then_resumed_equal_the_sequential_order(tmp_path):
    """The pipelined pair: a lottery `sddkit run` and a reinit `sddkit run --wait` side by side, the reinit
    training round k beside the twin's round k. The twin is killed (SIGKILL) in the middle of round 2, the
    reinit while it waits for it; both commands rerun. Both end with exactly the numbers of the sequential order
    (lottery, then reinit, in another store), and the reinit's rounds overlapped its twin's."""
    side, alone = tmp_path / "side", tmp_path / "alone"
    for root in (side, alone):
        (root / ".git").mkdir(parents=True)
    uri = f"sqlite:///{side}/mlflow.db"
    experiment = load_config().tracking.experiment
    sequential = {}
    procs = []
    try:
        logs = {mode: tmp_path / f"{mode}.log" for mode in ("lottery", "reinit")}
        twin = sddkit_mode(side, uri, logs["lottery"], "lottery")
        procs.append(twin)
        wait_until("artifact folder", lambda: (side / "mlruns").exists(), twin, logs["lottery"], 120)
        reinit = sddkit_mode(side, uri, logs["reinit"], "reinit", "--wait")
        procs.append(reinit)
        client = MlflowClient(uri)

        def finished_round(mode, r):
            (parent,) = trajectories(client, experiment, mode)
            return next((x for x in round_runs(client, parent.info.run_id)
                         if int(x.data.tags["sddkit.round"]) == r and x.info.status == "FINISHED"), None)
        wait_until("the twin's round 1", lambda: finished_round("lottery", 1), twin, logs["lottery"], 180)
        time.sleep(0.5)  # round 2 is training, its mask stored: kill it midway
        os.killpg(twin.pid, signal.SIGKILL)
        twin.wait(timeout=30)

        def waits():
            (parent,) = trajectories(client, experiment, "reinit")
            return parent.data.tags.get("sddkit.state", "").startswith("waiting for lottery round")
        wait_until("the reinit waiting for its twin", waits, reinit, logs["reinit"], 180)
        os.killpg(reinit.pid, signal.SIGKILL)
        reinit.wait(timeout=30)

        procs += [sddkit_mode(side, uri, logs["lottery"], "lottery"),
                  sddkit_mode(side, uri, logs["reinit"], "reinit", "--wait")]
        # Meanwhile, the reference: lottery, then reinit, one after the other, in another store.
        for mode in ("lottery", "reinit"):
            cfg = load_config(overrides={**KILLED_RUN, "retrain.mode": mode,
                                         "tracking.uri": f"sqlite:///{alone}/mlflow.db"})
            store, _ = runner.run_trajectory(cfg, alone, quiet=True)
            sequential[mode] = per_round_science(MlflowClient(cfg.tracking.uri), store.run_id)
        for proc, mode in zip(procs[2:], ("lottery", "reinit")):
            assert proc.wait(timeout=300) == 0, logs[mode].read_text()[-3000:]
    finally:
        for proc in procs:
            kill_group(proc)

    for mode in ("lottery", "reinit"):
        (parent,) = trajectories(client, experiment, mode)
        assert parent.info.status == "FINISHED" and "sddkit.state" not in parent.data.tags
        resumed = per_round_science(client, parent.info.run_id)
        assert sorted(resumed) == [0, 1, 2, 3]
        for r in range(4):
            assert resumed[r] == sequential[mode][r], f"{mode} round {r} differs from the sequential order"
    (lottery,), (reinit_run,) = trajectories(client, experiment, "lottery"), trajectories(client, experiment, "reinit")
    ends = {int(x.data.tags["sddkit.round"]): x.info.end_time for x in round_runs(client, lottery.info.run_id)
            if x.info.status == "FINISHED"}
    starts = {int(x.data.tags["sddkit.round"]): x.info.start_time for x in round_runs(client, reinit_run.info.run_id)
              if x.info.status == "FINISHED"}
    assert any(starts[r] < ends[r] for r in (1, 2, 3)), "no reinit round ran beside its twin's"

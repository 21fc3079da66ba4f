"""The MLflow store under faults, on real sqlite stores: a parent killed before its params were logged, damaged
or deleted artifacts (one line naming the run and the file, and a repair that keeps the finished rounds),
damaged store files, and stores that cannot be written (read-only, full)."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from sddkit import runner, selection, tracking
from sddkit.cli import main
from sddkit.config import from_params, load_config
from sddkit.fingerprint import code_hash
from sddkit.tracking import Tracker, TrackingError, param_text, trajectory_tags
from conftest import StopAfter
from test_resume import round_runs, science, trajectories

SMALL = {"data.train_size": 300, "train.epochs": 2, "prune.rounds": 3, "train.batch_size": 64,
         "train.milestones": [], "train.threads": 1}


def small_config(tmp_path, **extra):
    return load_config(overrides={**SMALL, "tracking.uri": f"sqlite:///{tmp_path}/mlflow.db", **extra})


def artifact_file(client: MlflowClient, run_id: str, path: str) -> Path:
    return Path(client.get_run(run_id).info.artifact_uri.removeprefix("file://")) / path


def round_id(client, parent_id, k):
    return next(r.info.run_id for r in round_runs(client, parent_id)
                if int(r.data.tags["sddkit.round"]) == k and r.info.status == "FINISHED")


def one_line(message: str) -> bool:
    return "\n" not in message.strip() and "Traceback" not in message


# ---------------------------------------------------------------- params and tags on resume

def test_a_parent_killed_before_its_params_were_logged_gets_them_all_on_resume(project, tmp_path):
    cfg = small_config(tmp_path)
    tracker = Tracker(cfg.tracking.uri, project)
    exp = tracker.experiment_id(cfg.tracking.experiment)
    # What a kill leaves between creating the parent run and logging its params: tags, no params.
    half = tracker.client.create_run(exp, tags=trajectory_tags(cfg, project, code_hash()), run_name=cfg.name)
    assert tracker.client.get_run(half.info.run_id).data.params == {}

    store, rows = runner.run_trajectory(cfg, project, quiet=True)

    assert store.run_id == half.info.run_id  # continued, not replaced
    run = tracker.client.get_run(store.run_id)
    assert run.info.status == "FINISHED" and len(rows) == 4
    assert run.data.params == {k: param_text(v) for k, v in cfg.flat().items()}
    # What analyze and a reinit twin read back from the params is this very config.
    assert from_params(run.data.params).identity_hash() == cfg.identity_hash()


def test_a_finished_run_without_params_gets_them_when_it_is_reported(project, tmp_path):
    cfg = small_config(tmp_path)
    store, rows = runner.run_trajectory(cfg, project, quiet=True)
    tracker = Tracker(cfg.tracking.uri, project)
    # The same finished run as older code could leave it: every param lost (a fresh store without them).
    import sqlite3
    with sqlite3.connect(tracker.uri.removeprefix("sqlite:///")) as con:
        con.execute("delete from params where run_uuid = ?", (store.run_id,))
    assert tracker.client.get_run(store.run_id).data.params == {}

    again, again_rows = runner.run_trajectory(cfg, project, quiet=True)

    assert again.run_id == store.run_id and again_rows == rows  # reported, not retrained
    assert from_params(tracker.client.get_run(store.run_id).data.params).identity_hash() == cfg.identity_hash()


# ---------------------------------------------------------------- damaged artifacts

def test_a_truncated_round_mask_gives_one_line_and_redo_from_repairs_it_keeping_earlier_rounds(project, tmp_path):
    whole_store, whole = runner.run_trajectory(small_config(tmp_path, **{"tracking.experiment": "whole"}), project,
                                               quiet=True)
    cfg = small_config(tmp_path, **{"tracking.experiment": "cut"})
    with pytest.raises(SystemExit):
        runner.run_trajectory(cfg, project, quiet=True, reporter=StopAfter(1))
    client = MlflowClient(cfg.tracking.uri)
    parent = trajectories(client, "cut")[0].info.run_id
    round_0, damaged = round_id(client, parent, 0), round_id(client, parent, 1)
    mask = artifact_file(client, damaged, "mask.npz")
    mask.write_bytes(mask.read_bytes()[:40])  # a copy cut short

    with pytest.raises(TrackingError) as caught:
        runner.run_trajectory(cfg, project, quiet=True)
    message = str(caught.value)
    assert one_line(message)
    assert damaged in message and "mask.npz" in message and "--redo-from 1" in message
    assert "retrain every round" in message  # what --force would cost, said where it is mentioned

    store, rows = runner.run_trajectory(cfg, project, quiet=True, redo_from=1)
    assert store.run_id == parent and science(rows) == science(whole)
    rounds = round_runs(client, parent)
    finished = [(int(r.data.tags["sddkit.round"]), r.info.run_id) for r in rounds if r.info.status == "FINISHED"]
    assert [k for k, _ in finished] == [0, 1, 2, 3] and finished[0][1] == round_0  # round 0 kept, not redone
    replaced = client.get_run(damaged)
    assert replaced.info.status == "KILLED" and "sddkit.replaced" in replaced.data.tags
    assert client.get_run(parent).info.status == "FINISHED"


def test_a_resume_missing_an_earlier_rounds_files_stops_in_one_line_offering_redo_from(project, tmp_path):
    """With the parent's and round 2's artifact folders deleted, a resume finished with exit 0 and no warning,
    and the loss surfaced later in load_round (issue 29). Now it stops before training, offers the repair, and
    the repair puts back what the parent lost."""
    import shutil
    cfg = small_config(tmp_path, **{"prune.rounds": 4})
    with pytest.raises(SystemExit):
        runner.run_trajectory(cfg, project, quiet=True, reporter=StopAfter(3))
    client = MlflowClient(cfg.tracking.uri)
    parent = trajectories(client, "sddkit")[0].info.run_id
    lost = round_id(client, parent, 2)
    shutil.rmtree(artifact_file(client, parent, ""))
    shutil.rmtree(artifact_file(client, lost, ""))

    result = CliRunner().invoke(main, ["run", *sets(cfg)])
    assert result.exit_code == 1, result.output
    assert result.output.count("error:") == 1 and "Traceback" not in result.output
    assert lost in result.output and "round 2" in result.output and "--redo-from 2" in result.output
    assert [int(r.data.tags["sddkit.round"]) for r in round_runs(client, parent)] == [0, 1, 2, 3]  # nothing trained
    assert client.get_run(parent).info.status == "KILLED"  # left as it was

    result = CliRunner().invoke(main, ["run", *sets(cfg), "--redo-from", "2"])
    assert result.exit_code == 0, result.output
    assert "noisy_labels.npy of run" in result.output  # put back, and said so
    assert artifact_file(client, parent, "noisy_labels.npy").is_file()
    import sddkit
    mask, weights = sddkit.load_round(parent, 2, tracking_uri=cfg.tracking.uri)
    assert mask and weights


def test_deleted_rewind_is_rebuilt_on_resume_to_the_same_results(project, tmp_path):
    rewind_late = {"retrain.rewind_step": 3}  # the rewind state is round 0's weights at step 3: replayed
    whole_store, whole = runner.run_trajectory(small_config(tmp_path, **rewind_late, **{"tracking.experiment":
                                                                                        "whole"}), project, quiet=True)
    cfg = small_config(tmp_path, **rewind_late, **{"tracking.experiment": "cut"})
    with pytest.raises(SystemExit):
        runner.run_trajectory(cfg, project, quiet=True, reporter=StopAfter(1))
    client = MlflowClient(cfg.tracking.uri)
    parent = trajectories(client, "cut")[0].info.run_id
    rewind = artifact_file(client, parent, "state/rewind.pt")
    kept_rewind = rewind.read_bytes()
    rewind.unlink()

    store, rows = runner.run_trajectory(cfg, project, quiet=True)

    assert store.run_id == parent and science(rows) == science(whole)
    assert "sddkit.rebuilt.rewind" in client.get_run(parent).data.tags  # a deleted state is rebuilt, not silently
    import torch
    import io
    rebuilt = torch.load(io.BytesIO(rewind.read_bytes()), weights_only=True)
    original = torch.load(io.BytesIO(kept_rewind), weights_only=True)
    assert rebuilt.keys() == original.keys() and all(torch.equal(rebuilt[k], original[k]) for k in original)


def test_an_init_that_rebuilds_differently_stops_the_resume_in_one_line(project, tmp_path):
    """The init is rebuilt from the seed, never stored: on another torch or CPU it could come out otherwise,
    and a lottery trajectory continued from another init would no longer be one. The recorded digest says so."""
    cfg = small_config(tmp_path)
    with pytest.raises(SystemExit):
        runner.run_trajectory(cfg, project, quiet=True, reporter=StopAfter(1))
    client = MlflowClient(cfg.tracking.uri)
    parent = trajectories(client, "sddkit")[0].info.run_id
    client.set_tag(parent, tracking.INIT_DIGEST, "0" * 64)  # what another machine's init would record
    result = CliRunner().invoke(main, ["run", *sets(cfg)])
    assert result.exit_code == 1 and result.output.count("error:") == 1 and "Traceback" not in result.output
    assert "init rebuilt from the seed is not the one this trajectory started from" in result.output
    assert len(round_runs(client, parent)) == 2  # rounds 0 and 1, nothing trained on the other init


def test_reinit_stops_before_training_when_a_lottery_round_mask_is_missing(project, tmp_path):
    lottery = small_config(tmp_path)
    lottery_store, _ = runner.run_trajectory(lottery, project, quiet=True)
    client = MlflowClient(lottery.tracking.uri)
    missing = round_id(client, lottery_store.run_id, 2)
    artifact_file(client, missing, "mask.npz").unlink()

    reinit = small_config(tmp_path, **{"retrain.mode": "reinit"})
    with pytest.raises(TrackingError) as caught:
        runner.run_trajectory(reinit, project, quiet=True)
    message = str(caught.value)
    assert one_line(message) and missing in message and "--redo-from 2" in message
    assert trajectories(client, reinit.tracking.experiment, "reinit") == []  # nothing trained, nothing written


def test_sddkit_run_reports_a_damaged_mask_in_one_line(project, tmp_path):
    cfg = small_config(tmp_path)
    with pytest.raises(SystemExit):
        runner.run_trajectory(cfg, project, quiet=True, reporter=StopAfter(1))
    client = MlflowClient(cfg.tracking.uri)
    parent = trajectories(client, cfg.tracking.experiment)[0].info.run_id
    artifact_file(client, round_id(client, parent, 1), "mask.npz").write_bytes(b"PK\x03\x04 cut")

    result = CliRunner().invoke(main, ["run", *sets(cfg)])

    assert result.exit_code == 1, result.output
    assert result.output.count("error:") == 1 and "Traceback" not in result.output
    assert "mask.npz is corrupt (BadZipFile)" in result.output


def sets(cfg) -> list[str]:
    out = []
    for key in (*SMALL, "tracking.uri"):
        out += ["--set", f"{key}={param_text(cfg.flat()[key])}"]
    return out


# ---------------------------------------------------------------- damaged store files

@pytest.mark.parametrize("damage", ["empty", "header", "folder"])
def test_a_damaged_store_file_is_refused_in_one_line_and_left_as_it_is(project, tmp_path, damage):
    db = tmp_path / "mlflow.db"
    if damage == "folder":
        db.mkdir()
    else:
        db.write_bytes(b"" if damage == "empty" else b"\0" * 100 + b"rest of a store")
    before = db.read_bytes() if db.is_file() else None

    result = CliRunner().invoke(main, ["run", "--set", f"tracking.uri=sqlite:///{db}", "--set", "prune.rounds=1"])

    assert result.exit_code == 1, result.output
    assert result.output.count("error:") == 1 and "Traceback" not in result.output
    assert str(db) in result.output and ("back" in result.output or "aside" in result.output)
    assert (db.read_bytes() if db.is_file() else None) == before  # not turned into a new, empty store
    assert not (project / "mlruns").exists()


# ---------------------------------------------------------------- stores that refuse writes

@contextlib.contextmanager
def mounted_tmpfs(folder: Path, size: str, read_only: bool = False):
    """A real tmpfs at ``folder`` (root only): a full disk or a read-only mount that even root cannot write."""
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'not permitted'}): the test needs "
                    f"root with CAP_SYS_ADMIN")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_read_only_artifact_folder_fails_at_start_up_with_nothing_written(project, tmp_path):
    cfg = small_config(tmp_path)
    with mounted_tmpfs(tmp_path / "mlruns", "1m", read_only=True):
        with pytest.raises(TrackingError) as caught:
            runner.run_trajectory(cfg, project, quiet=True)
    message = str(caught.value)
    assert one_line(message) and str(tmp_path / "mlruns") in message and "Read-only" in message
    client = MlflowClient(cfg.tracking.uri)
    assert trajectories(client, cfg.tracking.experiment) == []


def test_too_little_room_for_the_trajectory_fails_at_start_up(project, tmp_path):
    cfg = small_config(tmp_path)
    with mounted_tmpfs(tmp_path / "mlruns", "1m"):
        with pytest.raises(TrackingError) as caught:
            runner.run_trajectory(cfg, project, quiet=True)
    message = str(caught.value)
    assert one_line(message) and "MiB free" in message and "needs about" in message
    assert trajectories(MlflowClient(cfg.tracking.uri), cfg.tracking.experiment) == []


class FillDiskAfter(StopAfter):
    """Fills the artifact disk right after round ``last_round`` is stored: the next round cannot be."""

    def __init__(self, last_round, folder: Path):
        super().__init__(last_round)
        self.folder = folder

    def round_done(self, round_index, metrics):
        if round_index == self.last_round:
            with open(self.folder / "filler", "wb") as f, contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * 2**20)


def test_a_disk_that_fills_up_mid_trajectory_leaves_no_run_running_and_the_rerun_continues(project, tmp_path):
    cfg = small_config(tmp_path)
    client = MlflowClient(cfg.tracking.uri)
    with mounted_tmpfs(tmp_path / "mlruns", "12m") as folder:
        with pytest.raises(TrackingError) as caught:
            runner.run_trajectory(cfg, project, quiet=True, reporter=FillDiskAfter(1, folder))
        message = str(caught.value)
        assert one_line(message) and "round 2 could not be stored" in message and "is full" in message
        parent = trajectories(client, cfg.tracking.experiment)[0]
        assert parent.info.status == "FAILED"
        statuses = {int(r.data.tags["sddkit.round"]): r.info.status for r in round_runs(client, parent.info.run_id)}
        assert statuses == {0: "FINISHED", 1: "FINISHED", 2: "FAILED"}
        (folder / "filler").unlink()
        store, rows = runner.run_trajectory(cfg, project, quiet=True)
    assert store.run_id == parent.info.run_id and len(rows) == 4


def fill(folder: Path) -> None:
    """Write a file into ``folder`` until its disk refuses more. Unbuffered: a buffered file kept what the full disk
    refused and raised ENOSPC again when it was closed, outside the suppress (CI met it)."""
    with contextlib.suppress(OSError), open(folder / "filler", "wb", buffering=0) as f:
        while True:
            f.write(b"\0" * 2**16)


def test_a_full_disk_under_the_whole_project_is_one_line_the_run_failed_and_the_rerun_continues(tmp_path,
                                                                                                monkeypatch):
    """The store's database and artifacts on one disk that something else fills mid-run (as a user met it):
    one line naming the disk and the room needed, the parent FAILED (room kept for that: the store's reserve),
    the lease released; once there is room, the rerun continues."""
    sets = [a for k, v in {**SMALL, "prune.rounds": 12}.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    with mounted_tmpfs(tmp_path / "disk", "12m") as folder:
        (folder / ".git").mkdir()
        log = tmp_path / "run.log"
        with open(log, "w") as err:
            run = subprocess.Popen([sys.executable, "-m", "sddkit.cli", "run", *sets], cwd=folder, stderr=err,
                                   stdout=subprocess.DEVNULL, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
            try:
                deadline = time.monotonic() + 300
                while "round 1/12  sparsity" not in log.read_text() and time.monotonic() < deadline:
                    assert run.poll() is None, log.read_text()
                    time.sleep(0.1)
                fill(folder)
                assert run.wait(timeout=120) == 1, log.read_text()
            finally:
                run.kill()
        output = log.read_text()
        errors = [line for line in output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in output, output
        assert f"the disk of {folder}" in errors[0] and f"mounted at {folder}" in errors[0], errors[0]
        assert "is full: 0.0 MiB free, about" in errors[0] and "MiB more needed" in errors[0], errors[0]
        assert "this run is marked FAILED" in errors[0] and "continues after round" in errors[0], errors[0]
        assert len(output.splitlines()) < 20, output  # the round lines, the run's line, the error
        with contextlib.closing(sqlite3.connect(folder / "mlflow.db")) as db:
            (status,) = db.execute("select status from runs where name not like '%/round-%'").fetchone()
            leases = db.execute("select key from experiment_tags where key like 'sddkit.lease.%'").fetchall()
        assert status == "FAILED" and leases == []

        (folder / "filler").unlink()
        monkeypatch.chdir(folder)
        again = CliRunner().invoke(main, ["run", *sets])
        assert again.exit_code == 0, again.output
        assert "continuing after round" in again.output
        with contextlib.closing(sqlite3.connect(folder / "mlflow.db")) as db:
            parents = db.execute("select status from runs where name not like '%/round-%'").fetchall()
        assert parents == [("FINISHED",)]


def test_a_store_call_to_a_server_that_is_gone_fails_within_seconds_in_one_line(project):
    """MLflow's own HTTP defaults (7 retries, backoff factor 2, 120 s a try) kept a call to a killed server
    going for minutes; sddkit bounds them (failures.HTTP_BOUNDS), and says what happened in one line."""
    from mlflow.exceptions import MlflowException
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"  # closed once the probe is
    started = time.monotonic()
    with pytest.raises(MlflowException) as caught:
        MlflowClient(url).search_experiments()
    assert time.monotonic() - started < 40
    from sddkit import failures
    line = failures.explain(caught.value)
    assert line == (f"the tracking server at {url} is not answering (connection refused); start it again "
                    f"(`sddkit server`) or check MLFLOW_TRACKING_URI")


# ---------------------------------------------------------------- kills between two writes

def test_a_kill_between_a_round_finishing_and_the_parent_curve_is_healed_on_resume(project, tmp_path, monkeypatch):
    cfg = small_config(tmp_path)
    log_batch = MlflowClient.log_batch

    def killed_before_round_1_reaches_the_parent(self, run_id, metrics=(), **kwargs):
        if any(m.key == "test_acc" and m.step == 1 for m in metrics) and "round" not in {m.key for m in metrics}:
            raise KeyboardInterrupt  # the process dies here: round 1's run is FINISHED, the parent never heard
        return log_batch(self, run_id, metrics=metrics, **kwargs)
    monkeypatch.setattr(MlflowClient, "log_batch", killed_before_round_1_reaches_the_parent)
    with pytest.raises(SystemExit):
        runner.run_trajectory(cfg, project, quiet=True)
    monkeypatch.setattr(MlflowClient, "log_batch", log_batch)
    client = MlflowClient(cfg.tracking.uri)
    parent = trajectories(client, cfg.tracking.experiment)[0].info.run_id
    assert sorted(m.step for m in client.get_metric_history(parent, "test_acc")) == [0]

    store, rows = runner.run_trajectory(cfg, project, quiet=True)

    assert store.run_id == parent
    for key in ("test_acc", "sparsity", "train_acc_noisy"):
        history = client.get_metric_history(parent, key)
        assert sorted(m.step for m in history) == [0, 1, 2, 3], key
        assert {m.step: m.value for m in history} == {r["round"]: r[key] for r in rows}


def test_a_kill_while_an_artifact_is_written_never_leaves_half_a_file_under_its_name(project, tmp_path,
                                                                                    monkeypatch):
    import sddkit.files
    cfg = small_config(tmp_path)
    replace, written = sddkit.files.os.replace, []

    def killed_on_the_second_weights(src, dst):
        if str(dst).endswith("weights.pt"):
            written.append(dst)
            if len(written) == 2:
                raise KeyboardInterrupt  # the temporary file is complete, the rename never happens
        return replace(src, dst)
    monkeypatch.setattr(sddkit.files.os, "replace", killed_on_the_second_weights)
    with pytest.raises(SystemExit):
        runner.run_trajectory(cfg, project, quiet=True)
    monkeypatch.setattr(sddkit.files.os, "replace", replace)
    folder = Path(written[1]).parent
    assert not Path(written[1]).exists() and not list(folder.glob(".*.tmp"))  # neither half a file nor litter

    store, rows = runner.run_trajectory(cfg, project, quiet=True)
    client = MlflowClient(cfg.tracking.uri)
    finished = [int(r.data.tags["sddkit.round"]) for r in round_runs(client, store.run_id)
                if r.info.status == "FINISHED"]
    assert finished == [0, 1, 2, 3] and len(rows) == 4


# ---------------------------------------------------------------- filter strings

def test_selectors_with_quotes_or_filter_syntax_never_reach_an_mlflow_filter(project, tmp_path):
    from sddkit.tracking import literal
    cfg = small_config(tmp_path, **{"prune.rounds": 1})
    runner.run_trajectory(cfg, project, quiet=True)
    hostile = "x' or '1'='1"
    with pytest.raises(TrackingError):
        literal(hostile)
    assert literal("lottery") == "'lottery'"
    result = CliRunner().invoke(main, ["compare", "--runs", hostile, "lottery", "--where", f"seed={hostile}"],
                                env={"MLFLOW_TRACKING_URI": cfg.tracking.uri})
    assert result.exit_code == 1 and result.output.count("error:") == 1, result.output
    # Matched in Python as a tag or param KEY=VALUE, not spliced into a filter: nothing matches, all is named.
    assert f"--runs {hostile}: no trajectory" in result.output and "names there: lottery" in result.output


# ---------------------------------------------------------------- concurrent writers

def test_four_configs_started_at_once_into_a_fresh_store_all_finish_with_nothing_lost(tmp_path):
    import os
    import sys
    root = tmp_path / "fresh"
    (root / ".git").mkdir(parents=True)
    uri = f"sqlite:///{root}/mlflow.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    sets = [a for key in ("data.train_size=200", "train.epochs=1", "prune.rounds=1", "train.threads=1",
                          f"tracking.uri={uri}") for a in ("--set", key)]
    procs = [subprocess.Popen([sys.executable, "-m", "sddkit.cli", "run", *sets, "--set", f"seed={seed}"], cwd=root,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for seed in range(4)]
    errors = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert all(code == 0 for code, _ in errors), "\n".join(err[-1500:] for _, err in errors)
    assert not any("Traceback" in err for _, err in errors)
    client = MlflowClient(uri)
    parents = trajectories(client, "sddkit")
    assert sorted(r.data.tags["sddkit.seed"] for r in parents) == ["0", "1", "2", "3"]
    for parent in parents:
        assert parent.info.status == "FINISHED"
        rounds = round_runs(client, parent.info.run_id)
        assert [(int(r.data.tags["sddkit.round"]), r.info.status) for r in rounds] == [(0, "FINISHED"),
                                                                                      (1, "FINISHED")]


# ---------------------------------------------------------------- what the MLflow UI shows

class WatchRoundStart(runner.trajectory.Reporter):
    """Records, as each round starts training, the round runs the store holds then."""

    def __init__(self, client, experiment):
        self.client, self.experiment, self.seen = client, experiment, {}

    def round_started(self, round_index, rounds, sparsity, epochs):
        parent = trajectories(self.client, self.experiment)[0].info.run_id
        self.seen[round_index] = [(r.data.tags["sddkit.round"], r.info.status, r.data.params.get("round"))
                                  for r in round_runs(self.client, parent)][round_index:]


def test_a_round_run_exists_from_its_start_with_the_rounds_and_the_trajectorys_params(project, tmp_path):
    cfg = small_config(tmp_path)
    client = MlflowClient(cfg.tracking.uri)
    watch = WatchRoundStart(client, cfg.tracking.experiment)
    store, rows = runner.run_trajectory(cfg, project, quiet=True, reporter=watch)
    # While round k trains, its run is there, RUNNING, with its params: its duration is the round's.
    assert watch.seen == {k: [(str(k), "RUNNING", str(k))] for k in range(4)}
    parent = client.get_run(store.run_id)
    for run, row in zip(round_runs(client, store.run_id), rows):
        k = row["round"]
        assert run.data.params == {**parent.data.params, "round": str(k),
                                   "sparsity_target": f"{1 - 0.8 ** k:.6g}"}  # quick's prune.rate 0.2
        assert run.data.params["retrain.mode"] == "lottery"
        assert run.info.end_time - run.info.start_time >= 1000 * row["round_seconds"] - 50
    # Searchable: the rounds of a config by its params.
    found = client.search_runs([store.experiment_id], "params.`retrain.mode` = 'lottery' and params.round = '2'")
    assert [r.info.run_id for r in found] == [round_runs(client, store.run_id)[2].info.run_id]


def test_ctrl_c_in_the_middle_of_a_round_marks_that_round_killed_and_the_rerun_redoes_it(project, tmp_path):
    class CtrlCInRound1(runner.trajectory.Reporter):
        def epoch_done(self, round_index, row):
            if round_index == 1:
                raise KeyboardInterrupt

    cfg = small_config(tmp_path)
    client = MlflowClient(cfg.tracking.uri)
    with pytest.raises(SystemExit):
        runner.run_trajectory(cfg, project, quiet=True, reporter=CtrlCInRound1())
    parent = trajectories(client, cfg.tracking.experiment)[0].info.run_id
    assert [(r.data.tags["sddkit.round"], r.info.status) for r in round_runs(client, parent)] == [
        ("0", "FINISHED"), ("1", "KILLED")]
    store, rows = runner.run_trajectory(cfg, project, quiet=True)
    assert store.run_id == parent and len(rows) == 4
    statuses = sorted((r.data.tags["sddkit.round"], r.info.status) for r in round_runs(client, parent))
    assert statuses == [("0", "FINISHED"), ("1", "FINISHED"), ("1", "KILLED"), ("2", "FINISHED"), ("3", "FINISHED")]


def test_the_trajectory_run_groups_its_one_value_metrics_apart_and_describes_its_landmarks(project, tmp_path):
    from sddkit import analysis, results
    cfg = small_config(tmp_path, **{"noise.ratio": 0.4, "seed": 1})
    store, rows = runner.run_trajectory(cfg, project, quiet=True)
    client = MlflowClient(cfg.tracking.uri)
    run = client.get_run(store.run_id)
    ph = analysis.phases(rows, cfg.analysis.interpolation_threshold, cfg.analysis.light_tolerance)
    curve = set(tracking.PARENT_METRICS) | {"noise_realised_rate"}
    assert {k for k in run.data.metrics if "/" not in k} == curve  # the rest is under summary/ and phase/
    assert tracking.stored_summary(run) == pytest.approx({**results.summary(rows, ph), **analysis.phase_metrics(ph)},
                                                         nan_ok=True)
    assert run.data.tags["mlflow.note.content"] == results.landmarks_line(rows, ph)
    # Named by what tells it apart; found by its tags, and by its name as given.
    assert run.info.run_name == "lottery·ε=0.4·s1" and run.data.tags["sddkit.name"] == "lottery"
    assert [r.info.run_id for r in selection.by_name(Tracker(cfg.tracking.uri, project), "lottery",
                                                              cfg.tracking.experiment)] == [store.run_id]
    # The experiment opens on the UI's training runs, not its GenAI overview.
    assert client.get_experiment(store.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_summary_metrics_of_runs_logged_before_the_prefixes_are_still_read(project, tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    old = client.create_run(client.create_experiment("old"))
    for key, value in {"test_acc": 90.0, "dense_test_acc": 91.0, "phase_light_first": 0.0, "dip": 2.0,
                       "noise_realised_rate": 0.2}.items():
        client.log_metric(old.info.run_id, key, value)
    assert tracking.stored_summary(client.get_run(old.info.run_id)) == {"dense_test_acc": 91.0,
                                                                         "phase_light_first": 0.0, "dip": 2.0}


def test_under_dvc_exp_run_the_run_is_named_after_the_dvc_experiment(monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "bushy-lamb")
    cfg = load_config(overrides={"tracking.run_name": "reinit", "retrain.mode": "reinit"})
    assert tracking.run_label(cfg) == "reinit·bushy-lamb"
    monkeypatch.delenv("DVC_EXP_NAME")
    assert tracking.run_label(cfg) == "reinit·ε=0.2·s0"

"""sddkit sweep: the grid, its DAG, reruns, the landmarks table, figure and view; and seed replicates (`run --seeds`, a sweep over seeds): the group hash, mean ± std by round, and ``sddkit run --seeds … --jobs 2`` in worker
processes writing to one real MLflow sqlite store."""
import csv
import io
import json
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

from sddkit import cli, sweep, sweep_view
from sddkit.command_settings import parse_grid_options, read_sweep_settings
from sddkit.config import ConfigError, SweepConfig, load_config
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
    sets = ["--set", "data.train_size=1000", "--set", "train.epochs=30", "--set", "prune.rounds=8",
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


def leases(db) -> list[dict]:
    import sqlite3
    try:
        with sqlite3.connect(db) as con:
            rows = con.execute("select value from experiment_tags where key like 'sddkit.lease.%'").fetchall()
    except sqlite3.OperationalError:  # MLflow is still creating its tables
        return []
    return [json.loads(value) for (value,) in rows]


def finished_rounds(db) -> int:
    import sqlite3
    try:
        with sqlite3.connect(db) as con:
            return con.execute("select count(*) from runs r join tags t on r.run_uuid = t.run_uuid where t.key = "
                               "'sddkit.kind' and t.value = 'round' and r.status = 'FINISHED'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_kill_9_of_one_local_worker_retries_its_cell_and_leaves_the_other_running(project, tmp_path):
    """--executor local --jobs 2: kill -9 of one worker also killed the healthy cell and the sweep exited 1
    (issue 29). The dead worker's cell is retried (sweep.max_retries) and its sibling never notices."""
    sets = ["--set", "data.train_size=500", "--set", "train.epochs=12", "--set", "prune.rounds=4",
            "--set", "train.batch_size=64", "--set", "train.milestones=[]", "--set", "train.threads=1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    log, db = tmp_path / "sweep.log", project / "mlflow.db"
    with open(log, "w") as err:
        job = subprocess.Popen([sys.executable, "-m", "sddkit.cli", "sweep", "--executor", "local", "--jobs", "2",
                                "--seeds", "0", "1", *sets], cwd=project, env=env, stdout=subprocess.DEVNULL,
                               stderr=err, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while job.poll() is None and time.monotonic() < deadline and not (
                    db.exists() and len(leases(db)) == 2 and finished_rounds(db) >= 2):
                time.sleep(0.2)
            holders = leases(db) if db.exists() else []
            assert job.poll() is None and len(holders) == 2, log.read_text()
            victim = holders[0]["pid"]
            os.kill(victim, signal.SIGKILL)
            assert job.wait(timeout=400) == 0, log.read_text()
        finally:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
    text = log.read_text()
    labels = dict(re.findall(r"sweep: (\S+): started on \S+ pid (\d+)", text)[::-1])  # label -> first pid
    killed = next(label for label, pid in re.findall(r"sweep: (\S+): started on \S+ pid (\d+)", text)
                  if int(pid) == victim)
    healthy = next(label for label in labels if label != killed)
    assert f"{killed}: its worker (pid {victim}) died (signal SIGKILL); retry 1 of 3" in text, text
    assert text.count(f"{killed}: started on") == 2 and text.count(f"{healthy}: started on") == 1, text

    tracker = Tracker(f"sqlite:///{db}", project)
    runs = tracker.trajectories("sddkit")
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}  # the retry continued its parent
    for run in runs:
        rounds = tracker.round_runs(run.info.run_id, finished_only=False)
        finished = sorted(int(r.data.tags["sddkit.round"]) for r in rounds if r.info.status == "FINISHED")
        assert finished == [0, 1, 2, 3, 4]
        cut_off = [r for r in rounds if r.info.status != "FINISHED"]
        if run.data.tags["sddkit.seed"] == healthy.rsplit("·s", 1)[1]:
            assert cut_off == []  # the sibling was never interrupted
        else:
            assert len(cut_off) <= 1 and all(r.info.status == "KILLED" for r in cut_off)


# ---------------------------------------------------------------- sddkit sweep


TINY_SETS = ["--set", "data.train_size=300", "--set", "train.epochs=1", "--set", "prune.rounds=1",
             "--set", "train.milestones=[]", "--set", "train.threads=1"]


def test_a_reinit_cell_waits_for_its_lottery_twin_which_is_added_when_the_grid_lacks_it():
    base = load_config()
    cells = sweep.expand(base, SweepConfig(grid={"noise.ratio": [0.2, 0.4]}, modes=["reinit"], seeds=[0, 1]))
    reinit = [c for c in cells if c.cfg.retrain.mode == "reinit"]
    twins = {c.key: c for c in cells if c.cfg.retrain.mode == "lottery"}
    assert len(reinit) == 4 and len(twins) == 4 and all(t.added for t in twins.values())
    for cell in reinit:
        twin = twins[cell.needs]
        assert (twin.cfg.noise.ratio, twin.cfg.seed) == (cell.cfg.noise.ratio, cell.cfg.seed)
    assert [c.needs is None for c in cells] == [True] * 4 + [False] * 4  # twins are submitted first
    assert {c.label for c in reinit} == {f"reinit·noise.ratio={r}·s{s}" for r in (0.2, 0.4) for s in (0, 1)}


def test_grid_keys_and_values_are_checked_naming_them():
    with pytest.raises(ConfigError, match=r"sweep.grid.noise.ration: unknown config key \(did you mean noise.ratio"):
        read_sweep_settings(None, {"grid": {"noise.ration": [0.2]}})
    with pytest.raises(ConfigError, match="give these as sweep.seeds"):
        read_sweep_settings(None, {"grid": {"seed": [0, 1]}})
    with pytest.raises(ConfigError, match="noise.ratio = 2"):
        sweep.expand(load_config(), SweepConfig(grid={"noise.ratio": [0.2, 2]}))
    with pytest.raises(ConfigError, match="are the same trajectory"):  # threads do not change results
        sweep.expand(load_config(), SweepConfig(grid={"train.threads": [1, 2]}))


def test_the_sweep_section_of_a_params_file_is_the_grid_and_options_override_it(project):
    (project / "params.yaml").write_text("preset: quick\nsweep:\n  grid:\n    noise.ratio: [0.2, 0.4]\n"
                                         "  modes: [lottery, reinit]\n  seeds: [0, 1]\n")
    settings = read_sweep_settings(project / "params.yaml", {"seeds": [3]})
    assert settings.grid == {"noise.ratio": [0.2, 0.4]} and settings.modes == ["lottery", "reinit"]
    assert settings.seeds == [3]
    # `sddkit run` reads the same file and ignores the sweep section
    result = CliRunner().invoke(cli.main, ["run", "--set", "prune.rounds=99"])
    assert result.exit_code == 2 and "sweep" not in result.output


def test_a_grid_key_given_twice_keeps_all_its_values(project):
    """--grid noise.ratio=0.2 --grid noise.ratio=0.4 ran only the 0.4 cell (issue 29): the values merge."""
    result = CliRunner().invoke(cli.main, ["sweep", "--grid", "noise.ratio=0.2", "--grid", "noise.ratio=0.4",
                                           "--seeds", "0", "1", "--set", "sweep.max_cells=3", *TINY_SETS])
    assert result.exit_code == 2, result.output
    assert "4 cells" in result.output and "2 grid points" in result.output  # both ratios, both seeds
    assert len(result.output.strip().splitlines()) == 1
    assert parse_grid_options(["noise.ratio=0.2", "noise.ratio=0.4"]) == {"noise.ratio": [0.2, 0.4]}


def test_a_huge_grid_is_counted_at_once_and_refused_without_yes(project):
    """A 59,400-cell grid was accepted without a word and had not printed its count after 120 s (issue 29)."""
    ratios = ",".join(f"0.{i:03d}" for i in range(1, 100))
    args = ["sweep", "--grid", f"noise.ratio={ratios}", "--grid", "prune.rate=" + ",".join(
        f"0.{i:02d}" for i in range(10, 70)), "--grid", "train.lr=0.1,0.01,0.001,0.0001,0.00001",
        "--modes", "lottery", "reinit", *TINY_SETS]
    started = time.monotonic()
    result = CliRunner().invoke(cli.main, args)
    assert time.monotonic() - started < 10
    assert result.exit_code == 2, result.output
    assert "59,400 cells" in result.output and "sweep.max_cells" in result.output and "--yes" in result.output
    assert not (project / "mlflow.db").exists()
    # --yes lets it past the count (here to the next check, a value out of range, so nothing trains)
    result = CliRunner().invoke(cli.main, ["sweep", "--grid", "noise.ratio=0.2,1.5", "--seeds", "0", "1",
                                           "--set", "sweep.max_cells=1", "--yes", *TINY_SETS])
    assert result.exit_code == 2 and "noise.ratio = 1.5" in result.output, result.output


def test_address_with_the_local_executor_is_refused(project):
    """--address was silently ignored by the local executor (issue 29)."""
    for args in (["--address", "auto"], ["--set", "sweep.address=auto"]):
        result = CliRunner().invoke(cli.main, ["sweep", *args, *TINY_SETS])
        assert result.exit_code == 2, result.output
        assert "sweep.address" in result.output and "--executor ray" in result.output
        assert not (project / "mlflow.db").exists()


def test_a_repeated_seed_or_mode_is_named_as_such(project):
    """--seeds 0 0 said the grid 'varies a key that does not change results' (issue 29)."""
    result = CliRunner().invoke(cli.main, ["sweep", "--seeds", "0", "0", *TINY_SETS])
    assert result.exit_code == 2, result.output
    assert "seed 0 is repeated" in result.output and "does not change results" not in result.output
    result = CliRunner().invoke(cli.main, ["sweep", "--modes", "lottery", "lottery", *TINY_SETS])
    assert result.exit_code == 2 and "mode lottery is repeated" in result.output, result.output


def test_sweep_with_a_bad_grid_value_prints_one_line_exits_2_and_writes_nothing(project):
    result = CliRunner().invoke(cli.main, ["sweep", "--grid", "noise.ratio=0.2,1.5", *TINY_SETS])
    assert result.exit_code == 2, result.output
    assert "noise.ratio = 1.5" in result.output and "Traceback" not in result.output
    assert not (project / "mlflow.db").exists()


def test_a_sweep_rerun_reports_its_finished_cells_and_a_failed_twin_skips_its_reinit(project, tmp_path):
    args = ["sweep", "--grid", "prune.exclude=[],[no_such_layer]", "--modes", "lottery", "reinit", "--jobs", "2",
            *TINY_SETS, "--results", str(tmp_path / "out")]
    first = CliRunner().invoke(cli.main, args)
    assert first.exit_code == 1, first.output
    assert "2 of 4 cells did not finish" in first.output and "its lottery twin failed" in first.output
    assert "no_such_layer" in first.output
    tracker = Tracker(f"sqlite:///{project}/mlflow.db", project)
    runs = tracker.trajectories("sddkit")
    assert sorted(r.data.params["retrain.mode"] for r in runs) == ["lottery", "reinit"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    rounds_before = sum(len(tracker.round_runs(r.info.run_id)) for r in runs)

    again = CliRunner().invoke(cli.main, args)
    assert "4 cells (2 finished already)" in again.output.replace("\n", " ")
    assert sum(len(tracker.round_runs(r.info.run_id)) for r in tracker.trajectories("sddkit")) == rounds_before


def test_a_sweep_ends_with_the_landmarks_of_every_cell_and_logs_its_figure(project, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli.main, ["sweep", "--grid", "noise.ratio=0.2,0.4", "--modes", "lottery", "reinit",
                                           "--seeds", "0", "1", "--jobs", "2", *TINY_SETS, "--results", str(out),
                                           "--format", "csv"])
    assert result.exit_code == 0, result.output
    table = list(csv.DictReader(io.StringIO((out / "landmarks.csv").read_text())))
    assert [(r["noise.ratio"], r["trajectory"], r["n"]) for r in table] == \
        [("0.2", "lottery", "2"), ("0.4", "lottery", "2"), ("0.2", "reinit", "2"), ("0.4", "reinit", "2")]
    tracker = Tracker(f"sqlite:///{project}/mlflow.db", project)
    runs = tracker.trajectories("sddkit")
    for row in table:  # the mean over seeds of the stored runs' dense accuracy
        dense = [r.data.metrics["summary/dense_test_acc"] for r in runs
                 if r.data.params["noise.ratio"] == row["noise.ratio"] and r.data.params["retrain.mode"] == row["trajectory"]]
        assert len(dense) == 2 and float(row["dense_test_acc"]) == pytest.approx(np.mean(dense))
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (sweep_run,) = tracker.client.search_runs([runs[0].info.experiment_id], "tags.`sddkit.kind` = 'sweep'")
    assert {f.path for f in tracker.client.list_artifacts(sweep_run.info.run_id)} >= {"sweep.png", "landmarks.csv"}
    assert json.loads((out / "landmarks.json").read_text())["lottery·noise.ratio=0.2"]["n"] == 2


class FakeCell:  # what the view reads of a cell (sweep.Cell without building a config)
    def __init__(self, key, label, rounds, needs=None):
        self.key, self.label, self.needs = key, label, needs
        self.cfg = type("C", (), {"prune": type("P", (), {"rounds": rounds})})


def test_the_live_view_shows_each_cells_round_of_r_elapsed_and_eta():
    from rich.console import Console
    from sddkit.cell_events import Event
    screen = io.StringIO()
    view = sweep_view.LiveView([FakeCell("a", "lottery·s0", 4), FakeCell("b", "reinit·s0", 4, needs="a")], {},
                               Console(file=screen, force_terminal=True, width=160))
    view.event(Event("a", "started", host="node1", pid=7, at=time.time() - 30))
    for r in range(3):
        view.event(Event("a", "round_done", r, test_acc=70.0 + r, seconds=10.0))
    view.event(Event("a", "round", 3, 4))
    view.close()
    text = screen.getvalue()
    assert "round 3 of 4" in text and "72.0" in text and "waiting for its lottery twin" in text
    assert "0:00:20" in text  # ETA: 2 rounds left at 10 s each
    assert "node1 pid 7" in text
    # The reinit moves beside its twin: started on a worker of its own, ahead of it, then training its round.
    view.event(Event("b", "started", host="node2", pid=8))
    view.event(Event("b", "waiting", 3))
    shown = Console(file=io.StringIO(), width=160)
    shown.print(view.table())
    assert "waiting for lottery round 3" in shown.file.getvalue() and "node2 pid 8" in shown.file.getvalue()
    view.event(Event("b", "round", 3, 4))
    assert view.cells["b"].progress() == "round 3 of 4" and view.cells["a"].progress() == "round 3 of 4"


def test_the_sweep_header_is_whole_lines_without_a_stray_separator(monkeypatch, tmp_path):
    """The sweep's header ended with a stray `; ` where the terminal wrapped it (issue 29)."""
    from rich.console import Console
    screen = io.StringIO()
    monkeypatch.setattr(sweep, "console", Console(file=screen, width=60))
    executor = type("E", (), {"describe": lambda self: "2 local worker processes"})()
    logs = tmp_path / ("a-rather-long-project-folder-name" * 2) / ".sddkit" / "sweep-0123456789ab"
    sweep.print_header("sweep", "0123456789ab", 4, 1, executor, logs)
    lines = screen.getvalue().splitlines()
    assert lines == ["sweep 0123456789ab: 4 cells (1 finished already) on 2 local worker processes",
                     f"  cell logs: {logs}/"]


def test_a_cell_waiting_for_another_process_shows_as_waiting_not_started(project):
    """A cell whose trajectory another process was training showed as "started" (issue 29)."""
    import threading
    from rich.console import Console
    from sddkit import executors, fingerprint, runner
    from sddkit.config import load_config
    from test_lease import plant
    uri = f"sqlite:///{project}/mlflow.db"
    cfg = load_config(overrides=["data.train_size=300", "train.epochs=1", "prune.rounds=1", f"tracking.uri={uri}"])
    events = []
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])

    def put(event):  # the owner dies once the cell has said it waits: the cell then takes the lease over
        events.append(event)
        if event.kind == "owner_waiting":
            threading.Timer(1.0, owner.kill).start()
    box = type("Box", (), {"put": lambda self, e: put(e)})()
    try:
        plant(uri, Tracker(uri, project).experiment_id("sddkit"), f"{cfg.identity_hash()}.{fingerprint.code_hash()}",
              pid=owner.pid)
        runner.run_trajectory(cfg, project, quiet=True, wait=True, reporter=executors.EventReporter("k", box))
    finally:
        owner.kill()
        owner.wait()
    assert [e.kind for e in events].count("owner_waiting") == 1 and f"pid {owner.pid}" in events[0].note
    screen = io.StringIO()
    view = sweep_view.LineView([FakeCell("k", "lottery·s0", 1)], {}, Console(file=screen))
    from sddkit.cell_events import Event
    view.event(Event("k", "started", host="vm", pid=1))
    view.event(events[0])
    assert view.cells["k"].progress() == "waiting for another process"
    assert f"lottery·s0: waiting: its trajectory is being trained by pid {owner.pid}" in screen.getvalue()



def test_a_reinit_cell_runs_beside_its_lottery_twin_both_running_at_once_in_the_store(project):
    """The sweep schedules rounds, not cells: the reinit cell starts while its twin trains (its own worker),
    so both parent runs are RUNNING at once; the reinit equals the one trained after its twin had finished."""
    import threading
    # Rounds long enough (seconds) that the reinit's worker has loaded its data before its twin has finished.
    sets = ["--set", "data.train_size=1000", "--set", "train.epochs=60", "--set", "prune.rounds=2",
            "--set", "train.milestones=[]"]
    client, seen, stop = MlflowClient(f"sqlite:///{project}/mlflow.db"), [], threading.Event()

    def watch():  # what the store shows while the sweep runs
        while not stop.wait(0.2):
            try:
                exp = client.get_experiment_by_name("sddkit")
                runs = client.search_runs([exp.experiment_id], "tags.`sddkit.kind` = 'trajectory'") if exp else []
            except Exception:  # noqa: BLE001 - the store being created
                continue
            seen.append(sorted(r.data.tags["sddkit.retrain_mode"] for r in runs if r.info.status == "RUNNING"))
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = CliRunner().invoke(cli.main, ["sweep", "--modes", "lottery", "reinit", "--jobs", "2", *sets,
                                               "--format", "csv"])
    finally:
        stop.set()
        watcher.join()
    assert result.exit_code == 0, result.output
    assert ["lottery", "reinit"] in seen, "the reinit never ran beside its twin"
    # The same reinit after its twin had finished (another experiment, one after the other): the same numbers.
    tiny = {"data.train_size": 1000, "train.epochs": 60, "prune.rounds": 2, "train.milestones": [],
            "tracking.uri": f"sqlite:///{project}/mlflow.db", "tracking.experiment": "after"}
    from sddkit import runner
    for mode in ("lottery", "reinit"):
        _, rows = runner.run_trajectory(load_config(overrides={**tiny, "retrain.mode": mode}), project, quiet=True)
    (side,) = [r for r in Tracker(f"sqlite:///{project}/mlflow.db", project).trajectories("sddkit")
               if r.data.tags["sddkit.retrain_mode"] == "reinit"]
    from sddkit.tracking import TrajectoryRun
    side_rows = TrajectoryRun(Tracker(f"sqlite:///{project}/mlflow.db", project), side.info.run_id).completed
    timing = ("round_seconds", "copied_round_seconds")
    assert [{k: v for k, v in r.items() if k not in timing} for r in side_rows] == \
        [{k: v for k, v in r.items() if k not in timing} for r in rows]

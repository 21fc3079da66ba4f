"""`sddkit ls` reads a local sqlite store by SQL, without MLflow: what it reads equals what MLflow's client reads
of the same store (made through MLflow's own API, no training), and a store of another schema is left to MLflow."""
from __future__ import annotations

import contextlib
import math
import sqlite3

from click.testing import CliRunner
from mlflow.entities import Metric

from sddkit import api, listing, lease, selection, store_sql
from sddkit.cli import main
from sddkit.config import load_config
from sddkit.tracking import Tracker
from tests import test_paging
from tests.conftest import enter_project


def made_store(project):
    """Three finished trajectories, one RUNNING with a lease nobody holds, one with a NaN metric, one deleted."""
    tracker = Tracker(f"sqlite:///{project}/mlflow.db", project)
    exp = tracker.experiment_id("sddkit")
    client = tracker.client
    ids = [test_paging.make_trajectory(client, exp, load_config(overrides={"seed": s, "noise.ratio": r}), project,
                                       1_000_000 + 1000 * i) for i, (s, r) in enumerate(((0, 0.2), (1, 0.2), (0, 0.4)))]
    client.log_batch(ids[0], metrics=[Metric("summary/dense_test_acc", math.nan, 0, 0),
                                      Metric("summary/peak_test_acc", 91.5, 0, 0)])
    client.update_run(ids[1], status="RUNNING")
    gone = test_paging.make_trajectory(client, exp, load_config(overrides={"seed": 5}), project, 2_000_000)
    client.delete_run(gone)
    return tracker, ids


def test_the_sql_listing_is_what_mlflow_reads(project):
    tracker, ids = made_store(project)
    found = store_sql.read_listing(project / "mlflow.db", "sddkit")
    runs = tracker.trajectories("sddkit")
    assert [r.info.run_id for r in found.runs] == [r.info.run_id for r in runs] == ids[::-1]
    for ours, theirs in zip(found.runs, runs):
        assert (ours.info.run_name, ours.info.status) == (theirs.info.run_name, theirs.info.status)
        assert ours.data.params == theirs.data.params and ours.data.tags == theirs.data.tags
        assert ours.data.metrics.keys() == theirs.data.metrics.keys()
        for key, value in theirs.data.metrics.items():
            assert ours.data.metrics[key] == value or math.isnan(ours.data.metrics[key]) and math.isnan(value)
    assert found.finished_rounds == selection.finished_round_counts(tracker, runs)
    assert found.experiment_tags == tracker.client.get_experiment(runs[0].info.experiment_id).tags
    by_sql = listing.from_sqlite(project / "mlflow.db", "sddkit")
    by_mlflow = api.list_trajectories(tracking_uri=tracker.uri)
    assert repr(by_sql) == repr(by_mlflow)  # repr: a NaN equals itself there
    assert [row["status"] for row in by_sql[0]] == ["FINISHED", "interrupted", "FINISHED"]
    assert lease.holder_in(found.experiment_tags, found.runs[1]) is None


def test_ls_lists_a_sqlite_store_without_importing_mlflow(project, monkeypatch):
    made_store(project)
    enter_project(project, monkeypatch)
    import sys
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [Refuse(), *sys.meta_path])
    listed = CliRunner().invoke(main, ["ls", "--format", "csv"])
    assert listed.exit_code == 0, listed.output
    assert len(listed.stdout.splitlines()) == 1 + 3


class Refuse:
    """An import hook that fails any import of MLflow."""

    def find_spec(self, name, path=None, target=None):
        if name == "mlflow" or name.startswith("mlflow."):
            raise ImportError(f"{name} imported by `sddkit ls` on a sqlite store")
        return None


def test_a_store_of_another_schema_is_left_to_mlflow(project):
    made_store(project)
    db = project / "mlflow.db"
    with contextlib.closing(sqlite3.connect(db)) as con:
        assert con.execute("select version_num from alembic_version").fetchall() == [(store_sql.SCHEMA_VERSION,)]
        con.execute("update alembic_version set version_num = 'older'")
        con.commit()
    assert store_sql.read_listing(db, "sddkit") is None
    (project / "empty.db").write_bytes(b"not a database")
    assert store_sql.read_listing(project / "empty.db", "sddkit") is None

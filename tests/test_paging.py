"""Searches page through MLflow's page tokens: a store holding more trajectories than one page still shows every
one to `sddkit ls`, compare, the Python API and reinit's twin lookup (made here through MLflow's own API, with a
page of 10 runs over 25 trajectories: no training)."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

import sddkit
from sddkit import tracking
from sddkit.cli import main
from sddkit.config import load_config
from sddkit.fingerprint import code_hash
from sddkit.fingerprint import trajectory_tags
from sddkit.tracking import Tracker
from sddkit.twin import lottery_twin_run
from tests.conftest import enter_project

COUNT, PAGE = 25, 10


def make_trajectory(client: MlflowClient, exp: str, cfg, root, start_ms: int) -> str:
    """A finished lottery trajectory of ``cfg`` with two finished rounds, as the engine logs them."""
    tags = {**trajectory_tags(cfg, root, code_hash()), "sddkit.name": "lottery"}
    run = client.create_run(exp, start_time=start_ms, tags=tags, run_name="lottery").info.run_id
    client.log_batch(run, params=[Param(k, tracking.param_text(v)) for k, v in cfg.flat().items()])
    for r in (0, 1):
        child = client.create_run(exp, start_time=start_ms + r, run_name=f"lottery/round-{r:02d}", tags={
            "mlflow.parentRunId": run, "sddkit.kind": "round", "sddkit.round": str(r)}).info.run_id
        values = {"round": r, "sparsity": 0.2 * r, "remaining": 1 - 0.2 * r, "test_acc": 80.0 + r,
                  "train_acc_noisy": 99.0}
        client.log_batch(child, metrics=[Metric(k, v, start_ms, 0) for k, v in values.items()])
        client.set_terminated(child)
    client.set_terminated(run)
    return run


@pytest.fixture
def big_store(project, monkeypatch):
    monkeypatch.setattr(tracking, "SEARCH_PAGE", PAGE)
    enter_project(project, monkeypatch)
    tracker = Tracker(f"sqlite:///{project}/mlflow.db", project)
    exp = tracker.experiment_id("sddkit")
    # The oldest trajectory is the only one of its config (noise.ratio 0.3): it lies on the last page.
    configs = [load_config(overrides={"seed": i, "noise.ratio": 0.3 if i == 0 else 0.2}) for i in range(COUNT)]
    ids = [make_trajectory(tracker.client, exp, cfg, project, 1_000_000 + 1000 * i) for i, cfg in enumerate(configs)]
    return tracker, ids, configs


def test_every_search_sees_every_trajectory_past_one_page(big_store):
    tracker, ids, configs = big_store
    assert len(tracker.trajectories("sddkit")) == COUNT

    listed = CliRunner().invoke(main, ["ls", "--format", "json"])
    assert listed.exit_code == 0, listed.output
    assert {row["run_id"] for row in json.loads(listed.stdout)} == set(ids)

    compared = CliRunner().invoke(main, ["compare", "--runs", "lottery", "--where", "noise.ratio=0.2",
                                         "--format", "json"])
    assert compared.exit_code == 0, compared.output
    assert f"runs {', '.join(i[:8] for i in ids[:0:-1])}" in " ".join(compared.output.split())  # 24 seeds

    frame = sddkit.load_trajectory("lottery")
    assert set(frame["trajectory_run_id"]) == set(ids) and len(frame) == 2 * COUNT

    reinit = load_config(overrides={"seed": 0, "noise.ratio": 0.3, "retrain.mode": "reinit"})
    assert lottery_twin_run(tracker, reinit, code_hash()).info.run_id == ids[0]

"""End to end on a real MLflow sqlite store: a short trajectory, read back through MLflow's API; an
interrupted and resumed trajectory equals an uninterrupted one."""
import pytest
import torch
from mlflow import MlflowClient

import sddkit
from sddkit import runner, trajectory
from sddkit.config import load_config
from sddkit.tracking import Tracker


class StopAfter(trajectory.Reporter):
    def __init__(self, last_round):
        self.last_round = last_round

    def round_done(self, round_index, metrics):
        if round_index == self.last_round:
            raise KeyboardInterrupt


def stored_rounds(uri, parent_id):
    client = MlflowClient(uri)
    exp = client.get_run(parent_id).info.experiment_id
    runs = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    return sorted(runs, key=lambda r: int(r.data.tags["sddkit.round"]))


def test_short_trajectory_is_stored_as_parent_and_nested_round_runs(project, tiny_overrides):
    cfg = load_config(overrides=tiny_overrides)
    store, rows = runner.run_trajectory(cfg, project, quiet=True, results_dir=project / "results" / "lottery")
    uri = cfg.tracking.uri
    client = MlflowClient(uri)
    parent = client.get_run(store.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["noise.ratio"] == "0.2" and parent.data.params["model.arch"] == "lenet300_100"
    assert parent.data.tags["sddkit.config_hash"] == cfg.identity_hash()
    assert parent.data.tags["sddkit.retrain_mode"] == "lottery" and "torch=" in parent.data.tags["sddkit.versions"]
    assert 0.15 < parent.data.metrics["noise_realised_rate"] <= 0.2
    artifacts = {f.path for f in client.list_artifacts(store.run_id)}
    assert {"trajectory.csv", "curve.png", "noisy_labels.npy", "summary.json", "state"} <= artifacts
    history = client.get_metric_history(store.run_id, "test_acc")
    assert [m.step for m in history] == [0, 1, 2, 3]

    rounds = stored_rounds(uri, store.run_id)
    assert [int(r.data.tags["sddkit.round"]) for r in rounds] == [0, 1, 2, 3]
    for r, run in enumerate(rounds):
        names = {f.path for f in client.list_artifacts(run.info.run_id)}
        assert {"mask.npz", "weights.pt", "metrics.json"} <= names
        for key in ("sparsity", "train_acc_noisy", "train_acc_clean", "memorized", "test_acc", "test_loss",
                    "round_seconds", "learning_distance"):
            assert key in run.data.metrics
        assert run.data.metrics["sparsity"] == pytest.approx(1 - 0.8 ** r, abs=1e-3)
        epochs = client.get_metric_history(run.info.run_id, "epoch/test_acc")
        assert [m.step for m in epochs] == [0, 1]

    # The documented loaders give the mask and the weights that produced the round's metrics.
    last = rounds[-1].info.run_id
    mask = sddkit.load_mask(last, uri)
    weights = sddkit.load_weights(last, uri)
    assert set(mask) == {"1.weight", "3.weight"}  # the output layer stays dense
    for name, m in mask.items():
        assert m.dtype == torch.bool and bool((weights[name][~m] == 0).all())
    assert (project / "results" / "lottery" / "summary.json").exists()


def test_rerunning_a_finished_config_reports_it_instead_of_redoing_it(project, tiny_overrides):
    cfg = load_config(overrides=tiny_overrides)
    first, rows = runner.run_trajectory(cfg, project, quiet=True)
    again, rows_again = runner.run_trajectory(cfg, project, quiet=True)
    assert again.run_id == first.run_id and rows_again == rows
    assert len(stored_rounds(cfg.tracking.uri, first.run_id)) == 4
    forced, _ = runner.run_trajectory(cfg, project, quiet=True, force=True)
    assert forced.run_id != first.run_id


@pytest.mark.parametrize("mode", ["lottery", "lr_rewind"])
def test_interrupted_then_resumed_trajectory_equals_an_uninterrupted_one(project, tmp_path, mode):
    overrides = {"data.train_size": 300, "train.epochs": 2, "prune.rounds": 3, "train.batch_size": 64,
                 "train.milestones": [1], "retrain.mode": mode, "retrain.rewind_step": 3}
    whole_cfg = load_config(overrides={**overrides, "tracking.uri": f"sqlite:///{tmp_path}/whole.db"})
    whole = trajectory.run(whole_cfg, project, Tracker(whole_cfg.tracking.uri, project).open_trajectory(whole_cfg))

    cfg = load_config(overrides={**overrides, "tracking.uri": f"sqlite:///{tmp_path}/cut.db"})
    tracker = Tracker(cfg.tracking.uri, project)
    with pytest.raises(KeyboardInterrupt):
        trajectory.run(cfg, project, tracker.open_trajectory(cfg), StopAfter(1))
    resumed_store = tracker.open_trajectory(cfg)
    assert len(resumed_store.completed) == 2
    resumed = trajectory.run(cfg, project, resumed_store)

    def science(rows):
        return [{k: v for k, v in r.items() if k != "round_seconds"} for r in rows]
    assert science(resumed) == science(whole)
    assert science(Tracker(cfg.tracking.uri, project).open_trajectory(cfg).completed) == science(whole)

"""End to end on a real MLflow sqlite store: a short trajectory, read back through MLflow's API; an
interrupted and resumed trajectory equals an uninterrupted one."""
import math

import pytest
import torch
from mlflow import MlflowClient

import sddkit
from sddkit import config, models, runner, trajectory
from conftest import StopAfter
from sddkit.config import ConfigError, load_config
from sddkit.tracking import Tracker




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
    assert {"trajectory.csv", "curve.png", "noisy_labels.npy", "summary.json"} <= artifacts
    assert "state" not in artifacts  # rewind step 0: init and rewind state are rebuilt from the seed
    assert len(parent.data.tags["sddkit.init_sha256"]) == 64  # what a rebuilt init is checked against
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


def test_sgd_momentum_weight_decay_cosine_follows_its_schedule_learns_and_resumes_exactly(project, tiny_overrides):
    """The paper's CIFAR optimiser (SGD, momentum 0.9, weight decay 1e-4) with a cosine schedule, end to end:
    every round restarts the schedule, round 0 learns, and momentum buffers (rebuilt per round) leave a
    resumed trajectory equal to an uninterrupted one."""
    overrides = {**tiny_overrides, "data.train_size": 500, "train.epochs": 3, "prune.rounds": 2,
                 "train.batch_size": 64, "train.optimizer": "sgd", "train.lr": 0.05, "train.momentum": 0.9,
                 "train.weight_decay": 1e-4, "train.schedule": "cosine", "retrain.mode": "lottery",
                 "retrain.rewind_step": 0}
    # One store, two experiments (not part of a run's identity): each holds its own trajectory of this config.
    whole_cfg = load_config(overrides={**overrides, "tracking.experiment": "whole"})
    assert (whole_cfg.train.optimizer, whole_cfg.train.momentum, whole_cfg.train.weight_decay,
            whole_cfg.train.schedule) == ("sgd", 0.9, 1e-4, "cosine")
    store, whole = runner.run_trajectory(whole_cfg, project, quiet=True)

    # The cosine schedule, computed here rather than with sddkit's own lr_factor: lr at the first step of
    # each epoch, restarted in every round.
    steps_per_epoch = math.ceil(500 / 64)
    total = steps_per_epoch * 3
    expected = [0.05 * 0.5 * (1 + math.cos(math.pi * e * steps_per_epoch / total)) for e in range(3)]
    client = MlflowClient(whole_cfg.tracking.uri)
    rounds = stored_rounds(whole_cfg.tracking.uri, store.run_id)
    assert [int(r.data.tags["sddkit.round"]) for r in rounds] == [0, 1, 2]
    for run in rounds:
        lrs = sorted(client.get_metric_history(run.info.run_id, "epoch/lr"), key=lambda m: m.step)
        assert [m.step for m in lrs] == [0, 1, 2]
        assert [m.value for m in lrs] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert expected[0] > expected[1] > expected[2] > 0  # the test's own schedule really decays

    for row in whole:
        for key in ("test_acc", "train_acc_noisy", "train_acc_clean", "test_loss", "train_loss_noisy"):
            assert math.isfinite(row[key]), (row["round"], key, row[key])
    assert whole[0]["test_acc"] > 50.0 and whole[0]["train_acc_clean"] > 50.0  # chance is 10%

    cfg = load_config(overrides={**overrides, "tracking.experiment": "cut"})
    with pytest.raises(SystemExit) as stopped:
        runner.run_trajectory(cfg, project, quiet=True, reporter=StopAfter(1))
    assert stopped.value.code == 130
    found = client.search_runs([client.get_experiment_by_name("cut").experiment_id],
                               "tags.`sddkit.kind` = 'trajectory'")
    assert [r.info.status for r in found] == ["KILLED"]
    interrupted = found[0]
    cut_store, resumed = runner.run_trajectory(cfg, project, quiet=True)
    assert cut_store.run_id == interrupted.info.run_id
    assert client.get_run(cut_store.run_id).info.status == "FINISHED"

    def science(rows):
        return [{k: v for k, v in r.items() if k != "round_seconds"} for r in rows]
    assert len(resumed) == 3 and science(resumed) == science(whole)


def test_rounds_past_the_last_weight_of_a_tensor_fail_in_load_inputs(project):
    # quick: 14x14 -> 300 -> 100 -> 10 with the output layer dense; 3.weight (30,000) runs out first.
    trajectory.load_inputs(load_config(overrides={"prune.rounds": 49}), project)
    with pytest.raises(ConfigError) as err:
        trajectory.load_inputs(load_config(overrides={"prune.rounds": 50}), project)
    assert str(err.value) == ("prune.rounds = 50: at prune.rate 0.2 the smallest prunable tensor (3.weight, 30,000 "
                              "weights) keeps no weight from round 50 on; at most 49 rounds")


def test_both_scopes_follow_the_proportional_rule():
    sizes = {"big": 10**6, "out": 1000}  # 1000 · 0.8³⁴ = 0.51 rounds to one weight, 1000 · 0.8³⁵ = 0.41 to none
    for scope in ("global", "layer"):
        trajectory.check_rounds(load_config(overrides={"prune.rounds": 34, "prune.scope": scope}), sizes)
        with pytest.raises(ConfigError, match=r"\(out, 1,000 weights\) keeps no weight from round 35 on; at most 34"):
            trajectory.check_rounds(load_config(overrides={"prune.rounds": 35, "prune.scope": scope}), sizes)
    trajectory.check_rounds(load_config(overrides={"prune.rounds": 10**6}), {})  # nothing prunable: no limit


CLASSES = {"mnist5k": 10, "mnist": 10, "cifar10": 10, "cifar100": 100, "tinyimagenet": 200}


@pytest.mark.parametrize("name", config.preset_names())
def test_every_presets_rounds_leave_every_prunable_tensor_a_weight(name):
    cfg = load_config(preset=name)
    side = config.IMAGE_SIDE[cfg.data.name] // cfg.data.downsample
    channels = 1 if cfg.data.name.startswith("mnist") else 3
    model = models.build(cfg.model.arch, CLASSES[cfg.data.name], (channels, side, side))
    exclude = cfg.prune.exclude if cfg.prune.exclude is not None else models.default_exclude(cfg.model.arch)
    trajectory.check_rounds(cfg, {n: w.numel() for n, w in models.prunable(model, exclude).items()})

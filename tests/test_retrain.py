"""Each retraining mode starts its rounds where the paper says, in the one engine, on a real store."""
import pytest
import torch
from mlflow import MlflowClient

from sddkit import retrain, runner, tracking
from sddkit.config import load_config

SMALL = {"data.train_size": 200, "train.epochs": 1, "prune.rounds": 2, "train.batch_size": 50,
         "train.milestones": [], "train.threads": 1}


def trajectory(project, tmp_path, **overrides):
    cfg = load_config(overrides={**SMALL, "tracking.uri": f"sqlite:///{tmp_path}/mlflow.db", **overrides})
    store, rows = runner.run_trajectory(cfg, project, quiet=True)
    rounds = store.tracker.round_runs(store.run_id)
    return cfg, store, rows, [r.info.run_id for r in rounds]


def artifact(store, run_id, path):
    return tracking.read_torch(store.tracker, run_id, path)


def test_the_table_has_every_mode_and_finetune_uses_its_own_schedule():
    assert set(retrain.MODES) == {"lottery", "finetune", "lr_rewind", "scratch", "reinit", "oneshot"}
    cfg = load_config(overrides={"retrain.mode": "finetune", "retrain.finetune_epochs": 3})
    assert retrain.schedule(cfg, 0) is cfg.train
    tuned = retrain.schedule(cfg, 1)
    assert (tuned.lr, tuned.schedule, tuned.epochs) == (0.001, "constant", 3)


def test_rewind_step_counts_iterations_or_epochs():
    cfg = load_config(overrides={"retrain.rewind_step": 2, "retrain.rewind_unit": "epochs"})
    assert retrain.rewind_iteration(cfg, steps_per_epoch=32) == 64


@pytest.mark.parametrize("mode", ["lr_rewind", "finetune"])
def test_previous_weight_modes_start_from_the_last_round_masked(project, tmp_path, mode):
    _, store, _, rounds = trajectory(project, tmp_path, **{"retrain.mode": mode})
    for r in (1, 2):
        start = artifact(store, rounds[r], "start_weights.pt")
        previous = tracking.load_weights(rounds[r - 1], store.tracker.uri)
        mask = tracking.load_mask(rounds[r], store.tracker.uri)
        for name, m in mask.items():
            assert torch.equal(start[name], previous[name] * m)
    if mode == "finetune":
        lrs = MlflowClient(store.tracker.uri).get_metric_history(rounds[1], "epoch/lr")
        assert [m.value for m in lrs] == [0.001]


def test_lottery_rewinds_to_the_saved_weights_at_the_rewind_step(project, tmp_path):
    _, store, rows, rounds = trajectory(project, tmp_path, **{"retrain.rewind_step": 2})
    init, rewind = store.load_state("init"), store.load_state("rewind")
    assert not torch.equal(init["1.weight"], rewind["1.weight"])  # two steps of training moved it
    # distance_from_start is measured from the masked rewind weights: recompute it from the artifacts.
    from sddkit.analysis import learning_distance
    for r in (1, 2):
        mask = tracking.load_mask(rounds[r], store.tracker.uri)
        final = tracking.load_weights(rounds[r], store.tracker.uri)
        start = {n: rewind[n] * m for n, m in mask.items()}
        assert rows[r]["distance_from_start"] == pytest.approx(learning_distance(start, final, mask), rel=1e-9)
        assert rows[r]["learning_distance"] == pytest.approx(learning_distance(init, final, mask), rel=1e-9)


def test_scratch_draws_a_fresh_initialisation_every_round(project, tmp_path):
    _, store, _, rounds = trajectory(project, tmp_path, **{"retrain.mode": "scratch"})
    init = store.load_state("init")
    starts = [artifact(store, rounds[r], "start_weights.pt") for r in (1, 2)]
    mask = tracking.load_mask(rounds[1], store.tracker.uri)["1.weight"]
    assert not torch.equal(starts[0]["1.weight"][mask], (init["1.weight"])[mask])
    assert not torch.equal(starts[0]["5.weight"], starts[1]["5.weight"])


def test_reinit_uses_exactly_the_lottery_masks_with_fresh_weights(project, tmp_path):
    _, lottery, _, lottery_rounds = trajectory(project, tmp_path)
    _, reinit, _, reinit_rounds = trajectory(project, tmp_path, **{"retrain.mode": "reinit",
                                                                  "retrain.masks_from": "lottery"})
    uri = lottery.tracker.uri
    for r in (1, 2):
        ours, theirs = tracking.load_mask(reinit_rounds[r], uri), tracking.load_mask(lottery_rounds[r], uri)
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[n], theirs[n]) for n in ours)
        start = artifact(reinit, reinit_rounds[r], "start_weights.pt")
        assert not torch.equal(start["5.weight"], lottery.load_state("init")["5.weight"])


def test_reinit_without_its_lottery_names_what_exists(project, tmp_path):
    cfg = load_config(overrides={**SMALL, "tracking.uri": f"sqlite:///{tmp_path}/mlflow.db",
                                 "retrain.mode": "reinit", "retrain.masks_from": "nope"})
    with pytest.raises(tracking.TrackingError, match="retrain.masks_from = 'nope': no trajectory"):
        runner.run_trajectory(cfg, project, quiet=True)
    assert tracking.Tracker(cfg.tracking.uri, project).trajectories("sddkit") == []  # nothing written


def test_oneshot_prunes_the_dense_solution_straight_to_each_sparsity(project, tmp_path):
    _, store, rows, rounds = trajectory(project, tmp_path, **{"retrain.mode": "oneshot", "prune.rounds": 3})
    dense = tracking.load_weights(rounds[0], store.tracker.uri)
    for r in (1, 2, 3):
        mask = tracking.load_mask(rounds[r], store.tracker.uri)
        kept = torch.cat([dense[n].abs()[m] for n, m in mask.items()])
        pruned = torch.cat([dense[n].abs()[~m] for n, m in mask.items()])
        assert kept.min() >= pruned.max()  # ranked on the dense weights, not on round r-1's
        assert rows[r]["sparsity"] == pytest.approx(1 - 0.8 ** r, abs=1e-4)


@pytest.mark.parametrize("criterion, scope", [("gradient", "layer"), ("gradient", "global"), ("random", "layer")])
def test_engine_prunes_with_each_criterion_and_scope(project, tmp_path, criterion, scope):
    """The paper's code crashed on layer-scope gradient pruning; here every pair runs end to end."""
    _, store, rows, rounds = trajectory(project, tmp_path, **{"prune.criterion": criterion, "prune.scope": scope,
                                                             "prune.rounds": 1, "prune.gradient_batches": 2})
    mask = tracking.load_mask(rounds[1], store.tracker.uri)
    if scope == "layer":
        for m in mask.values():
            assert abs(int(m.sum()) - 0.8 * m.numel()) <= 1
    assert rows[1]["sparsity"] == pytest.approx(0.2, abs=1e-3)


def test_reinit_refuses_masks_of_a_lottery_run_with_other_pruning_settings(project, tmp_path):
    trajectory(project, tmp_path)
    cfg = load_config(overrides={**SMALL, "tracking.uri": f"sqlite:///{tmp_path}/mlflow.db", "prune.rate": 0.5,
                                 "retrain.mode": "reinit", "retrain.masks_from": "lottery"})
    with pytest.raises(tracking.TrackingError, match="do not fit this config .*prune.rate: 0.2 there, 0.5 here"):
        runner.run_trajectory(cfg, project, quiet=True)

"""Each retraining mode starts its rounds where the paper says, in the one engine, on a real store."""
import math

import pytest
import torch
from mlflow import MlflowClient

from sddkit import checkpoint, data, retrain, runner, tracking, train
from sddkit import trajectory as engine
from sddkit.analysis import learning_distance
from sddkit.config import ConfigError, load_config

SMALL = {"data.train_size": 200, "train.epochs": 1, "prune.rounds": 2, "train.batch_size": 50,
         "train.milestones": [], "train.threads": 1}


def trajectory(project, tmp_path, **overrides):
    cfg = load_config(overrides={**SMALL, "tracking.uri": f"sqlite:///{tmp_path}/mlflow.db", **overrides})
    store, rows = runner.run_trajectory(cfg, project, quiet=True)
    rounds = store.tracker.round_runs(store.run_id)
    return cfg, store, rows, [r.info.run_id for r in rounds]


def artifact(store, run_id, path):
    return store.tracker.read_torch(run_id, path)


def init_of(cfg, project):
    """The init every round 0 starts from: rebuilt from the seed (it is never stored)."""
    return engine.snapshot(engine.load_inputs(cfg, project).model)


def fresh_start(cfg, project, r, mask):
    """Round r's start weights of a fresh-init mode, re-derived from (seed, round) and masked."""
    splits = engine.load_inputs(cfg, project).splits
    start = engine.fresh_model(cfg, splits, r).state_dict()
    return {n: (start[n] * mask[n]) if n in mask else start[n] for n in start}


def assert_started_from(row, start, final, mask):
    """The round's distance_from_start is the distance from ``start``: it started there."""
    assert row["distance_from_start"] == pytest.approx(learning_distance(start, final, mask), rel=1e-9)


def stored_files(store, run_id, folder=""):
    return sorted(f.path for f in store.client.list_artifacts(run_id, folder or None))


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
    _, store, rows, rounds = trajectory(project, tmp_path, **{"retrain.mode": mode})
    for r in (1, 2):
        previous = tracking.load_weights(rounds[r - 1], store.tracker.uri)
        mask = tracking.load_mask(rounds[r], store.tracker.uri)
        final = tracking.load_weights(rounds[r], store.tracker.uri)
        assert_started_from(rows[r], {n: previous[n] * m for n, m in mask.items()}, final, mask)
        # Derivable from round r-1's stored weights: no start weights are stored.
        assert stored_files(store, rounds[r]) == ["mask.npz", "metrics.json", "weights.pt"]
    if mode == "finetune":
        lrs = MlflowClient(store.tracker.uri).get_metric_history(rounds[1], "epoch/lr")
        assert [m.value for m in lrs] == [0.001]


def test_lottery_rewinds_to_the_saved_weights_at_the_rewind_step(project, tmp_path):
    cfg, store, rows, rounds = trajectory(project, tmp_path, **{"retrain.rewind_step": 2})
    init, rewind = init_of(cfg, project), store.load_state("rewind")
    assert stored_files(store, store.run_id, "state") == ["state/rewind.pt"]  # the init is never stored
    assert store.init_digest() == checkpoint.digest(init)  # only its digest
    assert not torch.equal(init["1.weight"], rewind["1.weight"])  # two steps of training moved it
    # distance_from_start is measured from the masked rewind weights: recompute it from the artifacts.
    for r in (1, 2):
        mask = tracking.load_mask(rounds[r], store.tracker.uri)
        final = tracking.load_weights(rounds[r], store.tracker.uri)
        start = {n: rewind[n] * m for n, m in mask.items()}
        assert rows[r]["distance_from_start"] == pytest.approx(learning_distance(start, final, mask), rel=1e-9)
        assert rows[r]["learning_distance"] == pytest.approx(learning_distance(init, final, mask), rel=1e-9)


def test_lottery_rewinding_to_the_init_stores_no_state(project, tmp_path):
    cfg, store, rows, rounds = trajectory(project, tmp_path)
    assert stored_files(store, store.run_id, "state") == []  # rewind step 0: the rewind state is the init
    init = init_of(cfg, project)
    for r in (1, 2):
        mask = tracking.load_mask(rounds[r], store.tracker.uri)
        final = tracking.load_weights(rounds[r], store.tracker.uri)
        assert_started_from(rows[r], {n: init[n] * m for n, m in mask.items()}, final, mask)


def test_scratch_draws_a_fresh_initialisation_every_round(project, tmp_path):
    cfg, store, rows, rounds = trajectory(project, tmp_path, **{"retrain.mode": "scratch"})
    init = init_of(cfg, project)
    masks = [tracking.load_mask(rounds[r], store.tracker.uri) for r in (1, 2)]
    starts = [fresh_start(cfg, project, r, m) for r, m in zip((1, 2), masks)]
    for r, start, mask in zip((1, 2), starts, masks):
        assert_started_from(rows[r], start, tracking.load_weights(rounds[r], store.tracker.uri), mask)
        assert stored_files(store, rounds[r]) == ["mask.npz", "metrics.json", "weights.pt"]
    mask = masks[0]["1.weight"]
    assert not torch.equal(starts[0]["1.weight"][mask], (init["1.weight"])[mask])
    assert not torch.equal(starts[0]["5.weight"], starts[1]["5.weight"])


def test_reinit_uses_exactly_the_lottery_masks_with_fresh_weights(project, tmp_path):
    cfg, lottery, _, lottery_rounds = trajectory(project, tmp_path)
    reinit_cfg, reinit, rows, reinit_rounds = trajectory(project, tmp_path, **{"retrain.mode": "reinit",
                                                                             "retrain.masks_from": "lottery"})
    uri = lottery.tracker.uri
    init = init_of(cfg, project)
    for r in (1, 2):
        ours, theirs = tracking.load_mask(reinit_rounds[r], uri), tracking.load_mask(lottery_rounds[r], uri)
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[n], theirs[n]) for n in ours)
        start = fresh_start(reinit_cfg, project, r, ours)
        assert_started_from(rows[r], start, tracking.load_weights(reinit_rounds[r], uri), ours)
        assert not torch.equal(start["5.weight"], init["5.weight"])
        assert stored_files(reinit, reinit_rounds[r]) == ["mask.npz", "metrics.json", "weights.pt"]


def test_reinit_copies_its_lottery_twins_round_0_and_trains_only_the_pruned_rounds(project, tmp_path,
                                                                                     monkeypatch):
    cfg, lottery, lottery_rows, lottery_rounds = trajectory(project, tmp_path)
    fits = []
    real_fit = train.fit
    monkeypatch.setattr(train, "fit", lambda *a, **k: fits.append(1) or real_fit(*a, **k))
    _, reinit, rows, reinit_rounds = trajectory(project, tmp_path, **{"retrain.mode": "reinit"})
    assert len(fits) == cfg.prune.rounds  # R trainings, not R + 1: round 0 is the twin's
    run = reinit.client.get_run(reinit_rounds[0])
    assert run.data.tags["sddkit.copied_from"] == lottery_rounds[0]
    same = ("test_acc", "train_acc_noisy", "train_acc_clean", "learning_distance", "sparsity")
    assert {k: rows[0][k] for k in same} == {k: lottery_rows[0][k] for k in same}
    assert rows[0]["copied_round_seconds"] == lottery_rows[0]["round_seconds"]
    ours, theirs = tracking.load_weights(reinit_rounds[0], reinit.tracker.uri), \
        tracking.load_weights(lottery_rounds[0], reinit.tracker.uri)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    history = lambda run_id: [(m.step, m.value) for m in  # noqa: E731
                              reinit.client.get_metric_history(run_id, "epoch/train_loss")]
    assert history(reinit_rounds[0]) == history(lottery_rounds[0])
    # Its parent curve starts at the twin's dense accuracy too.
    assert [m.value for m in reinit.client.get_metric_history(reinit.run_id, "test_acc")][0] == lottery_rows[0]["test_acc"]


def test_reinit_from_a_lottery_run_of_another_seed_trains_its_own_round_0(project, tmp_path):
    _, other, _, _ = trajectory(project, tmp_path, **{"seed": 1})
    _, reinit, rows, rounds = trajectory(project, tmp_path, **{"retrain.mode": "reinit",
                                                              "retrain.masks_from": other.run_id})
    assert "sddkit.copied_from" not in reinit.client.get_run(rounds[0]).data.tags


def test_reinit_without_its_lottery_names_what_exists(project, tmp_path):
    cfg = load_config(overrides={**SMALL, "tracking.uri": f"sqlite:///{tmp_path}/mlflow.db",
                                 "retrain.mode": "reinit", "retrain.masks_from": "nope"})
    with pytest.raises(tracking.TrackingError, match="reinit: no lottery twin named 'nope'"):
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


def test_reinit_refuses_an_explicit_run_whose_masks_do_not_fit(project, tmp_path):
    _, lottery, _, _ = trajectory(project, tmp_path)
    cfg = load_config(overrides={**SMALL, "tracking.uri": f"sqlite:///{tmp_path}/mlflow.db", "prune.rate": 0.5,
                                 "retrain.mode": "reinit", "retrain.masks_from": lottery.run_id})
    with pytest.raises(tracking.TrackingError, match="do not fit this config .*prune.rate: 0.2 there, 0.5 here"):
        runner.run_trajectory(cfg, project, quiet=True)


def test_reinit_takes_only_its_exact_finished_twin_or_an_explicit_run_id(project, tmp_path):
    """A lottery run of another noise level is never taken; an unfinished twin with no live owner is named,
    with the round it lacks (with --wait it would be followed, once resumed)."""
    _, other_noise, _, other_rounds = trajectory(project, tmp_path, **{"noise.ratio": 0.4})
    uri = other_noise.tracker.uri
    cfg = load_config(overrides={**SMALL, "tracking.uri": uri})
    unfinished = tracking.Tracker(uri, project).open_trajectory(cfg)  # the twin, started and never finished
    reinit = load_config(overrides={**SMALL, "tracking.uri": uri, "retrain.mode": "reinit"})
    with pytest.raises(tracking.TrackingError, match=f"reinit's lottery twin: run {unfinished.run_id} stopped "
                                                     f"\\(RUNNING, no live process\\) before its round-1 mask; "
                                                     f".*resume it"):
        runner.run_trajectory(reinit, project, quiet=True)
    assert len(tracking.Tracker(uri, project).trajectories("sddkit")) == 2  # nothing written

    explicit = load_config(overrides={**SMALL, "tracking.uri": uri, "retrain.mode": "reinit",
                                      "retrain.masks_from": other_noise.run_id})
    store, _ = runner.run_trajectory(explicit, project, quiet=True)
    ours = {int(r.data.tags["sddkit.round"]): r.info.run_id for r in store.tracker.round_runs(store.run_id)}
    for r in (1, 2):
        assert all(torch.equal(a, b) for a, b in zip(tracking.load_mask(ours[r], uri).values(),
                                                       tracking.load_mask(other_rounds[r], uri).values()))
    assert unfinished.run_id not in {store.run_id}


# ---------------------------------------------------------------- where a round starts in the schedule

def epoch_lrs(store, run_id: str) -> dict[int, float]:
    history = store.client.get_metric_history(run_id, "epoch/lr")
    return {m.step: m.value for m in history}


@pytest.mark.parametrize("mode, starts_at_rewind", [("lottery", True), ("reinit", True), ("oneshot", True),
                                                    ("lr_rewind", False), ("scratch", False)])
def test_a_round_restarted_at_the_rewind_step_continues_the_dense_schedule(project, tmp_path, mode,
                                                                           starts_at_rewind):
    """4 epochs, lr x0.1 from epoch 2, rewind at 1 epoch: a lottery round trains epochs 1-3, at the base lr in
    epoch 1 and at base·γ in epochs 2-3 (the paper's code advances the schedule by the rewind step)."""
    schedule = {"train.epochs": 4, "train.schedule": "multistep", "train.milestones": [2], "train.gamma": 0.1,
                "train.lr": 0.05, "train.optimizer": "sgd", "train.momentum": 0.9, "prune.rounds": 1,
                "retrain.rewind_step": 1, "retrain.rewind_unit": "epochs"}
    if mode == "reinit":
        trajectory(project, tmp_path, **schedule)
    _, store, _, rounds = trajectory(project, tmp_path, **schedule, **{"retrain.mode": mode})
    base, gamma = 0.05, 0.1
    expected_dense = {0: base, 1: base, 2: base * gamma, 3: base * gamma}  # computed here, not by sddkit
    assert epoch_lrs(store, rounds[0]) == pytest.approx(expected_dense)
    expected_sparse = {e: lr for e, lr in expected_dense.items() if e >= 1} if starts_at_rewind else expected_dense
    assert epoch_lrs(store, rounds[1]) == pytest.approx(expected_sparse)


REAL_TRAIN_STEP = train.train_step


def recorded_steps(monkeypatch, **fit_kwargs) -> list[tuple]:
    """(step label, lr, optimizer id, batch labels) of every optimizer step of one ``train.fit``."""
    splits = data.Splits(torch.randint(0, 255, (50, 1, 4, 4), dtype=torch.uint8), torch.arange(50) % 5,
                         torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.long), 5,
                         torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1))
    cfg = load_config(overrides={"train.epochs": 3, "train.batch_size": 10, "train.schedule": "cosine",
                                 "train.optimizer": "sgd", "train.lr": 0.1, "train.momentum": 0.9}).train
    steps = []

    def spy(model, optimizer, x, y, *settings):
        steps.append((optimizer.param_groups[0]["lr"], id(optimizer), y.tolist()))
        return REAL_TRAIN_STEP(model, optimizer, x, y, *settings)
    monkeypatch.setattr(train, "train_step", spy)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 5))
    gens = train.Generators(torch.Generator().manual_seed(1), torch.Generator().manual_seed(2))
    train.fit(model, splits, splits.y_train_clean, cfg, gens, **fit_kwargs)
    return steps


def test_a_fit_from_step_k_sees_the_batches_and_lrs_of_steps_k_onwards(monkeypatch):
    whole = recorded_steps(monkeypatch)
    assert len(whole) == 15  # 3 epochs of 5 batches
    for k in (3, 5, 12):  # inside the first epoch, on an epoch boundary, inside the last epoch
        later = recorded_steps(monkeypatch, start_step=k)
        assert [(lr, y) for lr, _, y in later] == [(lr, y) for lr, _, y in whole[k:]]
    total = 15
    assert [lr for lr, _, _ in whole] == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * s / total))
                                                         for s in range(total)])


def test_round_zero_restarts_its_optimizer_at_the_rewind_point(monkeypatch):
    steps = recorded_steps(monkeypatch, fresh_optimizer_at=4)
    optimizers = [opt for _, opt, _ in steps]
    assert len(set(optimizers[:4])) == 1 and len(set(optimizers[4:])) == 1 and optimizers[3] != optimizers[4]


def test_a_rewind_point_past_the_end_of_training_is_refused_before_any_run(project, tmp_path):
    cfg = load_config(overrides={**SMALL, "tracking.uri": f"sqlite:///{tmp_path}/mlflow.db",
                                 "retrain.rewind_step": 4})  # 200 samples / 50 = 4 steps, 1 epoch
    with pytest.raises(ConfigError, match="retrain.rewind_step = 4 iterations is step 4, not before the end"):
        runner.run_trajectory(cfg, project, quiet=True)
    assert tracking.Tracker(cfg.tracking.uri, project).trajectories("sddkit") == []

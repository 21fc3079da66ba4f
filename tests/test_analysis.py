"""Known answers for the learning distance, the phases, interpolation and the filter-normalised landscape;
then ``sddkit analyze`` end to end on a tiny trajectory stored in a real MLflow sqlite store."""
import csv
import json
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from sddkit import analysis, analyze, cli, config, landscape, redense, runner
from sddkit.selection import select
from sddkit.tracking import TRAJECTORY, Tracker, TrackingError, read_mask, round_row
from tests.conftest import TINY

# The quick preset's curves as measured on 2026-11-25 (docs/quick-preset/ then): a fixed copy, so that
# regenerating the docs on another machine (floats differ across CPUs) cannot move these tests.
QUICK_CURVES = Path(__file__).resolve().parent / "data"


# ---------------------------------------------------------------- learning distance

def test_learning_distance_three_four_five():
    ref = {"a": torch.zeros(1, 2)}
    weights, masks = {"a": torch.tensor([[3.0, 4.0]])}, {"a": torch.ones(1, 2, dtype=bool)}
    assert analysis.learning_distance(ref, weights, masks) == 5.0


def test_learning_distance_sums_over_tensors():
    ref = {"a": torch.zeros(2), "b": torch.zeros(1)}
    weights = {"a": torch.tensor([3.0, 4.0]), "b": torch.tensor([12.0])}
    masks = {n: torch.ones_like(w, dtype=bool) for n, w in weights.items()}
    assert analysis.learning_distance(ref, weights, masks) == pytest.approx(13.0)


def test_learning_distance_counts_pruned_entries_as_zero():
    # The pruned entry's stored value (100) must not count: it is 0, so the distance to a reference of 0 ignores it
    # and the distance to a reference of 2 counts the full 2.
    ref = {"a": torch.tensor([[0.0, 0.0, 0.0]]), "b": torch.tensor([1.0, 2.0])}
    weights = {"a": torch.tensor([[3.0, 4.0, 100.0]]), "b": torch.tensor([1.0, 9.0])}
    masks = {"a": torch.tensor([[True, True, False]]), "b": torch.tensor([True, False])}
    assert analysis.learning_distance(ref, weights, masks) == pytest.approx((25 + 4) ** 0.5)


def test_learning_distance_of_identical_weights_is_zero():
    gen = torch.Generator().manual_seed(0)
    weights = {"a": torch.randn(5, 7, generator=gen), "b": torch.randn(3, 4, 2, 2, generator=gen)}
    masks = {n: torch.rand(w.shape, generator=gen) > 0.3 for n, w in weights.items()}
    pruned = {n: w * masks[n] for n, w in weights.items()}
    assert analysis.learning_distance(pruned, pruned, masks) == 0.0
    assert analysis.learning_distance(weights, weights, masks) > 0.0  # the reference keeps its pruned entries


# ---------------------------------------------------------------- phases

def rows_of(test_acc, train_acc_noisy):
    return [{"round": i, "test_acc": t, "train_acc_noisy": n, "sparsity": 1 - 0.8 ** i}
            for i, (t, n) in enumerate(zip(test_acc, train_acc_noisy))]


DOUBLE_DESCENT = rows_of([80, 79, 70, 78, 85, 60], [100, 100, 99, 90, 80, 50])


def test_phases_of_a_double_descent():
    ph = analysis.phases(DOUBLE_DESCENT)
    assert (ph.dense, ph.critical, ph.minimum, ph.peak, ph.last, ph.interpolation_threshold) == (0, 2, 2, 4, 5, 3)
    assert [ph.label(i) for i in range(6)] == ["light", "light", "critical", "sweet", "sweet", "collapse"]
    assert analysis.phase_spans(ph) == {"light": (0, 1), "critical": (2, 2), "sweet": (3, 4), "collapse": (5, 5)}
    assert analysis.phase_metrics(ph) == {
        "phase_light_first": 0, "phase_light_last": 1, "phase_critical_first": 2, "phase_critical_last": 2,
        "phase_sweet_first": 3, "phase_sweet_last": 4, "phase_collapse_first": 5, "phase_collapse_last": 5}
    assert analysis.phase_tags(ph) == {"sddkit.phase.light": "0-1", "sddkit.phase.critical": "2-2",
                                       "sddkit.phase.sweet": "3-4", "sddkit.phase.collapse": "5-5",
                                       "sddkit.interpolation_threshold": "3"}


def test_interpolation_threshold_level_moves_the_sweet_phase():
    ph = analysis.phases(DOUBLE_DESCENT, threshold=85.0)  # round 3 (90%) still interpolates
    assert (ph.minimum, ph.interpolation_threshold) == (2, 4)
    assert [ph.label(i) for i in range(6)] == ["light", "light", "critical", "critical", "sweet", "collapse"]


def test_light_tolerance_moves_the_start_of_the_critical_phase():
    assert analysis.phases(DOUBLE_DESCENT, light_tolerance=0.5).critical == 1  # round 1 is 1 point below dense
    assert analysis.phases(DOUBLE_DESCENT, light_tolerance=10.0).critical is None  # the minimum is 10 below
    with pytest.raises(ValueError, match="light_tolerance"):
        analysis.phases(DOUBLE_DESCENT, light_tolerance=0.0)


def test_phases_of_a_curve_that_never_stops_interpolating():
    ph = analysis.phases(rows_of([80, 77, 81], [100, 100, 100]))
    assert (ph.critical, ph.minimum, ph.peak, ph.interpolation_threshold) == (1, 1, 2, None)
    assert analysis.phase_spans(ph) == {"light": (0, 0), "critical": (1, 1), "sweet": (2, 2)}
    tags = analysis.phase_tags(ph)
    assert tags["sddkit.interpolation_threshold"] == "none" and tags["sddkit.phase.collapse"] == "none"


def test_a_minimum_within_the_tolerance_leaves_no_critical_phase():
    # The dip (1.5 points) is no larger than a light phase's scatter: light runs on until the net stops
    # interpolating the noisy labels, then sweet and collapse as usual.
    ph = analysis.phases(rows_of([80, 79, 78.5, 79.2, 85, 60], [100, 100, 100, 90, 80, 50]))
    assert (ph.critical, ph.minimum) == (None, 2)
    assert analysis.phase_spans(ph) == {"light": (0, 2), "sweet": (3, 4), "collapse": (5, 5)}
    assert analysis.phase_tags(ph)["sddkit.phase.critical"] == "none"


def test_a_drop_of_exactly_the_tolerance_is_still_light():
    ph = analysis.phases(rows_of([80, 78, 77.9, 77, 85, 60], [100, 100, 100, 100, 80, 50]))
    assert [ph.label(i) for i in range(4)] == ["light", "light", "critical", "critical"]
    # As stored: float32 percentages, so 83.3 -> 80.3 is 3.0000031 points; it is exactly 3, not more.
    stored = rows_of([83.30000042915344, 80.29999732971191, 79.9, 85], [100, 100, 100, 80])
    assert analysis.phases(stored, light_tolerance=3.0).critical == 2


def test_a_critical_round_that_recovers_stays_critical():
    ph = analysis.phases(rows_of([80, 77, 79.5, 76, 85, 60], [100, 100, 100, 100, 80, 50]))
    assert analysis.phase_spans(ph) == {"light": (0, 0), "critical": (1, 3), "sweet": (4, 4), "collapse": (5, 5)}


def test_a_net_that_never_fits_the_noisy_labels_gets_no_phases_but_the_reason():
    """Every round was labelled light though test accuracy fell 10.5 points, because the dense net never
    reached the fit level (issue 29). No phase is made up: the closing line says what the phases need."""
    from sddkit import results
    rows = rows_of([80, 78, 74, 69.5], [70, 68, 66, 60])
    ph = analysis.phases(rows)
    assert [ph.label(i) for i in range(4)] == [""] * 4
    assert analysis.phase_spans(ph) == {} and analysis.phase_metrics(ph) == {}
    assert {v for k, v in analysis.phase_tags(ph).items() if k.startswith("sddkit.phase.")} == {"none"}
    line = results.landmarks_line(rows, ph)
    assert "nan" not in line and "light" not in line
    assert "no round fits the noisy labels" in line and "train noisy ≥ 95%" in line
    assert "analysis.interpolation_threshold" in line and "phases" in line


def test_a_short_run_says_why_it_has_no_peak_instead_of_nan():
    """The closing line printed `dip nan  rise nan  drop nan points` on a short run (issue 29)."""
    from sddkit import results
    rows = rows_of([80, 76], [100, 100])  # the minimum is the last round: no rise or drop yet
    line = results.landmarks_line(rows, analysis.phases(rows))
    assert "nan" not in line and "dip 4.0" in line and "no peak" in line and "last round" in line


def test_light_tolerance_is_a_checked_setting_outside_the_run_identity():
    assert config.load_config().analysis.light_tolerance == 2.0
    assert config.load_config().identity_hash() == \
        config.load_config(overrides=["analysis.light_tolerance=3"]).identity_hash()
    with pytest.raises(config.ConfigError, match="analysis.light_tolerance"):
        config.load_config(overrides=["analysis.light_tolerance=0"])


# The paper's curves, through its figure read-offs (shared/docs/PAPER.md; round k has sparsity 1 - 0.8^k).
LIGHT_SCATTER = (0.0, 0.4, -0.3, 0.6, -0.5, 0.2, -0.7, 0.3)  # round-to-round noise, well inside the tolerance


def paper_rows(dense, holds_until, minimum, peak, last):
    """Test accuracy within a point of ``dense`` up to round ``holds_until``, then straight lines to the
    ``minimum``, ``peak`` and ``last`` (round, accuracy); train_acc_noisy is 100 up to the minimum and below
    95 right after it: the net stops fitting the noisy labels and test accuracy rises (the sweet phase)."""
    (m, _), _, (n, _) = minimum, peak, last
    knots = [(0, dense), (holds_until, dense - 1.0), minimum, peak, last]
    test = np.interp(range(n + 1), *zip(*knots))
    test[1:holds_until] += [LIGHT_SCATTER[i % len(LIGHT_SCATTER)] for i in range(1, holds_until)]
    train = [100.0] * (m + 1) + list(np.linspace(93.0, 40.0, n - m))
    return rows_of([float(t) for t in test], train)


@pytest.mark.parametrize("setting, curve, spans", [
    ("LeNet-300-100 MNIST, eps=20%: minimum 76.5 at 89.3%, peak 95.5 at 98.8%",
     paper_rows(83.4, 5, (10, 76.5), (20, 95.5), (24, 80.0)),
     {"light": (0, 5), "critical": (6, 10), "sweet": (11, 20), "collapse": (21, 24)}),
    ("ResNet-18 CIFAR-10, eps=20%: minimum 78.0 at 98.2%, peak 87.7 at 99.5%",
     paper_rows(83.3, 12, (18, 78.0), (24, 87.7), (30, 75.0)),
     {"light": (0, 13), "critical": (14, 18), "sweet": (19, 24), "collapse": (25, 30)}),
    ("ResNet-18 CIFAR-10, eps=40%: minimum 62.0 at 94.5%, peak 84.1 at 99.6%",
     paper_rows(68.5, 8, (13, 62.0), (25, 84.1), (30, 70.0)),
     {"light": (0, 8), "critical": (9, 13), "sweet": (14, 25), "collapse": (26, 30)}),
    ("ResNet-18 CIFAR-100, eps=20%: minimum 54.0 at 97.2%, peak 59.8 at 99.1%",
     paper_rows(60.4, 10, (16, 54.0), (21, 59.8), (30, 40.0)),
     {"light": (0, 11), "critical": (12, 16), "sweet": (17, 21), "collapse": (22, 30)}),
    ("ResNet-18 CIFAR-10, eps=80%: minimum 26 (dense 27) near 91%, peak 62.8 at 99.87%: no critical phase",
     paper_rows(27.0, 10, (11, 26.0), (30, 62.8), (32, 40.0)),
     {"light": (0, 11), "sweet": (12, 30), "collapse": (31, 32)}),
])
def test_phases_of_the_papers_curves(setting, curve, spans):
    ph = analysis.phases(curve)
    assert analysis.phase_spans(ph) == spans, setting
    dense = curve[0]["test_acc"]
    assert all(dense - curve[i]["test_acc"] <= 2.0 for i in range(spans["light"][1] + 1))
    if "critical" in spans:
        assert dense - curve[spans["critical"][0]]["test_acc"] > 2.0


def quick_preset_rows(seed):
    """The quick preset's own curve, a fixed copy (its stored ``phase`` column is not read)."""
    with open(QUICK_CURVES / f"quick-preset-2026-11-25-seed{seed}.csv") as f:
        return [{k: float(v) for k, v in row.items() if k != "phase"} for row in csv.DictReader(f)]


def test_phases_of_the_quick_presets_own_curve():
    rows = quick_preset_rows(0)
    ph = analysis.phases(rows)  # dense 81.5; round 8 (83% sparse) is the first more than 2 points below: 79.3
    assert analysis.phase_spans(ph) == {"light": (0, 7), "critical": (8, 14), "sweet": (15, 22),
                                        "collapse": (23, 32)}
    assert (ph.minimum, ph.interpolation_threshold, ph.peak) == (14, 15, 22)
    assert analysis.phases(rows, light_tolerance=1.0).critical == 1  # 80.4: inside the round-to-round noise
    assert analysis.phases(rows, light_tolerance=3.0).critical == 10


def test_the_light_tolerance_on_the_quick_preset_stored_exactly_at_the_edge():
    # Seed 2: dense 83.3, round 5 at 80.3 is exactly 3 points below; rounds 6 and 7 are within 3, round 8 is not.
    assert analysis.phases(quick_preset_rows(2), light_tolerance=3.0).critical == 8


# ---------------------------------------------------------------- interpolation and landscape

def test_alphas_and_grid():
    assert landscape.alphas(0.25) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert landscape.alphas(0.3) == [0.0, 0.3, 0.6, 0.9, 1.0]
    assert len(landscape.alphas(0.01)) == 101
    with pytest.raises(ValueError, match="0 < step"):
        landscape.alphas(0.0)
    ts = landscape.grid(5, 0.1)
    assert ts == [-1.0, -0.5, -0.1, 0.0, 0.1, 0.5, 1.0]


def test_blend_interpolates_buffers_and_keeps_endpoints_exact():
    a, b = nn.BatchNorm1d(3).state_dict(), nn.BatchNorm1d(3).state_dict()
    b["running_mean"] += 2.0
    b["weight"] = torch.tensor([1.5, -2.0, 3.25])
    b["num_batches_tracked"] += 7
    half = landscape.blend(a, b, 0.5)
    assert torch.equal(half["running_mean"], torch.full((3,), 1.0))
    for alpha, end in ((0.0, a), (1.0, b)):
        blended = landscape.blend(a, b, alpha)
        assert all(torch.equal(blended[k], end[k]) for k in end)


def test_each_filter_of_the_direction_has_the_norm_of_its_weight_filter():
    gen = torch.Generator().manual_seed(1)
    weights = {"conv.weight": torch.randn(4, 3, 3, 3, generator=gen), "fc.weight": torch.randn(5, 8, generator=gen)}
    masks = {n: torch.rand(w.shape, generator=gen) > 0.5 for n, w in weights.items()}
    masks["fc.weight"][2] = False  # a fully pruned filter gets a zero direction
    d = landscape.filter_normalised_direction(weights, masks, torch.Generator().manual_seed(7))
    for name, w in weights.items():
        live = w * masks[name]
        assert torch.allclose(d[name].flatten(1).norm(dim=1), live.flatten(1).norm(dim=1), atol=1e-5)
        assert not d[name][~masks[name]].any()  # pruned entries stay pruned along the direction
    assert not d["fc.weight"][2].any()
    again = landscape.filter_normalised_direction(weights, masks, torch.Generator().manual_seed(7))
    assert all(torch.equal(d[n], again[n]) for n in d)
    shifted = landscape.shifted({**weights, "fc.bias": torch.ones(5)}, d, 0.5)
    assert torch.equal(shifted["fc.bias"], torch.ones(5))  # biases and norm layers get no direction
    assert torch.allclose(shifted["fc.weight"], weights["fc.weight"] + 0.5 * d["fc.weight"])


def test_sharpness_is_zero_on_a_flat_loss_and_a_rho_squared_on_a_quadratic():
    ts = landscape.grid(41, 0.1)
    assert landscape.sharpness(ts, [2.5] * len(ts), 0.1) == 0.0
    assert landscape.sharpness(ts, [3.0 * t * t + 1.0 for t in ts], 0.1) == pytest.approx(3.0 * 0.01)
    # Rises beyond the radius do not count.
    assert landscape.sharpness(ts, [0.0 if abs(t) <= 0.1 else 9.0 for t in ts], 0.1) == 0.0
    with pytest.raises(ValueError, match="t = 0"):
        landscape.sharpness([-1.0, 1.0], [0.0, 0.0], 0.1)


def test_redense_default_lr_is_the_lr_of_the_last_step():
    cfg = config.load_config(overrides={"train.schedule": "multistep", "train.milestones": [3], "train.epochs": 5,
                                        "train.lr": 0.1, "train.gamma": 0.1, "train.optimizer": "sgd"})
    ctx = types.SimpleNamespace(cfg=cfg, noisy=torch.zeros(500))
    assert redense.default_lr(ctx, 2) == pytest.approx(0.01)
    assert redense.default_epochs(ctx, 2) == 5


def test_config_from_mlflow_params_round_trips():
    cfg = config.load_config(overrides={"noise.seed": 3, "train.milestones": [5, 7], "tracking.run_name": "123",
                                        "prune.exclude": ["5.weight"]})
    params = {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v) for k, v in cfg.flat().items()}
    assert config.from_params({**params, "dvc.experiment": "x"}) == cfg


# ---------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def stored_once(tmp_path_factory):
    """One tiny trajectory (2 rounds of 1 epoch) in a project folder of its own, shared by the tests below."""
    project = tmp_path_factory.mktemp("analyze") / "project"
    (project / ".git").mkdir(parents=True)
    # A threshold this tiny run reaches (it never fits 95% of the noisy labels): its rounds get phases.
    cfg = config.load_config(overrides={**TINY, "train.epochs": 1, "prune.rounds": 2,
                                        "analysis.interpolation_threshold": 1.0})
    store, rows = runner.run_trajectory(cfg, project, quiet=True)
    return project, cfg, store.run_id, Tracker(f"sqlite:///{project}/mlflow.db", project)


@pytest.fixture
def stored(stored_once, monkeypatch):
    project, *rest = stored_once
    monkeypatch.chdir(project)  # the CLI finds the project (and its store) from the working directory
    monkeypatch.delenv("DVC_ROOT", raising=False)
    return rest


def children(client, parent_run_id, experiment_id):
    runs = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'")
    return {r.data.tags["sddkit.kind"]: r for r in runs}


ANALYZE = ["analyze", "lottery", "--rounds", "1", "2", "--redense-epochs", "1", "--interpolation-step", "0.25",
           "--landscape-points", "5"]


def test_phases_are_logged_on_the_parent_and_round_runs(stored):
    cfg, parent_id, tracker = stored
    parent = tracker.client.get_run(parent_id)
    ph = analysis.phases([round_row(r) for r in tracker.round_runs(parent_id)], cfg.analysis.interpolation_threshold)
    assert {k: parent.data.tags[k] for k in analysis.phase_tags(ph)} == analysis.phase_tags(ph)
    assert parent.data.metrics["phase/light_first"] == 0
    assert parent.data.tags["sddkit.group"] == cfg.group_hash()
    labels = [r.data.tags["sddkit.phase"] for r in tracker.round_runs(parent_id)]
    assert labels == [ph.label(i) for i in range(3)]


def test_analyze_logs_redense_interpolation_and_landscape_under_the_round_runs(stored):
    cfg, parent_id, tracker = stored
    client = tracker.client
    result = CliRunner().invoke(cli.main, ANALYZE)
    assert result.exit_code == 0, result.output
    assert "sharpness" in result.output
    rounds = {int(r.data.tags["sddkit.round"]): r for r in tracker.round_runs(parent_id)}
    for index in (1, 2):
        round_run = rounds[index]
        kids = children(client, round_run.info.run_id, round_run.info.experiment_id)
        assert set(kids) == {"redense", "interpolation", "landscape"}
        assert all(k.info.status == "FINISHED" and k.data.tags["sddkit.trajectory"] == parent_id for k in kids.values())
        red, interp, walk = kids["redense"], kids["interpolation"], kids["landscape"]
        assert {f.path for f in client.list_artifacts(red.info.run_id)} == {"weights.pt"}
        assert {f.path for f in client.list_artifacts(interp.info.run_id)} == {"interpolation.png"}
        assert {f.path for f in client.list_artifacts(walk.info.run_id)} == {"landscape.png"}

        # Re-dense trains every weight: pruned weights of the round leave 0.
        mask, dense = read_mask(tracker, round_run.info.run_id), tracker.read_torch(red.info.run_id, "weights.pt")
        assert any(dense[n][~m].abs().sum() > 0 for n, m in mask.items())

        # Interpolation endpoints are the two models' own metrics.
        series = {m: client.get_metric_history(interp.info.run_id, f"interpolation/{m}")
                  for m in ("alpha", "test_acc", "train_acc_noisy", "test_loss")}
        assert [(p.step, p.value) for p in series["alpha"]] == list(enumerate([0.0, 0.25, 0.5, 0.75, 1.0]))
        by_step = {m: {p.step: p.value for p in h} for m, h in series.items()}
        for m in ("test_acc", "train_acc_noisy", "test_loss"):
            assert by_step[m][0] == pytest.approx(round_run.data.metrics[m], abs=1e-6)
            assert by_step[m][4] == pytest.approx(red.data.metrics[m], abs=1e-6)

        ts = [p.value for p in sorted(client.get_metric_history(walk.info.run_id, "landscape/t"), key=lambda p: p.step)]
        assert ts == [-1.0, -0.5, -0.1, 0.0, 0.1, 0.5, 1.0]
        assert walk.data.metrics["sharpness"] >= 0.0
        assert client.get_run(round_run.info.run_id).data.metrics["sharpness"] == walk.data.metrics["sharpness"]
    assert [p.step for p in client.get_metric_history(parent_id, "sharpness")] == [1, 2]

    # A second analysis with the same settings reuses the stored runs.
    again = CliRunner().invoke(cli.main, ANALYZE)
    assert again.exit_code == 0, again.output
    assert len(client.search_runs([rounds[2].info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{rounds[2].info.run_id}'")) == 3


def test_analyze_names_the_runs_that_exist_when_the_run_is_unknown(stored):
    result = CliRunner().invoke(cli.main, ["analyze", "nope"])
    assert result.exit_code == 1
    assert "no trajectory named 'nope'" in result.output and "lottery" in result.output
    result = CliRunner().invoke(cli.main, ["analyze", "lottery", "--rounds", "9"])
    assert result.exit_code == 1 and "finished rounds: 0, 1, 2" in result.output


def test_analyze_leaves_out_failed_and_unfinished_trajectories_of_the_same_name(stored_once, tmp_path):
    project, _, parent_id, _ = stored_once
    shutil.copy(project / "mlflow.db", tmp_path / "mlflow.db")  # a store of our own: the shared one stays as is
    shutil.copytree(project / "mlruns", tmp_path / "mlruns")  # with its artifacts (else it is refused as moved)
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", project)
    client, experiment = tracker.client, tracker.experiment_id("sddkit")
    for name, status in (("lottery", "FAILED"), ("lottery", "RUNNING"), ("broken", "FAILED")):
        run = client.create_run(experiment, run_name=name, tags={"sddkit.kind": TRAJECTORY, "sddkit.name": name})
        client.set_terminated(run.info.run_id, status)
    assert [r.info.run_id for r in select(tracker, "lottery", "sddkit")] == [parent_id]
    # Planning reaches the finished trajectory (and stops at its missing round) instead of the newer failed one.
    with pytest.raises(TrackingError, match="has no finished round 9; finished rounds: 0, 1, 2"):
        analyze.analyze(tracker, project, "lottery", "sddkit", analyze.Settings(rounds=(9,)))
    with pytest.raises(TrackingError, match=r"no trajectory named 'broken' has finished \(1 found: FAILED\)"):
        select(tracker, "broken", "sddkit")


def test_a_damaged_noisy_labels_artifact_is_named(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", tmp_path)
    run_id = tracker.client.create_run(tracker.experiment_id("sddkit")).info.run_id
    damaged = tmp_path / "noisy_labels.npy"
    damaged.write_bytes(b"\x93NUMPY\x01\x00not a header")
    tracker.client.log_artifact(run_id, str(damaged))
    with pytest.raises(TrackingError, match=f"run {run_id}: noisy_labels.npy is corrupt .*--force"):
        analyze.check_labels(tracker, run_id, torch.zeros(3, dtype=torch.long))


def test_analyze_prints_its_table_as_json_on_stdout_alone(stored):
    import json
    cfg, parent_id, tracker = stored
    result = CliRunner().invoke(cli.main, [*ANALYZE, "--format", "json"])  # reuses the stored analyses
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["trajectory"], r["round"]) for r in rows] == [(parent_id, 1), (parent_id, 2)]
    assert all(r["sharpness"] >= 0 and 0 <= r["redense_test_acc"] <= 100 for r in rows)


def test_analyze_shows_progress_and_names_the_trajectories(stored):
    """`sddkit analyze` showed no sign of life for ~70 s and its table named runs only by ID (issue 29)."""
    cfg, parent_id, tracker = stored
    name = tracker.client.get_run(parent_id).info.run_name
    result = CliRunner().invoke(cli.main, ANALYZE)
    assert result.exit_code == 0, result.output
    progress = [line for line in result.stderr.splitlines() if " analyze: " in line]
    assert len(progress) >= 1 + 1 + 3 * 2  # the plan, the data, three steps a round
    assert any(f"{name} round 2: re-dense" in line for line in progress)
    assert name in result.stdout and parent_id[:8] in result.stdout  # the table: name and run

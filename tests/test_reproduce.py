"""sddkit reproduce: the study files and their validation, the checks on hand-made curves, the plan (a cell two
studies share is one trajectory), and a tiny reproduction end to end through the real CLI in subprocesses on a
real sqlite store: its verdicts against landmarks computed here from the stored runs, its report, and a rerun
that trains nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sddkit import analysis, cli, reproduce, studies
from sddkit.config import ConfigError, load_config
from sddkit.studies import FAILS, HOLDS, UNCLEAR, Replicate
from sddkit.tracking import Tracker, round_row

REPO = Path(__file__).resolve().parents[1]
# Tiny but real: 300 digits memorised in 30 epochs; pruning half of what is left each round reaches the
# interpolation threshold within 8 rounds, so the landmarks exist.
TINY = ["--set", "data.train_size=300", "--set", "train.epochs=30", "--set", "train.milestones=[]",
        "--set", "prune.rate=0.5", "--set", "prune.rounds=8"]
TINY_STUDIES = ["reinit", "distance", "landscape"]  # 3 studies, 2 seeds: 4 trajectories (lottery shared by all)


# ---------------------------------------------------------------- study files

def test_every_packaged_study_loads_and_list_shows_each_with_its_figure():
    assert studies.names()[:7] == list(studies.PAPER_ORDER)
    for name in studies.names():
        study = studies.load(name)
        assert study.checks and all(c.criterion and c.statement for c in study.checks)
    result = CliRunner().invoke(cli.main, ["reproduce", "--list", "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert all(f"{name}," in result.output for name in studies.names())
    assert "noise-ratio figure" in result.output


STUDY = """figure: a figure
about: what it shows
curves:
  a: {noise.ratio: 0.2}
  b: {noise.ratio: 0.4}
checks:
  - statement: b dips
    check: double_descent
    params: {curves: [b], min_dip: 2}
    criterion: dip at least 2
"""


@pytest.mark.parametrize("old, new, message", [
    ("about:", "abuot:", "unknown key 'abuot'"),
    ("noise.ratio: 0.4", "noise.ratoi: 0.4", "curves.b.noise.ratoi: not a config key"),
    ("check: double_descent", "check: double_dip", "check 'double_dip': unknown"),
    ("min_dip: 2", "min_dipp: 2", "unknown key 'min_dipp'"),
    ("curves: [b]", "curves: [c]", "no curve 'c'"),
    ("min_dip: 2", "min_dip: lots", "expected a number"),
    ("criterion: dip at least 2", "", "criterion: expected a text"),
])
def test_a_bad_study_file_is_refused_naming_the_key(old, new, message):
    with pytest.raises(ConfigError, match=message):
        studies.parse("x", STUDY.replace(old, new), "x.yaml")


def test_a_bad_study_file_or_an_unknown_study_is_one_line_and_exit_2(project):
    (project / "bad.yaml").write_text(STUDY.replace("about:", "abuot:"))
    for args, message in ((["bad.yaml"], "bad.yaml: unknown key 'abuot'"),
                          (["nosuch"], "study 'nosuch': no such study")):
        result = CliRunner().invoke(cli.main, ["reproduce", *args])
        assert result.exit_code == 2 and message in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (project / "mlflow.db").exists()


# ---------------------------------------------------------------- the checks on hand-made curves

def curve(test: list[float], train: list[float] | None = None, seed: int = 0, **metrics) -> Replicate:
    train = train or [100.0] * len(test)
    rows = [{"round": i, "test_acc": t, "train_acc_noisy": n, "sparsity": 1 - 0.8 ** i, "remaining": 0.8 ** i,
             **{k: v[i] for k, v in metrics.items()}} for i, (t, n) in enumerate(zip(test, train))]
    return Replicate(seed, rows, analysis.phases(rows))


DD = [80, 76, 74, 82, 85, 70]     # dip 6, rise 11
NOISY = [100, 100, 100, 90, 80, 60]


def test_double_descent_holds_fails_or_cannot_tell():
    assert studies.double_descent({"a": [curve(DD, NOISY)]}).verdict == HOLDS
    flat = studies.double_descent({"a": [curve([80, 79, 79, 80, 81, 70], NOISY)]})
    assert flat.verdict == FAILS and "dip 1.0" in flat.numbers
    never = studies.double_descent({"a": [curve(DD, [90] * 6)]})
    assert never.verdict == UNCLEAR and "no minimum in seed 0" in never.numbers
    # judged on the mean over seeds: dips of 6 and 0 average 3
    two = studies.double_descent({"a": [curve(DD, NOISY), curve([80, 80, 80, 84, 85, 70], NOISY, seed=1)]})
    assert two.verdict == HOLDS and "dip 3.0 ± 4.2" in two.numbers


def test_earlier_and_later_compare_mean_rounds_of_a_landmark():
    early = [curve(DD, [100, 100, 90, 80, 70, 60])]   # interpolation threshold at round 2
    late = [curve(DD, NOISY)]                        # at round 3
    assert studies.earlier_than({"e": early, "l": late}, ["e", "l"], ["interpolation_threshold"]).verdict == HOLDS
    assert studies.earlier_than({"e": early, "l": late}, ["l", "e"], ["interpolation_threshold"]).verdict == FAILS
    assert studies.later_than({"e": early, "l": late}, ["l", "e"], ["interpolation_threshold"]).verdict == HOLDS
    dense_only = [curve(DD, [90] * 6)]  # never fits the noisy labels: no point where it starts to fail them
    assert studies.earlier_than({"e": dense_only, "l": late}, ["e", "l"],
                                ["interpolation_threshold"]).verdict == UNCLEAR


def test_trend_and_peak_near_read_a_metric_between_landmarks():
    rising = curve(DD, NOISY, learning_distance=[1, 2, 3, 2.5, 2, 1.5])  # highest at the minimum (round 2)
    data = {"a": [rising]}
    assert studies.trend(data, "a", "learning_distance", "dense", "minimum", "rise").verdict == HOLDS
    assert studies.trend(data, "a", "learning_distance", "minimum", "peak", "fall").verdict == HOLDS
    assert studies.trend(data, "a", "learning_distance", "minimum", "peak", "rise").verdict == FAILS
    assert studies.peak_near(data, "a", "learning_distance", "minimum", 0).verdict == HOLDS
    assert studies.trend(data, "a", "sharpness", "dense", "last").verdict == UNCLEAR  # not measured


def test_small_dip_holds_for_a_flat_curve_or_a_descent_that_never_recovers():
    assert studies.small_dip({"c": [curve([80, 80, 79, 81, 80, 60], NOISY)]}).verdict == HOLDS
    assert studies.small_dip({"c": [curve([80, 75, 70, 65, 60, 55], NOISY)]}).verdict == HOLDS
    assert studies.small_dip({"c": [curve(DD, NOISY)]}).verdict == FAILS


# ---------------------------------------------------------------- the plan

def test_a_trajectory_two_studies_share_is_one_cell():
    base = load_config()
    chosen = [studies.load(n) for n in ("noise", "criteria", "reinit", "distance")]
    plan = reproduce.plan(base, chosen, [0, 1])
    # noise 3 levels + gradient + random + reinit, per seed: ε=0.2 lottery = magnitude = the reinit's lottery
    assert len(plan.cells) == 12
    shared = plan.members["noise"]["ε=0.2"]
    assert shared == plan.members["criteria"]["magnitude"] == plan.members["reinit"]["lottery"] == \
        plan.members["distance"]["lottery"]
    (reinit,) = [c for c in plan.cells if c.cfg.retrain.mode == "reinit" and c.cfg.seed == 0]
    assert reinit.needs == shared[0]
    everything = reproduce.plan(base, [studies.load(n) for n in studies.names()], [0, 1, 2])
    assert len(everything.cells) == 30  # the quick preset's full reproduction: 10 trajectories a seed


# ---------------------------------------------------------------- end to end

def sddkit(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "DVC_NO_ANALYTICS": "1", "SDDKIT_NO_DOWNLOAD": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "sddkit.cli", *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=900)


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce") / "project"
    root.mkdir()
    (root / ".git").mkdir()
    args = ["reproduce", *TINY_STUDIES, *TINY, "--seeds", "0", "1", "--jobs", "2", "--output", "out"]
    first = sddkit(root, *args)
    return root, args, first


def stored(root: Path) -> tuple[Tracker, dict]:
    """The store's trajectories as {(mode, seed): (run, rows, phases)}."""
    tracker = Tracker(f"sqlite:///{root}/mlflow.db", root)
    out = {}
    for run in tracker.trajectories("sddkit"):
        rows = [round_row(r) for r in tracker.round_runs(run.info.run_id)]
        out[(run.data.params["retrain.mode"], int(run.data.params["seed"]))] = (run, rows, analysis.phases(rows))
    return tracker, out


def mean(values):
    return sum(values) / len(values)


def test_a_tiny_reproduction_writes_its_report_and_verdicts_agree_with_the_stored_landmarks(reproduced):
    root, _, first = reproduced
    assert first.returncode == 0, first.stderr[-3000:]
    out = root / "out"
    verdicts = json.loads((out / "verdicts.json").read_text())
    by_statement = {s["statement"]: s for s in verdicts["statements"]}
    assert [s["study"] for s in verdicts["statements"]] == ["reinit"] + ["distance"] * 3 + ["landscape"] * 2
    assert all(s["verdict"] in (HOLDS, FAILS, UNCLEAR) and s["numbers"] for s in verdicts["statements"])
    tracker, runs = stored(root)
    assert sorted(runs) == [("lottery", 0), ("lottery", 1), ("reinit", 0), ("reinit", 1)]  # shared: 4, not 6

    # reinit: shifted to lower sparsity = minimum and peak no later (½ round of slack), one a round earlier
    reinit = by_statement["The random-reinit curve is shifted to lower sparsity than the lottery curve."]
    if any(runs[(m, s)][2].minimum is None or runs[(m, s)][2].peak is None for m in ("lottery", "reinit")
           for s in (0, 1)):
        assert reinit["verdict"] == UNCLEAR
    else:
        gaps = {k: mean([getattr(runs[("lottery", s)][2], k) for s in (0, 1)])
                - mean([getattr(runs[("reinit", s)][2], k) for s in (0, 1)]) for k in ("minimum", "peak")}
        expected = HOLDS if min(gaps.values()) >= -0.5 and max(gaps.values()) >= 1 else FAILS
        assert reinit["verdict"] == expected, (gaps, reinit)
        assert reinit["values"]["peak"]["lottery"]["round"] == mean([runs[("lottery", s)][2].peak for s in (0, 1)])

    # distance peaks near the minimum: the mean over seeds of |argmax distance − minimum| ≤ 2 rounds
    near = by_statement["The learning distance peaks near the test-accuracy minimum."]
    lottery = [runs[("lottery", s)] for s in (0, 1)]
    if any(ph.minimum is None for _, _, ph in lottery):
        assert near["verdict"] == UNCLEAR
    else:
        gaps = [abs(max(range(len(rows)), key=lambda i: rows[i]["learning_distance"]) - ph.minimum)
                for _, rows, ph in lottery]
        assert near["values"]["gap"] == pytest.approx(mean(gaps))
        assert near["verdict"] == (HOLDS if mean(gaps) <= 2 else FAILS)

    # landscape: sharpness was measured on every round and stored on the round runs; the dense-to-last trend
    sharper = by_statement["The loss landscape gets sharper as sparsity grows."]
    sharp = [[r.data.metrics["sharpness"] for r in tracker.round_runs(run.info.run_id)] for run, _, _ in lottery]
    assert all(len(s) == 9 for s in sharp)
    change = mean([s[-1] - s[0] for s in sharp])
    share = mean([sum(b > a for a, b in zip(s, s[1:])) / 8 for s in sharp])
    assert sharper["values"]["change"] == pytest.approx(change)
    assert sharper["verdict"] == (HOLDS if share >= 0.6 and change > 0 else FAILS)


def test_the_report_is_self_contained_html_with_a_markdown_twin_also_in_the_reproduction_run(reproduced):
    root, _, first = reproduced
    assert first.returncode == 0, first.stderr[-3000:]
    out = root / "out"
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 5  # reinit; distance + its metric; landscape + its metric
    assert "http://" not in page and "https://" not in page and "src='figures" not in page
    for words in ("statements</h2>", "code fingerprint", "package versions", "torch=", "train.epochs"):
        assert words in page
    markdown = (out / "report.md").read_text()
    assert "![reinit" in markdown and (out / "figures" / "reinit.png").read_bytes()[:4] == b"\x89PNG"
    tracker = Tracker(f"sqlite:///{root}/mlflow.db", root)
    exp = tracker.experiment_id("sddkit")
    (run,) = tracker.client.search_runs([exp], "tags.`sddkit.kind` = 'reproduction'")
    assert run.info.status == "FINISHED"
    stored_files = {f.path for f in tracker.client.list_artifacts(run.info.run_id)}
    assert {"report.html", "report.md", "verdicts.json", "figures"} <= stored_files
    summary = json.loads((out / "summary.json").read_text())
    assert summary["statements"] == 6 and sum(summary[k] for k in ("holds", "does_not_hold", "cannot_tell")) == 6


def test_a_rerun_reuses_every_cell_and_gives_the_same_verdicts(reproduced):
    root, args, first = reproduced
    assert first.returncode == 0, first.stderr[-3000:]
    tracker, runs = stored(root)
    rounds_before = sum(len(tracker.round_runs(run.info.run_id, finished_only=False)) for run, _, _ in runs.values())
    before = json.loads((root / "out" / "verdicts.json").read_text())
    again = sddkit(root, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "4 cells (4 finished already)" in again.stderr.replace("\n", " ")
    tracker, runs_after = stored(root)
    assert sorted(runs_after) == sorted(runs)
    assert sum(len(tracker.round_runs(run.info.run_id, finished_only=False))
               for run, _, _ in runs_after.values()) == rounds_before
    after = json.loads((root / "out" / "verdicts.json").read_text())
    assert [(s["verdict"], s["numbers"]) for s in after["statements"]] == \
        [(s["verdict"], s["numbers"]) for s in before["statements"]]


def test_the_report_lists_the_presets_deviations_from_its_file(monkeypatch):
    from sddkit import config
    assert config.preset_deviations("quick") == []  # what build_report lists
    tree = config.preset_tree
    monkeypatch.setattr(config, "preset_tree",
                        lambda name: {**tree(name), "deviations": ["data order: seeded per round"]})
    assert config.preset_deviations("quick") == ["data order: seeded per round"]


def test_a_set_key_a_study_varies_keeps_the_studys_values_and_says_so():
    base = load_config(overrides={"noise.ratio": 0.4})
    plan = reproduce.plan(base, [studies.load("noise")], [0])
    assert sorted(c.cfg.noise.ratio for c in plan.cells) == [0.2, 0.4, 0.8]

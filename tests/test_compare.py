"""`sddkit compare` on real runs in a real sqlite store: seed averaging, selection, the unknown-name error."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sddkit import analysis, compare, config, readoffs, runner
from sddkit.cli import main
from sddkit.tracking import Tracker, TrackingError, read_mask

TINY = {"data.train_size": 500, "data.test_size": 200, "train.epochs": 1, "train.batch_size": 100,
        "prune.rounds": 2, "train.threads": 1}


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """lottery with seeds 0 and 1, a newer lottery with another noise ratio, then the reinit twin of the
    first (seed 0)."""
    root = tmp_path_factory.mktemp("compare")
    (root / ".git").mkdir()
    uri = f"sqlite:///{root}/mlflow.db"

    def trajectory(**overrides):
        cfg = config.load_config(overrides={**TINY, "tracking.uri": uri, **overrides})
        store, rows = runner.run_trajectory(cfg, root, quiet=True,
                                            results_dir=root / "results" / f"{cfg.name}-{cfg.seed}")
        return store.run_id, rows

    runs = {"lottery0": trajectory(seed=0), "lottery1": trajectory(seed=1)}
    runs["lottery0-noisier"] = trajectory(seed=0, **{"noise.ratio": 0.4})
    runs["reinit0"] = trajectory(seed=0, **{"retrain.mode": "reinit", "retrain.masks_from": "lottery"})
    return root, Tracker(uri, root), runs


def test_replicates_are_averaged_mean_and_sample_std(stored):
    root, tracker, runs = stored
    lottery, reinit = compare.compare(tracker, ["lottery", "reinit"], "sddkit", where=["noise.ratio=0.2"])
    assert sorted(r.info.run_id for r in lottery.runs) == sorted([runs["lottery0"][0], runs["lottery1"][0]])
    assert lottery.seeds == "0 1" and [r.info.run_id for r in reinit.runs] == [runs["reinit0"][0]]
    per_seed = np.array([[row["test_acc"] for row in runs[k][1]] for k in ("lottery0", "lottery1")])
    assert np.allclose([r["test_acc"] for r in lottery.rows], per_seed.mean(axis=0), atol=1e-4)
    assert np.allclose([r["test_acc_std"] for r in lottery.rows], per_seed.std(axis=0, ddof=1), atol=1e-4)
    table = list(csv.DictReader(io.StringIO(compare.csv_text([lottery, reinit]))))
    assert [int(r["round"]) for r in table] == [0, 1, 2]
    for i, row in enumerate(table):
        expected = runs["reinit0"][1][i]["test_acc"] - per_seed[:, i].mean()
        assert float(row["diff:test_acc"]) == pytest.approx(expected, abs=1e-3)
        assert row["lottery:n"] == "2" and row["lottery:phase"] == lottery.phases.label(i)


def test_reinit_takes_the_masks_of_its_own_configs_lottery_not_the_newest(stored):
    _, tracker, runs = stored
    rounds = {k: tracker.round_runs(runs[k][0]) for k in ("reinit0", "lottery0", "lottery0-noisier")}
    for r in (1, 2):
        ours, twin, newer = (read_mask(tracker, rounds[k][r].info.run_id) for k in rounds)
        assert all(torch.equal(ours[n], twin[n]) for n in ours)
        assert not all(torch.equal(ours[n], newer[n]) for n in ours)


def test_a_name_over_several_configs_compares_the_newest(stored):
    _, tracker, runs = stored
    (newest,) = compare.compare(tracker, ["lottery"], "sddkit")  # the noise.ratio=0.4 lottery came last
    assert [r.info.run_id for r in newest.runs] == [runs["lottery0-noisier"][0]]


def test_select_by_tag_run_id_and_results_folder(stored):
    root, tracker, runs = stored
    by_tag, by_id, by_folder = compare.compare(
        tracker, ["sddkit.seed=1", runs["reinit0"][0], str(root / "results" / "lottery-0")], "sddkit")
    assert [r.info.run_id for r in by_tag.runs] == [runs["lottery1"][0]]
    assert [r.info.run_id for r in by_id.runs] == [runs["reinit0"][0]]
    folder_run = json.loads((root / "results" / "lottery-0" / "run.json").read_text())["run_id"]
    assert [r.info.run_id for r in by_folder.runs] == [folder_run]  # the noisier lottery wrote the folder last
    # labelled by name and the param that differs between the three curves (the modes' own settings left out)
    assert [c.label for c in (by_tag, by_id, by_folder)] == [
        "lottery · noise.ratio=0.2", "reinit · noise.ratio=0.2", "lottery · noise.ratio=0.4"]


def test_cli_writes_table_csv_png_and_names_unknown_runs(stored, tmp_path, monkeypatch):
    root, _, _ = stored
    monkeypatch.chdir(root)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    (root / "params.yaml").write_text(f"tracking:\n  uri: sqlite:///{root}/mlflow.db\n"
                                      "sddkit_stages:\n  compare:\n    interpolation_threshold: 50\n")
    result = CliRunner().invoke(main, ["compare", "--runs", "lottery", "reinit", "--where", "noise.ratio=0.2",
                                       "--output", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "lottery (seeds 0 1) vs reinit (seeds 0)" in result.output
    assert (tmp_path / "out" / "compare.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "out" / "compare.csv").read_text().startswith("round,lottery:sparsity")

    result = CliRunner().invoke(main, ["compare", "--runs", "lottery", "lotery", "--output", str(tmp_path / "bad")])
    assert result.exit_code == 1
    assert "--runs lotery: no trajectory" in result.output and "names there: lottery, reinit" in result.output
    assert not (tmp_path / "bad").exists()


def test_unknown_experiment_and_unmatched_filter_are_clear(stored):
    _, tracker, _ = stored
    with pytest.raises(TrackingError, match="holds no trajectories yet"):
        compare.compare(tracker, ["lottery"], "no-such-experiment")
    with pytest.raises(TrackingError, match="none of them has noise.ratio=0.9"):
        compare.compare(tracker, ["lottery"], "sddkit", where=["noise.ratio=0.9"])


def test_the_threshold_setting_places_the_phases(stored):
    _, tracker, _ = stored
    (everything_fits,) = compare.compare(tracker, ["reinit"], "sddkit", threshold=1.0)
    (nothing_fits,) = compare.compare(tracker, ["reinit"], "sddkit", threshold=99.99)
    assert everything_fits.phases.minimum is not None and everything_fits.phases.interpolation_threshold is None
    assert nothing_fits.phases.minimum is None and nothing_fits.phases.interpolation_threshold == 0


@pytest.mark.parametrize("content", ["{not json", "{}", "[1, 2]"])
def test_a_damaged_run_json_in_a_results_folder_is_named(stored, tmp_path, content):
    _, tracker, _ = stored
    (tmp_path / "run.json").write_text(content)
    with pytest.raises(TrackingError, match=f"--runs {tmp_path}: {tmp_path / 'run.json'} is damaged .*dvc repro"):
        compare.compare(tracker, [str(tmp_path)], "sddkit")


@pytest.mark.parametrize("where", ["noise.ratio", "=0.2", " =0.2"])
def test_a_where_without_key_and_value_is_refused(stored, where):
    root, tracker, _ = stored
    with pytest.raises(TrackingError, match="give KEY=VALUE"):
        compare.compare(tracker, ["lottery"], "sddkit", where=[where])


def test_cli_refuses_a_where_without_equals_in_one_line(stored, monkeypatch):
    root, _, _ = stored
    monkeypatch.chdir(root)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    (root / "params.yaml").write_text(f"tracking:\n  uri: sqlite:///{root}/mlflow.db\n")
    result = CliRunner().invoke(main, ["compare", "--runs", "lottery", "--where", "noise.ratio"])
    assert result.exit_code == 1
    assert result.output.startswith("error: --where noise.ratio: give KEY=VALUE") and "Traceback" not in result.output


def test_compare_does_not_import_the_run_cli_module():
    code = "import sys, sddkit.compare; print('sddkit.runner' in sys.modules, 'rich.progress' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.split() == ["False", "False"]


# ---------------------------------------------------------------- labels, title, formats, the paper

def test_labels_name_the_param_that_differs_or_come_from_label(stored):
    _, tracker, runs = stored
    ids = [runs["lottery0"][0], runs["lottery0-noisier"][0]]
    assert [c.label for c in compare.compare(tracker, ids, "sddkit")] == [
        "lottery · noise.ratio=0.2", "lottery · noise.ratio=0.4"]
    assert [c.label for c in compare.compare(tracker, ids, "sddkit", labels=["clean-ish", "noisy"])] == [
        "clean-ish", "noisy"]
    with pytest.raises(TrackingError, match="--label: give one per --runs selector"):
        compare.compare(tracker, ids, "sddkit", labels=["only one"])


def test_two_selectors_of_one_config_are_told_apart_by_their_seeds(stored):
    _, tracker, runs = stored
    curves = compare.compare(tracker, [runs["lottery0"][0], runs["lottery1"][0]], "sddkit")
    assert [c.label for c in curves] == ["lottery · seeds 0", "lottery · seeds 1"]


def test_the_title_names_dataset_model_noise_and_seeds(stored):
    _, tracker, runs = stored
    lottery, noisier = compare.compare(tracker, [runs["lottery1"][0], runs["lottery0-noisier"][0]], "sddkit")
    assert compare.figure_title([lottery]) == "mnist5k · lenet300_100 · noise symmetric ε=0.2 · seeds 1"
    assert compare.figure_title([lottery, noisier]) == \
        "mnist5k · lenet300_100 · noise symmetric ε=0.2 / 0.4 · seeds 1 / 0"


def test_a_single_run_has_a_blank_std_and_no_band(stored):
    _, tracker, _ = stored
    lottery, reinit = compare.compare(tracker, ["lottery", "reinit"], "sddkit", where=["noise.ratio=0.2"])
    assert "test_acc_std" in lottery.rows[0] and "test_acc_std" not in reinit.rows[0]
    row = next(csv.DictReader(io.StringIO(compare.csv_text([lottery, reinit]))))
    assert row["reinit:test_acc_std"] == "" and row["lottery:test_acc_std"] != ""
    assert compare.plot_series("r", reinit.rows, reinit.phases, None).test_acc_std is None
    body = [line for line in compare.table_text([reinit], "md").splitlines() if line.startswith("| 0 ")]
    assert body and "±" not in body[0] and "±" in compare.table_text([lottery], "md")


@pytest.fixture
def in_project(stored, monkeypatch):
    root, _, _ = stored
    monkeypatch.chdir(root)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    (root / "params.yaml").write_text(f"tracking:\n  uri: sqlite:///{root}/mlflow.db\n")
    return root


def invoke(*args):
    return CliRunner().invoke(main, ["compare", "--runs", "lottery", "reinit", "--where", "noise.ratio=0.2", *args])


def test_cli_format_csv_and_json_print_one_document_on_stdout(in_project):
    as_csv, as_json = invoke("--format", "csv"), invoke("--format", "json")
    assert as_csv.exit_code == 0 and as_json.exit_code == 0, as_csv.output + as_json.output
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [r["round"] for r in rows] == ["0", "1", "2"] and rows[0]["reinit:test_acc_std"] == ""
    assert "lottery: dense=" in as_csv.stderr  # the landmarks go beside, not into, the document
    records = json.loads(as_json.stdout)
    assert len(records) == 3 and records[0]["reinit:test_acc_std"] is None and records[0]["lottery:n"] == 2


def test_cli_format_md_and_a_wide_table_is_never_cut(in_project):
    md, table = invoke("--format", "md"), invoke()
    assert md.stdout.startswith("**lottery (seeds 0 1) vs reinit (seeds 0)**")
    assert "| round |" in md.stdout and "| --- |" in md.stdout
    assert "…" not in table.stdout and "lottery" in table.stdout and "phase" in table.stdout
    assert max(len(line) for line in table.stdout.splitlines()) > 80  # wider than a pipe's default console


def test_cli_figure_formats_and_paper_without_a_read_off(in_project, tmp_path):
    result = invoke("--format", "pdf", "svg", "--output", str(tmp_path), "--paper", "--label", "L", "R")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "compare.pdf").read_bytes().startswith(b"%PDF")
    assert b"<svg" in (tmp_path / "compare.svg").read_bytes()[:1000] and not (tmp_path / "compare.png").exists()
    assert "no read-off of the paper for L (preset quick" in result.stderr  # a note, and the compare goes on
    assert "L (seeds 0 1) vs R (seeds 0)" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--format", "csv", "md"], "--format: one table format at a time"),
    (["--format", "pdf"], "the figure is a file in --output DIR"),
    (["--label", "one"], "--label: give one per --runs selector (2 selectors, 1 labels)"),
    (["--by", "noise.ratio", "--paper"], "--paper with --by"),
])
def test_cli_refuses_bad_format_and_label_in_one_line(in_project, args, message):
    result = invoke(*args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_deviation_from_the_paper_at_the_landmarks():
    rows = [{"sparsity": s, "test_acc": a, "train_acc_noisy": t} for s, a, t in
            [(0.0, 82.4, 100.0), (0.893, 75.0, 100.0), (0.988, 96.0, 70.0), (0.996, 60.0, 40.0)]]
    ph = analysis.phases(rows)
    paper = readoffs.matching({"preset": "mnist-lenet", "data.name": "mnist", "model.arch": "lenet300_100",
                               "noise.kind": "random", "noise.ratio": "0.2", "retrain.mode": "lottery"})
    table = {r["landmark"]: r for r in compare.deviations("ours", rows, ph, paper)}
    assert table["dense"]["Δ test"] == "-1.0" and table["minimum"]["Δ test"] == "-1.5"
    assert table["peak"]["Δ test"] == "+0.5" and table["peak"]["Δ sparsity"] == "+0.00"


# ---------------------------------------------------------------- --by: one panel per value of a param

def stored_test_acc(rows: list[dict]) -> list[float]:
    return [r["test_acc"] for r in rows]


def test_by_gives_one_panel_per_value_each_curve_the_mean_of_its_runs(stored):
    _, tracker, runs = stored
    low, high = compare.compare_by(tracker, ["lottery", "reinit"], "sddkit", "noise.ratio")
    assert [low.title, high.title] == ["noise.ratio = 0.2", "noise.ratio = 0.4"]
    lottery, reinit = low.curves
    assert sorted(r.info.run_id for r in lottery.runs) == sorted([runs["lottery0"][0], runs["lottery1"][0]])
    per_seed = np.array([stored_test_acc(runs[k][1]) for k in ("lottery0", "lottery1")])
    assert np.allclose(stored_test_acc(lottery.rows), per_seed.mean(axis=0), atol=1e-4)
    assert np.allclose([r["test_acc_std"] for r in lottery.rows], per_seed.std(axis=0, ddof=1), atol=1e-4)
    assert np.allclose(stored_test_acc(reinit.rows), stored_test_acc(runs["reinit0"][1]), atol=1e-4)
    assert "test_acc_std" not in reinit.rows[0]  # one run: no band
    noisier, no_reinit = high.curves  # no reinit ran at 0.4: the panel shows the lottery and names the gap
    assert [r.info.run_id for r in noisier.runs] == [runs["lottery0-noisier"][0]] and no_reinit is None
    assert np.allclose(stored_test_acc(noisier.rows), stored_test_acc(runs["lottery0-noisier"][1]), atol=1e-4)
    assert high.missing == ["reinit"]
    assert [c.label for c in (lottery, reinit, noisier)] == ["lottery", "reinit", "lottery"]  # the same in each panel


def test_by_csv_has_the_key_column_and_blanks_for_a_missing_curve(stored):
    _, tracker, runs = stored
    panels = compare.compare_by(tracker, ["lottery", "reinit"], "sddkit", "noise.ratio")
    text = compare.panels_text(panels, "csv")
    assert text.startswith("noise.ratio,round,lottery:sparsity")
    table = list(csv.DictReader(io.StringIO(text)))
    assert [(r["noise.ratio"], r["round"]) for r in table] == [(v, str(i)) for v in ("0.2", "0.4") for i in range(3)]
    assert table[0]["lottery:n"] == "2" and table[0]["reinit:n"] == "1" and table[0]["diff:test_acc"] != ""
    assert all(r["reinit:test_acc"] == "" and r["diff:test_acc"] == "" for r in table[3:])
    assert float(table[4]["lottery:test_acc"]) == pytest.approx(runs["lottery0-noisier"][1][1]["test_acc"], abs=1e-3)
    assert json.loads(compare.panels_text(panels, "json"))[3]["noise.ratio"] == 0.4
    md = compare.panels_text(panels, "md")
    assert "**noise.ratio = 0.2: lottery (seeds 0 1) vs reinit (seeds 0)**" in md
    assert "**noise.ratio = 0.4: lottery (seeds 0); no reinit run**" in md


def test_by_within_one_sweep_keeps_only_its_tagged_cells(stored):
    _, tracker, runs = stored
    for name in ("lottery1", "reinit0"):  # as `sddkit sweep` tags its cells
        tracker.client.set_tag(runs[name][0], "sddkit.sweep", "sweep-by-test")
    (panel,) = compare.compare_by(tracker, ["lottery", "reinit"], "sddkit", "noise.ratio",
                                  where=["sddkit.sweep=sweep-by-test"])
    assert panel.value == "0.2" and [[r.info.run_id for r in c.runs] for c in panel.curves] == [
        [runs["lottery1"][0]], [runs["reinit0"][0]]]


def test_cli_by_writes_csv_and_figures_and_refuses_an_unknown_key(in_project, tmp_path):
    result = CliRunner().invoke(main, ["compare", "--runs", "lottery", "reinit", "--by", "noise.ratio",
                                       "--format", "png", "pdf", "--output", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "noise.ratio = 0.4: lottery (seeds 0); no reinit run" in result.stdout
    assert "noise.ratio = 0.2 · reinit: dense=" in result.stdout
    assert (tmp_path / "out" / "compare.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "out" / "compare.pdf").read_bytes().startswith(b"%PDF")
    assert (tmp_path / "out" / "compare.csv").read_text().startswith("noise.ratio,round,")

    result = CliRunner().invoke(main, ["compare", "--runs", "lottery", "reinit", "--by", "noise.ratoi",
                                       "--output", str(tmp_path / "bad")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.startswith("error: --by noise.ratoi: no trajectory of --runs lottery has that tag or param")
    assert result.output.rstrip().endswith("differ between the selected trajectories: noise.ratio, retrain.mode")
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()


def test_keys_that_do_not_change_results_are_not_listed_as_differences():
    """compare and ls listed tracking.uri and retrain.masks_from=None as differences between runs (issue 29)."""
    from types import SimpleNamespace
    from sddkit import api

    def run(**params):
        base = {"seed": "0", "noise.ratio": "0.2", "retrain.mode": "lottery", "retrain.masks_from": "None",
                "tracking.uri": "None", "train.threads": "1"}
        return SimpleNamespace(data=SimpleNamespace(params={**base, **params}), info=SimpleNamespace(run_id="r"))
    lottery = run()
    swept = run(**{"tracking.uri": "sqlite:////p/mlflow.db", "train.threads": "2", "seed": "1"})
    reinit = run(**{"retrain.mode": "reinit", "retrain.masks_from": "lottery"})
    assert api.differing_keys([lottery, swept]) == ["seed"]  # ls: where it was stored is no difference
    assert api.differing_keys([lottery, reinit]) == ["retrain.mode"]  # masks_from follows from the mode
    assert compare.differences(lottery, swept) == "run r"  # only the seed differs: nothing to name
    assert api.differing_keys([lottery, run(**{"retrain.masks_from": "x"})]) == []  # lottery never reads it
    assert api.differing_keys([reinit, run(**{"retrain.mode": "reinit"})]) == ["retrain.masks_from"]

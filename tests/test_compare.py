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

from sddkit import compare, config, runner
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
    assert by_id.label == "reinit" and [r.info.run_id for r in by_id.runs] == [runs["reinit0"][0]]
    folder_run = json.loads((root / "results" / "lottery-0" / "run.json").read_text())["run_id"]
    assert [r.info.run_id for r in by_folder.runs] == [folder_run] and by_folder.label == "lottery (2)"


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

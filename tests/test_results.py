"""results: the files a finished trajectory leaves, and the mean ± std of replicates."""
from __future__ import annotations

import json

import pytest

from sddkit import results


def test_write_folder_creates_the_folder_and_replaces_files(tmp_path):
    folder = tmp_path / "results" / "lottery"
    results.write_folder(folder, {"summary.json": b"1", "curve.png": b"png"})
    results.write_folder(folder, {"summary.json": b"2"})
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == {"summary.json": b"2", "curve.png": b"png"}


def test_mean_rows_known_answer():
    replicates = [[{"round": 0, "sparsity": 0.0, "remaining": 1.0, "test_acc": acc, "train_acc_noisy": 100.0}]
                  for acc in (70.0, 74.0, 78.0)]
    (row,) = results.mean_rows(replicates)
    assert row["test_acc"] == 74.0 and row["test_acc_std"] == pytest.approx(4.0)  # sample std (n − 1)
    assert row["train_acc_noisy_std"] == 0.0
    assert results.mean_rows(replicates[:1])[0]["test_acc_std"] == 0.0


def test_mean_rows_stop_at_the_shortest_replicate_and_keep_the_shared_keys():
    a = [{"round": 0, "test_acc": 80.0, "train_acc_noisy": 100.0, "extra": 1.0},
         {"round": 1, "test_acc": 70.0, "train_acc_noisy": 90.0}]
    b = [{"round": 0, "test_acc": 82.0, "train_acc_noisy": 100.0}]
    (row,) = results.mean_rows([a, b])
    assert row == {"round": 0.0, "test_acc": 81.0, "train_acc_noisy": 100.0, "test_acc_std": pytest.approx(2 ** 0.5),
                   "train_acc_noisy_std": 0.0}


def test_render_rows_in_every_format():
    rows = [{"name": "lottery · noise.ratio=0.4", "acc": 81.5, "std": None}, {"name": "a|b", "acc": float("nan")}]
    columns = ["name", "acc", "std"]
    assert results.render_rows(rows, columns, "csv") == "name,acc,std\nlottery · noise.ratio=0.4,81.5,\na|b,,\n"  # not finite: blank
    assert json.loads(results.render_rows(rows, columns, "json")) == [
        {"name": "lottery · noise.ratio=0.4", "acc": 81.5, "std": None}, {"name": "a|b", "acc": None, "std": None}]
    md = results.render_rows(rows, columns, "md", title="T").splitlines()
    assert md[:4] == ["**T**", "", "| name | acc | std |", "| --- | ---: | ---: |"] and md[5] == "| a\\|b | nan |  |"
    wide = [{"name": "x" * 150, "acc": 1.0}]
    table = results.render_rows(wide, columns, "table")
    assert "x" * 150 in table and "…" not in table  # full width, whatever the terminal


def test_render_rows_refuses_an_unknown_format():
    with pytest.raises(ValueError, match="use one of table, csv, json, md"):
        results.render_rows([], ["a"], "xlsx")

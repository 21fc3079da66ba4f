"""`sddkit run` as its users see it: piped into a file (timestamped lines, no bars) and its closing lines
(which run holds the results, how to browse and compare it)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from mlflow import MlflowClient

import sddkit
from sddkit import runner
from sddkit.config import load_config
from sddkit.tracking import Tracker
from test_resume import trajectories

# 12 epochs: a line after epoch 10 (runner.EPOCH_LINE_EVERY) and after the last; 100-image batches keep it quick.
PIPED = {"data.train_size": 300, "train.epochs": 12, "prune.rounds": 2, "train.batch_size": 100,
         "train.milestones": [], "train.threads": 1}
STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"


def run_piped(project: Path, log: Path, *extra: str) -> subprocess.CompletedProcess:
    sets = [arg for key, value in PIPED.items() for arg in ("--set", f"{key}={value}")]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["SDDKIT_NO_DOWNLOAD"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(Path(sddkit.__file__).resolve().parent.parent),
                                         *filter(None, [env.get("PYTHONPATH")])])
    with log.open("w") as out:  # stdout and stderr both into the file, as `sddkit run > log 2>&1` does
        return subprocess.run([sys.executable, "-m", "sddkit.cli", "run", *sets, *extra], cwd=project, env=env,
                              stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, timeout=600)


def test_sddkit_run_piped_into_a_file_logs_timestamped_lines_and_says_where_the_results_are(project, tmp_path):
    log = tmp_path / "run.log"
    done = run_piped(project, log)
    text = log.read_text()
    assert done.returncode == 0, text[-3000:]
    assert "\x1b[" not in text and not re.search(r"^(rounds?|epoch)\b", text, re.M)  # no bars, no terminal codes
    for k in range(3):
        assert re.search(rf"^{STAMP} lottery: round {k}/2  sparsity +[\d.]+%  test +[\d.]+%  train\(noisy\) "
                         rf"+[\d.]+%  +[\d.]+s$", text, re.M), f"no line for round {k}:\n{text}"
        for epoch in (10, 12):
            assert re.search(rf"^{STAMP} lottery: round {k}/2  epoch {epoch}/12  train +[\d.]+%  test +[\d.]+%",
                             text, re.M), f"no line for epoch {epoch} of round {k}:\n{text}"
    assert not re.search(r"epoch (?:[1-9]|11)/12", text)  # one line per 10 epochs (and the last), not each
    (parent,) = trajectories(MlflowClient(f"sqlite:///{project}/mlflow.db"), "sddkit")
    run_id, name = parent.info.run_id, parent.info.run_name
    assert name == "lottery·ε=0.2·s0"
    closing = text.strip().splitlines()[-3:]
    assert closing[0] == f"results: run {name} ({run_id}) in experiment 'sddkit' of sqlite:///{project}/mlflow.db"
    assert closing[1] == "  browse:  sddkit ui --open"
    assert closing[2] == f"  compare: sddkit compare --runs {run_id} OTHER"


def test_the_compare_command_names_another_trajectory_of_the_experiment(project, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"  # beside the project, not its default store
    small = {**PIPED, "train.epochs": 1, "prune.rounds": 1, "tracking.uri": uri, "tracking.experiment": "mine"}
    runner.run_trajectory(load_config(overrides={**small, "tracking.run_name": "baseline"}), project, quiet=True)
    cfg = load_config(overrides={**small, "retrain.mode": "finetune"})
    store, _ = runner.run_trajectory(cfg, project, quiet=True)
    lines = runner.where_lines(Tracker(uri, project), cfg, f"run {store.name} ({store.run_id})", store.run_id)
    # Another store and experiment than the project's defaults: both are spelled out.
    assert lines[1] == f"  browse:  MLFLOW_TRACKING_URI={uri} sddkit ui --open --experiment mine"
    assert lines[2] == (f"  compare: MLFLOW_TRACKING_URI={uri} sddkit compare --runs {store.run_id} baseline "
                        f"--experiment mine")

"""Reading the store costs what MLflow costs: `sddkit ls`, compare's table and ``sddkit.load_trajectory`` import
neither torch nor timm (nor matplotlib: the table never draws). Checked in a fresh interpreter, on a store made
through MLflow's own API (no training)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sddkit.config import load_config
from sddkit.tracking import Tracker
from tests import test_paging

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "timm", "torchvision", "matplotlib", "sklearn")
# Run in the project: the three reads one after the other, then which heavy modules they brought.
READS = f"""
import json, sys
from click.testing import CliRunner
from sddkit.cli import main
import sddkit
listed = CliRunner().invoke(main, ["ls", "--format", "json"])
compared = CliRunner().invoke(main, ["compare", "--runs", "lottery", "--where", "noise.ratio=0.2", "--format", "csv"])
frame = sddkit.load_trajectory("lottery", where={{"noise.ratio": 0.2}})
print(json.dumps({{"ls": [listed.exit_code, listed.stdout], "compare": [compared.exit_code, compared.stdout],
                  "frame": len(frame), "heavy": sorted(m for m in {HEAVY!r} if m in sys.modules)}}))
"""


def test_ls_compare_and_load_trajectory_import_neither_torch_nor_timm(project):
    tracker = Tracker(f"sqlite:///{project}/mlflow.db", project)
    exp = tracker.experiment_id("sddkit")
    # Two seeds at noise 0.2 (replicates, one curve in compare) and one at 0.3.
    for i, (seed, ratio) in enumerate(((0, 0.2), (1, 0.2), (0, 0.3))):
        cfg = load_config(overrides={"seed": seed, "noise.ratio": ratio})
        test_paging.make_trajectory(tracker.client, exp, cfg, project, 1_000_000 + 1000 * i)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run([sys.executable, "-c", READS], cwd=project, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["heavy"] == []
    ls_code, ls_out = got["ls"]
    assert ls_code == 0 and [(r["seed"], r["rounds_done"]) for r in json.loads(ls_out)] == [("0", 2), ("1", 2), ("0", 2)]
    compare_code, csv = got["compare"]
    assert compare_code == 0 and csv.splitlines()[0].startswith("round,") and len(csv.splitlines()) == 3  # rounds 0, 1
    assert got["frame"] == 2 * 2  # two trajectories at noise 0.2, two rounds each

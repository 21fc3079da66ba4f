"""A run's identity is its config and the code that ran: an edit of the code makes a new run, never a report
of numbers the old code made; an unfinished run of other code is never continued."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from mlflow import MlflowClient

from sddkit import fingerprint
from sddkit.cli import main
from sddkit.config import load_config
from sddkit.tracking import Tracker

MAIN = Path(__file__).resolve().parents[1]
TINY_SETS = ["data.train_size=300", "train.epochs=1", "prune.rounds=1", "train.batch_size=100"]


ENGINE_MODULES = {"trajectory.py", "prepare.py", "train.py", "pruning.py", "noise.py", "data.py", "models.py",
                  "retrain.py", "seeds.py", "analysis.py"}
VIEWS_AND_STORE = {"compare.py", "plots.py", "cli.py", "sweep.py", "tracking.py", "runner.py", "api.py",
                   "results.py", "__init__.py", "lease.py", "server.py"}


def package_copy(tmp_path) -> Path:
    copy = tmp_path / "sddkit"
    shutil.copytree(MAIN / "sddkit", copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new, 1))


def test_the_fingerprint_covers_the_engine_import_closure_and_nothing_of_the_views():
    files = set(fingerprint.engine_files())
    assert ENGINE_MODULES <= files and not files & VIEWS_AND_STORE
    assert fingerprint.code_hash() == fingerprint.source_hash(Path(fingerprint.__file__).parent)


def test_the_closure_is_computed_from_the_imports(tmp_path):
    copy = package_copy(tmp_path)
    assert "plots.py" not in fingerprint.engine_files(copy)
    edit(copy / "train.py", "def fit(", "def _uses_plots():\n    from sddkit import plots  # noqa\n\n\ndef fit(")
    assert "plots.py" in fingerprint.engine_files(copy)  # a lazy import inside a function counts too


def test_comments_docstrings_layout_and_the_views_keep_the_identity(tmp_path):
    copy = package_copy(tmp_path)
    original = fingerprint.source_hash(copy)
    (copy / "__pycache__").mkdir(exist_ok=True)
    (copy / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"compiled")
    os.utime(copy / "train.py", (0, 0))
    edit(copy / "train.py", "    history, step = [], start_step\n", "    # a comment\n    history, step = [],  start_step\n\n")
    edit(copy / "pruning.py", '"""', '"""A new first line of the docstring.\n', )
    train_text = (copy / "train.py").read_text()
    doc_start = train_text.index('    """Train on ``labels``')
    (copy / "train.py").write_text(train_text[:doc_start] + '    """Reworded."""\n' +
                                   train_text[train_text.index('"""', doc_start + 8) + 4:])
    for view in ("plots.py", "compare.py", "cli.py", "sweep.py", "tracking.py", "runner.py"):
        with (copy / view).open("a") as f:
            f.write("\n\ndef added_by_an_edit():\n    return 1\n")
    assert fingerprint.source_hash(copy) == original


@pytest.mark.parametrize("module, old, new", [
    ("train.py", "    history, step = [], start_step\n", "    step, history = start_step, []\n"),
    ("pruning.py", "return 1.0 - sum(", "return 1.0 - 1.0 * sum("),
    ("noise.py", None, "OFFSET = 0"),
    ("data.py", None, "MEAN_SHIFT = 0.0"),
    ("models.py", None, "WIDTH = 300"),
])
def test_a_logic_edit_of_the_engine_changes_the_identity(tmp_path, module, old, new):
    copy = package_copy(tmp_path)
    original = fingerprint.source_hash(copy)
    if old is None:  # a new statement at the end of the module
        (copy / module).write_text((copy / module).read_text() + f"\n{new}\n")
    else:
        edit(copy / module, old, new)
    assert fingerprint.source_hash(copy) != original


def test_dvc_trajectory_stages_depend_on_exactly_the_fingerprinted_modules():
    stages = yaml.safe_load((MAIN / "dvc.yaml").read_text())["stages"]
    engine = {f"sddkit/{name}" for name in fingerprint.engine_files()}
    for name in ("trajectories",):  # the lottery trajectory and its reinit twin, side by side
        code = {d for d in stages[name]["deps"] if d.startswith("sddkit/") and d.endswith(".py")}
        assert code == engine, f"dvc.yaml's {name} stage: deps differ from `sddkit fingerprint`"
        assert "sddkit" not in stages[name]["deps"]


def run_copy(project: Path, *extra: str) -> subprocess.CompletedProcess:
    """`sddkit run` importing the project copy's own sddkit (as an editable install of that copy would)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PYTHONPATH"] = str(project)
    sets = [a for s in TINY_SETS for a in ("--set", s)]
    cmd = [sys.executable, "-m", "sddkit.cli", "run", *sets, "--set", f"tracking.uri=sqlite:///{project}/mlflow.db",
           *extra]
    return subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=300)


def test_an_edit_of_a_training_module_makes_a_new_run_and_keeps_the_old_one(tmp_path):
    project = tmp_path / "project"
    shutil.copytree(MAIN / "sddkit", project / "sddkit", ignore=shutil.ignore_patterns("__pycache__"))
    (project / ".git").mkdir()
    first = run_copy(project)
    assert first.returncode == 0, first.stderr
    train_py = project / "sddkit" / "train.py"
    line = "    history, step = [], start_step\n"
    assert line in train_py.read_text()
    train_py.write_text(train_py.read_text().replace(line, "    step, history = start_step, []\n"))
    second = run_copy(project)
    assert second.returncode == 0, second.stderr
    assert "already finished" not in second.stderr

    runs = Tracker(f"sqlite:///{project}/mlflow.db", project).trajectories("sddkit")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    new, old = runs  # newest first
    assert new.data.tags["sddkit.config_hash"] == old.data.tags["sddkit.config_hash"]
    assert new.data.tags["sddkit.code_hash"] == fingerprint.source_hash(project / "sddkit")
    assert old.data.tags["sddkit.code_hash"] != new.data.tags["sddkit.code_hash"]
    assert f"code {new.data.tags['sddkit.code_hash']}" in second.stderr


def test_an_unfinished_run_of_other_code_is_never_continued(project):
    uri = f"sqlite:///{project}/mlflow.db"
    cfg = load_config(overrides=[*TINY_SETS, f"tracking.uri={uri}"])
    stale = Tracker(uri, project).open_trajectory(cfg, code="0123456789abcdef")  # left RUNNING by older code
    sets = [a for s in [*TINY_SETS, f"tracking.uri={uri}"] for a in ("--set", s)]
    refused = CliRunner().invoke(main, ["run", *sets])
    assert refused.exit_code == 1
    message = " ".join(refused.output.split())
    assert f"run {stale.run_id} of this config" in message and "is unfinished" in message
    assert "code 0123456789abcdef" in message and f"this code is {fingerprint.code_hash()}" in message
    assert "--force" in message
    client = MlflowClient(uri)
    assert len(client.search_runs([stale.experiment_id], "tags.`sddkit.kind` = 'round'")) == 0  # nothing trained

    forced = CliRunner().invoke(main, ["run", *sets, "--force"])
    assert forced.exit_code == 0, forced.output
    runs = Tracker(uri, project).trajectories("sddkit")
    assert {r.info.run_id: r.info.status for r in runs} == {runs[0].info.run_id: "FINISHED", stale.run_id: "RUNNING"}
    assert runs[0].data.tags["sddkit.code_hash"] == fingerprint.code_hash()

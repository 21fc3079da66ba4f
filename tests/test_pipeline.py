"""The DVC pipeline for real: the project's own dvc.yaml and params.yaml in a temp git repo, on a tiny
config, driven by the real `dvc` command; every run must land in the repo's one MLflow store."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from sddkit import command_settings, config, prepare
from sddkit.tracking import Tracker

MAIN = Path(__file__).resolve().parents[1]
TINY_PARAMS = {"data": {"train_size": 500, "test_size": 200}, "train": {"epochs": 1, "batch_size": 100},
               "prune": {"rounds": 2}}
STAGES = ("trajectories", "compare")


def test_params_yaml_overrides_nothing_of_its_preset():
    params = config.read_params_file(MAIN / "params.yaml")
    assert config.load_config(params).flat() == config.load_config(preset=params["preset"]).flat()
    assert command_settings.read_compare_settings(MAIN / "params.yaml") == config.CompareConfig()


def test_prepare_is_deterministic_and_pinned_files_check_the_config(tmp_path):
    cfg = config.load_config(overrides={"data.train_size": 500, "noise.ratio": 0.3})
    first = prepare.prepare(cfg, tmp_path, tmp_path / "a")
    again = prepare.prepare(cfg, tmp_path, tmp_path / "b")
    assert [f.md5 for f in first] == [f.md5 for f in again]  # same settings, same bytes
    arrays, noisy = prepare.load(tmp_path / "a")
    assert arrays["x_train"].shape[0] == len(noisy) == 500
    assert 0.25 < float(np.mean(noisy != arrays["y_train"])) < 0.35
    assert prepare.pinned(tmp_path / "a", cfg) == first
    other = config.load_config(overrides={"data.train_size": 500, "noise.ratio": 0.3, "seed": 1})
    with pytest.raises(prepare.DatasetError, match="noise.seed = 0 but this run has noise.seed = 1"):
        prepare.pinned(tmp_path / "a", other)  # noise.seed null follows seed: other noise, other data
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["noisy_labels.npy", "prepared.json", "splits.npz"]


def test_a_folder_prepared_before_a_data_key_existed_still_matches_its_neutral_default(tmp_path):
    cfg = config.load_config(overrides={"data.train_size": 500})
    files = prepare.prepare(cfg, tmp_path, tmp_path / "a")
    manifest = json.loads((tmp_path / "a" / "prepared.json").read_text())
    del manifest["settings"]["data.norm_stats"]  # as written by an sddkit without that key
    (tmp_path / "a" / "prepared.json").write_text(json.dumps(manifest))
    assert prepare.pinned(tmp_path / "a", cfg) == files
    fixed = config.load_config(overrides={"data.train_size": 500, "data.norm_stats": "mnist"})
    with pytest.raises(prepare.DatasetError, match="made with data.norm_stats = 'train' but this run has "
                                                    "data.norm_stats = 'mnist'"):
        prepare.pinned(tmp_path / "a", fixed)


@pytest.mark.parametrize("content", ['{"settings": {"data.name": "mni', '{"made": 1}', '{"settings": [1]}', "[]"])
def test_a_damaged_prepared_json_is_named_with_the_fix(tmp_path, content):
    (tmp_path / "prepared.json").write_text(content)
    with pytest.raises(prepare.DatasetError, match=f"{tmp_path / 'prepared.json'} is damaged .*sddkit prepare"):
        prepare.pinned(tmp_path, config.load_config())


def test_a_run_trains_on_exactly_the_pinned_files(project, tmp_path):
    """The md5 recorded as the run's dataset input is that of the bytes the net trained on: labels changed in
    the pinned file (behind its manifest's back) are the labels the run uses, not ones rebuilt from sources."""
    from sddkit import runner

    cfg = config.load_config(overrides={"data.train_size": 300, "train.epochs": 1, "prune.rounds": 1,
                                        "train.batch_size": 100, "tracking.uri": f"sqlite:///{tmp_path}/mlflow.db"})
    folder = tmp_path / "prepared"
    prepare.prepare(cfg, project, folder)
    arrays, noisy = prepare.load(folder)
    shifted = (arrays["y_train"] + 1) % 10  # every label wrong: a realised noise rate of exactly 1
    np.save(folder / "noisy_labels.npy", shifted)
    store, _ = runner.run_trajectory(cfg, project, quiet=True, prepared=folder)
    run = MlflowClient(cfg.tracking.uri).get_run(store.run_id)
    assert run.data.metrics["noise_realised_rate"] == 1.0
    trained_on = np.load(store.tracker.download(store.run_id, "noisy_labels.npy", str(tmp_path / "dl")))
    assert np.array_equal(trained_on, shifted)
    digests = {d.dataset.name: d.dataset.digest for d in run.inputs.dataset_inputs}
    assert digests == {str(folder / n): prepare.md5(folder / n) for n in ("splits.npz", "noisy_labels.npy")}


def test_a_damaged_pinned_file_is_named_with_the_fix(tmp_path):
    cfg = config.load_config(overrides={"data.train_size": 100})
    prepare.prepare(cfg, tmp_path, tmp_path / "p")
    content = (tmp_path / "p" / "splits.npz").read_bytes()
    (tmp_path / "p" / "splits.npz").write_bytes(content[: len(content) // 2])
    with pytest.raises(prepare.DatasetError, match="its files are damaged .* rerun `sddkit prepare --out"):
        prepare.load_pinned(tmp_path / "p", cfg)


def run(cmd: list[str], repo: Path, env: dict) -> str:
    done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([\w-]+)'", output)


def make_repo(folder: Path) -> tuple[Path, dict]:
    """A fresh git + DVC repo in ``folder`` holding the project's pipeline files, on a tiny config."""
    repo = folder / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(MAIN / name, repo / name)
    shutil.copytree(MAIN / ".dvc", repo / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache", "config.local"))
    # The stages' code dep: DVC hashes this folder, and the commands import it (PYTHONPATH below), so an edit
    # there is an edit of the code that runs, as in an editable install.
    shutil.copytree(MAIN / "sddkit", repo / "sddkit", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((MAIN / "params.yaml").read_text())
    params.update(TINY_PARAMS)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(DVC_NO_ANALYTICS="1", DVC_SITE_CACHE_DIR=str(folder / "dvc-site"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", PYTHONPATH=str(repo),
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-qm", "pipeline"]):
        run(cmd, repo, env)
    return repo, env


@pytest.fixture
def repo(tmp_path):
    return make_repo(tmp_path)


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    """A repo after its first `dvc repro`, the results committed (the output of that repro too). Its git history
    stays as it is: the tests that share it may change its workspace, never commit, so each sees that commit."""
    repo, env = make_repo(tmp_path_factory.mktemp("reproduced"))
    out = run(["dvc", "repro"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "results"], repo, env)
    return repo, env, out


def store(repo: Path) -> Tracker:
    return Tracker(f"sqlite:///{repo}/mlflow.db", repo)


def lock_md5(lock: dict, stage: str, path: str) -> str:
    return next(o["md5"] for o in lock["stages"][stage]["outs"] if o["path"] == path)


def trajectory_run(repo: Path, name: str):
    return MlflowClient(f"sqlite:///{repo}/mlflow.db").get_run(
        json.loads((repo / "results" / name / "run.json").read_text())["run_id"])


def test_dvc_pipeline(reproduced):
    repo, env, out = reproduced  # a first `dvc repro`, its results committed
    assert ran(out) == list(STAGES)
    assert (repo / "mlflow.db").is_file() and (repo / "mlruns").is_dir()  # the store at the repo root
    check_results_and_pins(repo)

    assert ran(run(["dvc", "repro"], repo, env)) == []  # nothing changed, nothing runs

    set_param(repo, ["sddkit_stages", "compare", "interpolation_threshold"], 50.0)
    diff = json.loads(run(["dvc", "params", "diff", "--json"], repo, env))
    assert diff["params.yaml"]["sddkit_stages.compare.interpolation_threshold"] == {"old": None, "new": 50.0}
    assert ran(run(["dvc", "repro"], repo, env)) == ["compare"]

    check_plot_edit_reruns_compare_alone(repo, env)
    check_code_edit_makes_new_runs(repo, env)

    metrics = json.loads(run(["dvc", "metrics", "show", "--json"], repo, env))
    shown = json.dumps(metrics)
    assert "results/lottery/summary.json" in shown and "dense_test_acc" in shown
    run(["dvc", "plots", "show", "-o", "plots"], repo, env)
    page = (repo / "plots" / "index.html").read_text()
    assert "lottery/trajectory.csv::test_acc" in page and "reinit/trajectory.csv::train_acc_noisy" in page

    first_noise = lock_md5(lock(repo), "trajectories", "data/prepared/noisy_labels.npy")
    set_param(repo, ["noise", "seed"], 1)
    assert ran(run(["dvc", "repro"], repo, env)) == list(STAGES)
    assert lock_md5(lock(repo), "trajectories", "data/prepared/noisy_labels.npy") != first_noise
    assert trajectory_run(repo, "lottery").data.params["noise.seed"] == "1"


def test_dvc_exp_run_in_a_temp_copy_logs_into_the_one_store(repo):
    repo, env = repo
    out = run(["dvc", "exp", "run", "--temp", "-S", "noise.ratio=0.1"], repo, env)
    assert ran(out) == list(STAGES)
    exp = re.search(r"Ran experiment\(s\): ([\w-]+)", out).group(1)
    runs = store(repo).trajectories("sddkit")
    assert sorted(r.data.tags["sddkit.name"] for r in runs) == ["lottery", "reinit"]  # the repo's store, not the copy's
    assert sorted(r.info.run_name for r in runs) == [f"lottery·{exp}", f"reinit·{exp}"]  # named after the DVC exp
    assert all(r.data.params["noise.ratio"] == "0.1" and r.data.tags["sddkit.dvc_exp_name"] == exp for r in runs)
    ref = run(["git", "for-each-ref", "--format=%(refname)", f"refs/exps/**/{exp}"], repo, env).strip()
    exp_lock = yaml.safe_load(run(["git", "show", f"{ref}:dvc.lock"], repo, env))
    client = MlflowClient(f"sqlite:///{repo}/mlflow.db")
    for r in runs:
        digests = {d.dataset.name: d.dataset.digest for d in client.get_run(r.info.run_id).inputs.dataset_inputs}
        assert digests == {p: lock_md5(exp_lock, "trajectories", p)
                           for p in ("data/prepared/splits.npz", "data/prepared/noisy_labels.npy")}
    assert not (repo / "results").exists()  # the workspace is untouched by a --temp experiment


RESULT_FILES = {f"results/{name}/{file}" for name in ("lottery", "reinit")
                for file in ("summary.json", "trajectory.csv", "curve.png", ".gitignore")} | \
               {"results/compare/compare.csv", "results/compare/compare.png"}


def test_metrics_and_plots_diff_against_main_in_a_fresh_clone(reproduced, tmp_path):
    """The metric and plot files are committed (cache: false): a fresh clone, without the DVC cache or the
    MLflow store, diffs its workspace against main, where both sides are read from git."""
    repo, env, _ = reproduced  # `dvc repro`, then `git add -A` and commit
    committed = set(run(["git", "ls-files", "results"], repo, env).split())
    assert committed == RESULT_FILES  # run.json names a run in this machine's store: DVC-cached, not committed
    assert run(["git", "ls-files", "mlflow.db", "mlruns", "data"], repo, env).strip() == ""

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
    env = {**env, "PYTHONPATH": str(clone)}
    # Nothing changed, nothing differs: a margin that does not exist on 2 rounds is null, not nan != nan.
    assert json.loads(run(["dvc", "metrics", "diff", "main", "--json"], clone, env)) == {}
    summary_file, csv_file = clone / "results/lottery/summary.json", clone / "results/lottery/trajectory.csv"
    summary = json.loads(summary_file.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    summary["dense_test_acc"] += 1.0  # what a rerun with other settings writes
    summary_file.write_text(json.dumps(summary))
    lines = csv_file.read_text().splitlines()
    csv_file.write_text("\n".join(lines[:-1]) + "\n")  # one round fewer
    diff = json.loads(run(["dvc", "metrics", "diff", "main", "--json"], clone, env))
    assert diff == {"results/lottery/summary.json": {"dense_test_acc": {
        "old": summary["dense_test_acc"] - 1.0, "new": summary["dense_test_acc"], "diff": pytest.approx(1.0)}}}

    plots = json.loads(run(["dvc", "plots", "diff", "main", "--json"], clone, env))
    assert "errors" not in plots
    curve = plots["data"]["accuracy against remaining weights"][0]["content"]
    assert curve["encoding"]["x"]["scale"]["type"] == "log"  # the template in .dvc/plots
    drawn = [(d["rev"], d["filename::field"]) for d in curve["data"]["values"]]
    rounds = len(lines) - 1
    assert {key: drawn.count(key) for key in set(drawn)} == {
        (rev, f"{name}/trajectory.csv::{field}"): rounds - (rev == "workspace" and name == "lottery")
        for rev in ("main", "workspace") for name in ("lottery", "reinit") for field in ("test_acc", "train_acc_noisy")}
    assert {p["revisions"][0] for p in plots["data"]["results/compare/compare.png"]} == {"main", "workspace"}


def check_results_and_pins(repo: Path) -> None:
    for name in ("lottery", "reinit"):
        summary = json.loads((repo / "results" / name / "summary.json").read_text())
        assert summary["rounds"] == 2
        assert (repo / "results" / name / "trajectory.csv").read_text().startswith("round,sparsity,")
    assert (repo / "results" / "compare" / "compare.csv").read_text().startswith("round,lottery:sparsity")
    lottery = trajectory_run(repo, "lottery")
    assert lottery.data.tags["sddkit.dvc_stage"] == "trajectories"
    digests = {d.dataset.name: d.dataset.digest for d in lottery.inputs.dataset_inputs}
    current = lock(repo)
    assert digests == {p: lock_md5(current, "trajectories", p)
                       for p in ("data/prepared/splits.npz", "data/prepared/noisy_labels.npy")}
    # The pinned labels are the labels the trajectory trained on.
    _, pinned_labels = prepare.load(repo / "data" / "prepared")
    trained_on = np.load(store(repo).download(lottery.info.run_id, "noisy_labels.npy", str(repo.parent / "dl")))
    assert np.array_equal(pinned_labels, trained_on)


def lock(repo: Path) -> dict:
    return yaml.safe_load((repo / "dvc.lock").read_text())


def set_param(repo: Path, keys: list[str], value) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    node = params
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def check_plot_edit_reruns_compare_alone(repo: Path, env: dict) -> None:
    """An edit of plots.py is outside the code fingerprint: `dvc repro` redraws (compare stage, which draws each
    trajectory's files too) and reuses both trajectories, whose runs stay the same."""
    before = {name: trajectory_run(repo, name).info.run_id for name in ("lottery", "reinit")}
    plots_py = repo / "sddkit" / "plots.py"
    plots_py.write_text(plots_py.read_text() + "\n\nEDITED_LABEL = 'remaining weights'\n")
    assert ran(run(["dvc", "repro"], repo, env)) == ["compare"]
    assert {name: trajectory_run(repo, name).info.run_id for name in before} == before
    assert (repo / "results" / "lottery" / "curve.png").read_bytes()[:4] == b"\x89PNG"


def check_code_edit_makes_new_runs(repo: Path, env: dict) -> None:
    """After a one-line edit of a training-path module, `dvc repro` reruns the trajectory stages and they make
    new MLflow runs with the new code fingerprint; the old runs are kept as they were."""
    before = {name: trajectory_run(repo, name) for name in ("lottery", "reinit")}
    train_py = repo / "sddkit" / "train.py"
    text = train_py.read_text()
    line = "    history, step = [], start_step\n"
    assert line in text
    train_py.write_text(text.replace(line, "    step, history = start_step, []\n"))
    assert ran(run(["dvc", "repro"], repo, env)) == ["trajectories", "compare"]
    for name, old in before.items():
        new = trajectory_run(repo, name)
        assert new.info.run_id != old.info.run_id and new.info.status == "FINISHED"
        assert new.data.tags["sddkit.config_hash"] == old.data.tags["sddkit.config_hash"]
        assert new.data.tags["sddkit.code_hash"] != old.data.tags["sddkit.code_hash"]
        kept = MlflowClient(f"sqlite:///{repo}/mlflow.db").get_run(old.info.run_id)
        assert kept.info.status == "FINISHED"
        assert repr(sorted(kept.data.metrics.items())) == repr(sorted(old.data.metrics.items()))  # nan == nan
    reinit = trajectory_run(repo, "reinit")
    assert reinit.data.tags["sddkit.code_hash"] == trajectory_run(repo, "lottery").data.tags["sddkit.code_hash"]


GRID_STAGE = "pipelines/noise-grid/dvc.yaml:sweep"


def grid_ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def test_the_noise_grid_is_a_pipeline_of_its_own_pinned_by_dvc(repo):
    """pipelines/noise-grid: the paper's grid as one `sddkit sweep` stage, on a tiny config here. The default
    `dvc repro` does not run it; its params (the grid included) are pinned; a widened grid reruns the stage,
    which reports the cells finished before and trains only the new ones."""
    repo, env = repo
    shutil.copytree(MAIN / "pipelines", repo / "pipelines")
    grid = repo / "pipelines" / "noise-grid"
    params = yaml.safe_load((grid / "params.yaml").read_text())
    params.update(TINY_PARAMS, preset="quick")
    params["sweep"].update(grid={"noise.ratio": [0.2, 0.4]}, seeds=[0], jobs=2)
    (grid / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "add", "-A"], ["git", "commit", "-qm", "grid"]):
        run(cmd, repo, env)

    # the default `dvc repro` runs ./dvc.yaml's stages: the grid is not among them
    listed = lambda *flags: [line.split()[0] for line in run(["dvc", "stage", "list", *flags], repo, env).splitlines()]  # noqa: E731
    assert listed() == list(STAGES) and GRID_STAGE in listed("--all")
    out = run(["dvc", "repro", "pipelines/noise-grid/dvc.yaml"], repo, env)
    assert grid_ran(out) == [GRID_STAGE]
    landmarks = json.loads((grid / "results" / "landmarks.json").read_text())
    assert sorted(landmarks) == sorted(f"{m}·noise.ratio={r}" for m in ("lottery", "reinit") for r in (0.2, 0.4))
    assert (grid / "results" / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list((grid / "results" / "cells").glob("*/trajectory.csv"))) == 4
    pinned = yaml.safe_load((grid / "dvc.lock").read_text())["stages"]["sweep"]["params"]["params.yaml"]
    assert pinned["sweep"]["grid"] == {"noise.ratio": [0.2, 0.4]} and pinned["preset"] == "quick"
    runs = store(repo).trajectories("noise-grid")  # the project's one store, its own experiment
    assert len(runs) == 4 and len({r.data.tags["sddkit.sweep"] for r in runs}) == 1

    assert grid_ran(run(["dvc", "repro", "pipelines/noise-grid/dvc.yaml"], repo, env)) == []  # up to date
    params["sweep"]["seeds"] = [0, 1]
    (grid / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(["dvc", "repro", "pipelines/noise-grid/dvc.yaml"], repo, env)
    assert grid_ran(out) == [GRID_STAGE] and "8 cells (4 finished already)" in " ".join(out.split())
    assert len(store(repo).trajectories("noise-grid")) == 8
    assert len(list((grid / "results" / "cells").glob("*/trajectory.csv"))) == 8


def test_the_committed_results_come_from_the_committed_code():
    """`dvc status` of this checkout (CI: a fresh clone) may find outputs missing from its cache, and the
    prepared data not made yet, but no dependency, parameter or command changed since dvc.lock: what results/
    holds was made by this code. A change of the training code therefore ships with its `dvc repro`."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    # The pipelines whose results are committed: those with a dvc.lock (pipelines/* run on a cluster or on
    # demand have none until someone runs and commits them).
    locked = [str(p.relative_to(MAIN)) for p in sorted(MAIN.glob("**/dvc.lock")) if (p.parent / "dvc.yaml").is_file()
              and ".dvc" not in p.parts]
    assert "dvc.lock" in locked
    done = subprocess.run(["dvc", "status", "--json", *(str(Path(p).parent / "dvc.yaml") for p in locked)],
                          cwd=MAIN, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    made = {out["path"] for p in locked for stage in yaml.safe_load((MAIN / p).read_text())["stages"].values()
            for out in stage.get("outs", [])}
    stale = []
    for stage, entries in json.loads(done.stdout).items():
        for entry in entries:
            if isinstance(entry, str):  # "changed command", "always changed"
                stale.append(f"{stage}: {entry}")
                continue
            for path, state in entry.get("changed deps", {}).items():
                states = state.values() if isinstance(state, dict) else [state]  # params files: per key
                if state == "deleted" and path in made:
                    continue  # an output of another stage, DVC-cached and never committed: absent from a clone
                stale += [f"{stage}: {path} {s}" for s in states]
    assert not stale, "dvc.lock is older than the code or params; run `dvc repro` and commit: " + "; ".join(stale)

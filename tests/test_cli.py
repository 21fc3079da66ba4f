import subprocess
import sys

import pytest

from click.testing import CliRunner

from sddkit.cli import main
from conftest import enter_project, project_with_trajectories


def test_help_imports_no_heavy_library():
    code = ("import sys; from sddkit.cli import main; "
            "heavy = [m for m in ('torch', 'mlflow', 'timm', 'torchvision') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_bad_config_exits_2_with_one_line_and_writes_nothing(project):
    result = CliRunner().invoke(main, ["run", "--set", "noise.ratio=1.5"])
    assert result.exit_code == 2
    assert "noise.ratio = 1.5: out of range; allowed: 0.0 ≤ value < 1.0" in result.output
    assert not (project / "mlflow.db").exists() and not (project / "mlruns").exists()


def test_bad_params_file_key_is_named(project):
    (project / "params.yaml").write_text("preset: quick\ntrain:\n  epoch: 3\n")
    result = CliRunner().invoke(main, ["run"])
    assert result.exit_code == 2 and "train.epoch: unknown key" in result.output
    assert not (project / "mlflow.db").exists()


def test_presets_and_keys_list_without_running(project):
    result = CliRunner().invoke(main, ["presets"])
    assert result.exit_code == 0 and "quick" in result.output
    result = CliRunner().invoke(main, ["keys"])
    assert result.exit_code == 0 and "noise.ratio" in result.output


def test_missing_dataset_names_the_folder_and_writes_no_run(project):
    result = CliRunner().invoke(main, ["run", "--set", "data.name=cifar10", "--set", "model.arch=lenet300_100",
                                       "--set", "train.epochs=1", "--set", "prune.rounds=1"])
    assert result.exit_code == 1
    assert "cifar-10-batches-py" in result.output
    from mlflow import MlflowClient
    client = MlflowClient(f"sqlite:///{project}/mlflow.db")
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


def test_bad_layer_name_in_prune_exclude_exits_2_and_writes_no_run(project):
    result = CliRunner().invoke(main, ["run", "--set", "prune.exclude=[nope.weight]", "--set", "train.epochs=1"])
    assert result.exit_code == 2 and "prune.exclude names 'nope.weight'" in result.output
    from mlflow import MlflowClient
    client = MlflowClient(f"sqlite:///{project}/mlflow.db")
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


def test_train_eval_subset_that_does_not_split_over_classes_names_its_key_and_writes_nothing(project):
    result = CliRunner().invoke(main, ["run", "--set", "train.train_eval_size=7", "--set", "train.epochs=1"])
    assert result.exit_code == 2 and "train.train_eval_size = 7: use a multiple of the 10 classes" in result.output
    assert not (project / "mlruns").exists()


def test_cuda_asked_on_a_machine_without_one_exits_2(project):
    import pytest
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the error for a missing CUDA device cannot be shown here")
    result = CliRunner().invoke(main, ["run", "--set", "train.device=cuda", "--set", "train.epochs=1"])
    assert result.exit_code == 2 and "no CUDA device is available here" in result.output


@pytest.mark.parametrize("flag, value", [("--redense-lr", "nan"), ("--redense-lr", "inf"),
                                         ("--interpolation-step", "nan"), ("--sharpness-radius", "nan")])
def test_analyze_refuses_a_non_finite_setting_in_one_line_before_opening_a_store(project, flag, value):
    result = CliRunner().invoke(main, ["analyze", "lottery", flag, value])
    assert result.exit_code == 2 and "is not a finite number" in result.output and "Traceback" not in result.output
    assert not (project / "mlflow.db").exists()


# ---------------------------------------------------------------- tables, keys, presets, completion

def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_keys_lists_every_key_with_type_default_allowed_values_and_meaning():
    import json
    from sddkit.config import leaf_fields
    result = invoke("keys", "--format", "json")
    rows = json.loads(result.output)
    from sddkit.config import SweepConfig
    every = [k for k, _, _ in leaf_fields()] + [k for k, _, _ in leaf_fields(SweepConfig, "sweep.")]
    assert result.exit_code == 0 and [r["key"] for r in rows] == every
    assert all(r[c] for r in rows for c in ("type", "default", "allowed", "meaning"))
    table = invoke("keys").output
    assert "<class" not in table and "allowed values" in table and "list[int]" in table


def test_piped_tables_are_printed_in_full_not_cut_to_80_columns():
    from sddkit.config import preset_description
    result = invoke("presets")  # CliRunner's stdout is no terminal, as a pipe or a file
    assert result.exit_code == 0 and "…" not in result.output
    assert preset_description("quick") in result.output  # on one line, whole
    assert "(kaiming-normal fan_in, batch norm weight U(0, 1))" in invoke("keys").output


@pytest.mark.parametrize("fmt, start", [("csv", "name,description,deviations\ncifar10-resnet18,"),
                                        ("md", "**presets**\n\n| name | description | deviations from the paper's "
                                               "code |\n| --- | --- | --- |\n"),
                                        ("json", '[\n {\n  "name": "cifar10-resnet18"')])
def test_presets_in_each_text_format(fmt, start):
    result = invoke("presets", "--format", fmt)
    assert result.exit_code == 0 and result.output.startswith(start)


def test_an_unknown_preset_is_refused_in_one_line_naming_the_presets(project):
    result = invoke("run", "--preset", "quik")
    assert result.exit_code == 2 and "'quik' is not one of" in result.output and "'quick'" in result.output
    assert not (project / "mlflow.db").exists()


def test_a_mistyped_key_in_set_or_params_yaml_gets_did_you_mean(project):
    result = invoke("run", "--set", "train.lrr=0.1")
    assert result.exit_code == 2 and "train.lrr: unknown key (did you mean train.lr?)" in result.output
    (project / "params.yaml").write_text("noise:\n  ration: 0.4\n")
    result = invoke("run")
    assert result.exit_code == 2 and "noise.ration: unknown key (did you mean noise.ratio?)" in result.output
    assert not (project / "mlflow.db").exists()


def completion(shell_env: dict) -> str:
    import os
    env = {**os.environ, **shell_env}
    return subprocess.run(["sddkit"], env=env, capture_output=True, text=True, timeout=60).stdout


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_the_completion_script_of_each_shell_is_emitted(shell):
    assert "_SDDKIT_COMPLETE" in completion({"_SDDKIT_COMPLETE": f"{shell}_source"})


def test_completion_offers_the_commands_and_the_presets():
    words = completion({"_SDDKIT_COMPLETE": "bash_complete", "COMP_WORDS": "sddkit run --preset ", "COMP_CWORD": "3"})
    assert "plain,quick" in words.splitlines() and "plain,mnist-lenet" in words.splitlines()
    commands = completion({"_SDDKIT_COMPLETE": "bash_complete", "COMP_WORDS": "sddkit ", "COMP_CWORD": "1"})
    assert {"plain,ls", "plain,keys", "plain,run"} <= set(commands.splitlines())


# ---------------------------------------------------------------- sddkit ls and run --format, on a real store

SMALL = {"data.train_size": 300, "train.epochs": 2, "prune.rounds": 2, "train.batch_size": 64,
         "train.milestones": [], "train.threads": 1}
TWO = ({"seed": 0, "noise.ratio": 0.2}, {"seed": 1, "noise.ratio": 0.4})


@pytest.fixture(scope="module")
def two_trajectories(tmp_path_factory):
    """A project (experiment ls-test in its params.yaml) whose mlflow.db holds two tiny finished trajectories."""
    return project_with_trajectories(tmp_path_factory.mktemp("ls"), "ls-test", [{**SMALL, **t} for t in TWO])


@pytest.fixture
def in_store(two_trajectories, monkeypatch):
    return enter_project(two_trajectories, monkeypatch)


def test_ls_lists_each_trajectory_with_what_differs_its_status_rounds_and_landmarks(in_store):
    import json
    from mlflow import MlflowClient
    result = invoke("ls", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [(r["name"], r["seed"], r["noise.ratio"]) for r in rows] == [("lottery", "1", "0.4"), ("lottery", "0", "0.2")]
    for r in rows:
        assert (r["status"], r["rounds_done"], r["rounds_total"]) == ("FINISHED", 3, 3)
        assert 0 < r["dense_test_acc"] <= 100 and 0 < r["last_test_acc"] <= 100
        stored = MlflowClient(f"sqlite:///{in_store}/mlflow.db").get_run(r["run_id"]).data.metrics
        for n in ("minimum", "peak"):  # a curve of three rounds need not have both
            key = f"{n}_test_acc"
            assert r[key] == stored.get(key, stored.get(f"summary/{key}"))
    assert "train.lr" not in rows[0]  # the same in both: not a column
    table = invoke("ls").output
    assert "noise.ratio" in table and "dense test %" in table and "FINISHED" in table


def test_ls_shows_a_running_trajectory_whose_owner_died_as_interrupted(in_store):
    """kill -9 leaves a run RUNNING in MLflow: ls tells it from one a live process is training (its lease)."""
    import json
    import socket
    import subprocess
    import sys
    import time
    from dataclasses import asdict
    from mlflow import MlflowClient
    from sddkit import lease
    uri = f"sqlite:///{in_store}/mlflow.db"
    client = MlflowClient(uri)

    def status_of(run_id):
        return {r["run_id"]: r["status"] for r in json.loads(invoke("ls", "--format", "json").output)}[run_id]

    run = client.get_run(json.loads(invoke("ls", "--format", "json").output)[0]["run_id"])
    run_id, experiment_id = run.info.run_id, run.info.experiment_id
    identity = lease.identity(run.data.tags['sddkit.config_hash'], run.data.tags['sddkit.code_hash'])
    client.update_run(run_id, status="RUNNING")
    try:
        assert status_of(run_id) == "interrupted"  # no lease at all
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        now = time.time()
        record = lease.Holder("dead", socket.gethostname(), int(dead.stdout), now, now, run_id)
        client.set_experiment_tag(experiment_id, lease.key_for(identity), json.dumps(asdict(record)))
        assert status_of(run_id) == "interrupted"  # a fresh heartbeat, but its process is gone
        owner = lease.Lease(uri, experiment_id, identity).acquire()  # takes the dead one's lease over
        owner.set_run(run_id)
        try:
            assert status_of(run_id) == "RUNNING"
        finally:
            owner.release()
        assert status_of(run_id) == "interrupted"
    finally:
        client.update_run(run_id, status="FINISHED")
    assert status_of(run_id) == "FINISHED"


def test_ls_of_an_experiment_without_trajectories_says_so(in_store):
    result = invoke("ls", "--experiment", "nothing-here")
    assert result.exit_code == 0 and "no trajectories in experiment 'nothing-here'" in result.output


def test_ls_in_a_project_that_has_run_nothing_yet_says_so_and_creates_no_store(project):
    result = invoke("ls")
    assert result.exit_code == 0 and "no trajectories in experiment 'sddkit' yet" in result.output
    assert invoke("ls", "--format", "json").output == "[]\n"
    assert not (project / "mlflow.db").exists()


def test_ls_outside_a_project_refuses_in_one_line_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = invoke("ls")
    assert result.exit_code == 1 and "no sddkit project here" in result.output
    assert list(tmp_path.iterdir()) == []


def test_run_prints_its_closing_table_as_csv_on_stdout_alone(in_store):
    import csv
    import io
    sets = [a for k, v in {**SMALL, **TWO[0]}.items() for a in ("--set", f"{k}={v}")]
    result = CliRunner().invoke(main, ["run", *sets, "--format", "csv"])
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["round"] for r in rows] == ["0", "1", "2"] and rows[0]["landmark"].startswith("dense")
    assert [round(float(r["sparsity"]), 3) for r in rows] == [0.0, 0.2, 0.36] and "already finished" in result.stderr


def test_run_with_one_seed_prints_its_mean_table_as_json_without_a_std_column(in_store):
    import json
    sets = [a for k, v in {**SMALL, "noise.ratio": 0.2}.items() for a in ("--set", f"{k}={v}")]
    result = CliRunner().invoke(main, ["run", *sets, "--seeds", "0", "--format", "json"])
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["round"] for r in rows] == [0, 1, 2] and "test_acc_std" not in rows[0]  # n = 1: no spread to show

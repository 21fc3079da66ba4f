import subprocess
import sys

import pytest

from click.testing import CliRunner

from sddkit.cli import main


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

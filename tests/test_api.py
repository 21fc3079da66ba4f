"""The Python API (sddkit.api) on a real sqlite store: two tiny trajectories of one name (other seed, other lr)
read back as one long frame, a round's mask and weights by name and round, selectors that cannot reach an MLflow
filter, and the one-line refusal outside a project (API and CLI) that creates nothing."""
from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from mlflow import MlflowClient

import sddkit
from sddkit import tracking
from sddkit.cli import main
from conftest import enter_project, project_with_trajectories

SMALL = {"data.train_size": 300, "train.epochs": 2, "prune.rounds": 2, "train.batch_size": 64,
         "train.milestones": [], "train.threads": 1, "tracking.experiment": "api-test"}
# The two trajectories: one run name, other seeds and learning rates (a key outside the identity columns).
RUNS = ({"seed": 0, "train.lr": 0.1}, {"seed": 1, "train.lr": 0.05})
INJECTION = "x' or '1'='1"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A project whose default store (mlflow.db at its root; experiment from its params.yaml) holds both runs."""
    return project_with_trajectories(tmp_path_factory.mktemp("api"), "api-test", [{**SMALL, **r} for r in RUNS])


@pytest.fixture
def inside(store, monkeypatch):
    return enter_project(store, monkeypatch)


@pytest.fixture
def outside(tmp_path, monkeypatch):
    """An empty folder outside any project as the working directory, with no store named anywhere."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return folder


def uri_of(root) -> str:
    return f"sqlite:///{root / 'mlflow.db'}"


def one_line(message: str) -> bool:
    return "\n" not in message.strip() and "Traceback" not in message


# ---------------------------------------------------------------- load_trajectory

def test_load_trajectory_is_one_long_frame_of_the_stored_round_metrics(inside):
    df = sddkit.load_trajectory("lottery")  # the experiment comes from the project's params.yaml
    assert len(df) == 2 * 3  # two trajectories, rounds 0..2
    assert sorted(df["trajectory"].unique()) == ["lottery seed=0", "lottery seed=1"]
    for column in ("trajectory", "round", "run_id", "trajectory_run_id", "test_acc", "train_acc_noisy", "sparsity",
                   "remaining", "seed", "retrain.mode", "noise.ratio", "noise.kind", "prune.criterion",
                   "model.arch", "data.name", "train.lr"):
        assert column in df.columns, column
    assert not [c for c in df.columns if c.startswith("epoch/")]
    client = MlflowClient(uri_of(inside))
    for row in df.to_dict("records"):
        run = client.get_run(row["run_id"])
        assert run.data.tags["mlflow.parentRunId"] == row["trajectory_run_id"]
        assert int(run.data.tags["sddkit.round"]) == row["round"]
        stored = {k: v for k, v in run.data.metrics.items() if not k.startswith("epoch/")}
        assert {k: row[k] for k in stored if k != "round"} == {k: v for k, v in stored.items() if k != "round"}
    by_seed = {seed: group for seed, group in df.groupby("seed")}
    assert list(by_seed[0]["round"]) == [0, 1, 2] and set(by_seed[1]["train.lr"]) == {0.05}
    assert df["noise.ratio"].nunique() == 1 and (df["retrain.mode"] == "lottery").all()


def test_where_takes_a_dict_or_key_value_texts(inside):
    by_dict = sddkit.load_trajectory("lottery", where={"seed": 1})
    by_text = sddkit.load_trajectory("lottery", where=["train.lr=0.05"])
    assert list(by_dict["run_id"]) == list(by_text["run_id"]) and len(by_dict) == 3
    assert set(by_dict["trajectory"]) == {"lottery"}  # alone in its frame, the plain run name


def test_a_store_named_by_tracking_uri_is_read_from_anywhere(inside, outside):
    df = sddkit.load_trajectory("lottery", experiment="api-test", tracking_uri=uri_of(inside))
    assert len(df) == 6
    assert list(outside.iterdir()) == []


def test_an_unknown_name_or_experiment_is_one_line(inside):
    with pytest.raises(tracking.TrackingError) as err:
        sddkit.load_trajectory("nope")
    assert one_line(str(err.value)) and "load_trajectory('nope')" in str(err.value) and "lottery" in str(err.value)
    with pytest.raises(tracking.TrackingError, match="holds no trajectories"):
        sddkit.load_trajectory("lottery", experiment="other")


# ---------------------------------------------------------------- load_round

def test_load_round_by_name_and_round_is_that_round_runs_mask_and_weights(inside):
    mask, weights = sddkit.load_round("lottery", 1, where={"seed": 0})
    df = sddkit.load_trajectory("lottery", where={"seed": 0})
    run_id = df.loc[df["round"] == 1, "run_id"].item()
    stored_mask, stored_weights = sddkit.load_mask(run_id), sddkit.load_weights(run_id, tracking_uri=uri_of(inside))
    assert torch.equal(sddkit.load_mask(run_id, uri=uri_of(inside))["1.weight"], stored_mask["1.weight"])
    assert mask.keys() == stored_mask.keys() and all(torch.equal(mask[k], stored_mask[k]) for k in mask)
    assert weights.keys() == stored_weights.keys() and all(torch.equal(weights[k], stored_weights[k]) for k in weights)
    assert not all(m.all() for m in mask.values())  # round 1 is pruned


def test_load_round_refuses_a_selector_naming_several_trajectories(inside):
    with pytest.raises(tracking.TrackingError) as err:
        sddkit.load_round("lottery", 1)
    message = str(err.value)
    ids = set(sddkit.load_trajectory("lottery")["trajectory_run_id"])
    assert one_line(message) and all(i in message for i in ids) and "where=" in message


def test_load_round_of_a_round_not_run_names_the_finished_ones(inside):
    with pytest.raises(tracking.TrackingError, match=r"no finished round 7 \(finished rounds: 0–2\)"):
        sddkit.load_round("lottery", 7, where={"seed": 1})


# ---------------------------------------------------------------- selectors never reach a filter

def test_quotes_and_filter_syntax_never_reach_an_mlflow_filter(inside, monkeypatch):
    filters = []
    search = MlflowClient.search_runs

    def recording(self, experiment_ids, filter_string="", *args, **kwargs):
        filters.append(filter_string)
        return search(self, experiment_ids, filter_string, *args, **kwargs)
    monkeypatch.setattr(MlflowClient, "search_runs", recording)
    with pytest.raises(tracking.TrackingError, match="no trajectory named"):
        sddkit.load_trajectory(INJECTION)
    with pytest.raises(tracking.TrackingError, match="none of them has"):
        sddkit.load_trajectory("lottery", where={"sddkit.name": INJECTION})
    with pytest.raises(tracking.TrackingError, match="none of them has"):
        sddkit.load_round("lottery", 0, where=[f"seed={INJECTION}"])
    assert filters and not [f for f in filters if "1'='1" in f or " or " in f]


# ---------------------------------------------------------------- outside a project

def test_outside_a_project_every_function_fails_with_one_line_and_creates_nothing(outside):
    calls = [lambda: sddkit.load_trajectory("lottery"), lambda: sddkit.load_round("lottery", 0),
             lambda: sddkit.load_mask("0" * 32), lambda: sddkit.load_weights("0" * 32)]
    for call in calls:
        with pytest.raises(sddkit.NoProjectError) as err:
            call()
        message = str(err.value)
        assert one_line(message) and message.startswith("no sddkit project here (")
        assert message.endswith("; pass tracking_uri= or cd into the project")
    with pytest.raises(tracking.TrackingError, match="no sddkit project here"):
        tracking.load_mask("0" * 32)
    assert list(outside.iterdir()) == []


def test_a_damaged_params_yaml_is_one_tracking_error(project, monkeypatch):
    (project / "params.yaml").write_text("train:\n  epoch: 3\n")
    with pytest.raises(tracking.TrackingError, match=r"params.yaml: .*train.epoch: unknown key") as err:
        sddkit.load_trajectory("lottery")
    assert one_line(str(err.value)) and not (project / "mlflow.db").exists()


def test_a_project_without_a_store_yet_is_refused_without_creating_one(project, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(tracking.TrackingError, match="no tracking store at") as err:
        sddkit.load_mask("0" * 32)
    assert one_line(str(err.value))
    with pytest.raises(tracking.TrackingError, match="no tracking store at"):
        sddkit.load_trajectory("lottery")
    assert [p.name for p in project.iterdir()] == [".git"]


@pytest.mark.parametrize("args", [["compare", "--runs", "lottery"], ["analyze", "lottery"], ["ui"]])
def test_commands_that_read_the_store_refuse_outside_a_project(outside, args):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert one_line(result.output) and result.output.startswith("error: no sddkit project here (")
    assert "cd into the project" in result.output
    assert list(outside.iterdir()) == []


def test_sddkit_exposes_the_api_lazily():
    assert {"load_trajectory", "load_round", "load_mask", "load_weights", "NoProjectError"} <= set(dir(sddkit))
    assert issubclass(sddkit.NoProjectError, sddkit.TrackingError)
    with pytest.raises(AttributeError):
        sddkit.no_such_thing


def test_the_readmes_load_round_example_holds_once_a_second_noise_ratio_exists(tmp_path_factory, monkeypatch):
    """README's `load_round("lottery", 7, where={"seed": 0})` failed as soon as a second noise ratio was
    stored (issue 29): the example, as printed, runs on a store with seed 0 at two noise ratios."""
    import re
    from pathlib import Path
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    (line,) = [x for x in readme.splitlines() if x.startswith("mask, weights = sddkit.load_round(")]
    call = line.split("=", 1)[1].split("  #")[0].strip()
    round_index = int(re.search(r"load_round\(\"lottery\", (\d+)", call).group(1))
    tiny = {**SMALL, "train.epochs": 1, "prune.rounds": round_index, "tracking.experiment": "readme"}
    root = project_with_trajectories(tmp_path_factory.mktemp("readme"), "readme",
                                     [{**tiny, "seed": 0, "noise.ratio": r} for r in (0.2, 0.4)])
    enter_project(root, monkeypatch)
    mask, weights = eval(call, {"sddkit": sddkit})
    assert mask and weights

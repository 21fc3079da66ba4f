"""The Python API, for analysis in a notebook; it only reads. ``sddkit.load_trajectory("lottery", where={"noise.ratio":
0.2})``: every seed of it as one long DataFrame, a row a round; ``load_round("lottery", 3, where={"seed": 0})``: its
mask and weights. The store is the project's, or ``tracking_uri``; outside a project without one, every function
fails with ``NoProjectError`` and creates nothing."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

from sddkit import config, failures, lease, listing, paths, selection
from sddkit.selection import trajectory_name
from sddkit.tracking import PARENT_METRICS, Tracker, TrackingError, param_text, read_mask, read_weights, round_row

if TYPE_CHECKING:  # `sddkit ls` lists without either: pandas for the frame, torch for masks and weights
    import pandas as pd
    import torch

# Config keys every frame carries: what tells trajectories apart in most studies. Keys whose values differ
# between the frame's trajectories are added to them.
IDENTITY_COLUMNS = ("seed", "retrain.mode", "noise.kind", "noise.ratio", "prune.criterion", "model.arch",
                    "data.name")


class NoProjectError(TrackingError):
    """No project here and no tracking URI given: there is no store to read, and none is created."""


def one_line(function):
    """``function``, whose failing store raises a one-line TrackingError (``failures.explain``)."""
    @functools.wraps(function)
    def call(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except TrackingError:
            raise
        except Exception as exc:
            line = failures.explain(exc)
            if line is None:
                raise
            raise TrackingError(line) from None  # the line says it all; MLflow's chain would bury it
    return call


# ---------------------------------------------------------------- the API


@one_line
def load_trajectory(selector: str, *, where: dict | list[str] | str | None = None, experiment: str | None = None,
                    tracking_uri: str | None = None) -> pd.DataFrame:
    """Every finished round of every finished trajectory ``selector`` names (run name, ``sddkit.name`` tag or
    run ID), kept where every ``where`` holds (``{"noise.ratio": 0.4}`` or ``["noise.ratio=0.4"]``, over tags
    and params), as one long frame, oldest trajectory first. Columns: ``trajectory`` (its name; with the seed,
    or a short run ID, where names repeat), ``round``, the round's metrics, the identifying config keys,
    ``run_id`` (the round's run) and ``trajectory_run_id`` (the parent run)."""
    import pandas as pd
    tracker = open_store(tracking_uri)
    runs = select(tracker, selector, where, experiment, f"load_trajectory({selector!r})")[::-1]
    keys = [*IDENTITY_COLUMNS, *differing_keys(runs, skip=IDENTITY_COLUMNS)]
    labels = trajectory_labels(runs)
    rows = [row for run in runs for row in trajectory_rows(tracker, run, labels[run.info.run_id], keys)]
    found = {k for row in rows for k in row} - {*keys, "round", "trajectory", "run_id", "trajectory_run_id"}
    metrics = [k for k in PARENT_METRICS if k in found] + sorted(found - set(PARENT_METRICS))  # the curve's first
    return pd.DataFrame(rows, columns=["trajectory", "round", *metrics, *keys, "run_id", "trajectory_run_id"])


@one_line
def load_round(selector: str, round: int, *, where: dict | list[str] | str | None = None,
               experiment: str | None = None, tracking_uri: str | None = None):
    """``(mask, weights)`` of round ``round`` of the one finished trajectory ``selector`` (and ``where``)
    names: ``{parameter name: bool tensor}`` and the dense state dict. Several matches are an error that
    lists them (never a silent pick of one): narrow it with ``where`` or give a run ID."""
    call = f"load_round({selector!r}, {round})"
    tracker = open_store(tracking_uri)
    runs = select(tracker, selector, where, experiment, call)
    if len(runs) > 1:
        raise TrackingError(ambiguous(call, runs))
    rounds = {int(r.data.tags["sddkit.round"]): r.info.run_id for r in tracker.round_runs(runs[0].info.run_id)}
    if round not in rounds:
        have = f"finished rounds: {min(rounds)}–{max(rounds)}" if rounds else "no finished round"
        raise TrackingError(f"{call}: trajectory {runs[0].info.run_name} ({runs[0].info.run_id}) has no finished "
                            f"round {round} ({have})")
    return read_mask(tracker, rounds[round]), read_weights(tracker, rounds[round])


@one_line
def load_mask(run_id: str, tracking_uri: str | None = None, *, uri: str | None = None) -> dict[str, torch.Tensor]:
    """A round's mask by its round run's ID: ``{parameter name: bool tensor}`` (``uri``: the older name of
    ``tracking_uri``)."""
    return read_mask(open_store(tracking_uri or uri), run_id)


@one_line
def load_weights(run_id: str, tracking_uri: str | None = None, *, uri: str | None = None) -> dict[str, torch.Tensor]:
    """A round's final weights by its round run's ID: the dense state dict, exact zeros where pruned (``uri``:
    the older name of ``tracking_uri``)."""
    return read_weights(open_store(tracking_uri or uri), run_id)


@one_line
def list_trajectories(*, experiment: str | None = None,
                      tracking_uri: str | None = None) -> tuple[list[dict], list[str]]:
    """Every trajectory of the experiment, finished or not, newest first (what `sddkit ls` shows), and the
    params whose values differ between them. A row: ``name``, ``run_id``, those params, ``seed``, ``status``
    (``interrupted`` where no live process trains a RUNNING run), ``rounds_done`` (finished rounds, the dense
    one included) of ``rounds_total``, and a finished one's landmark test accuracies ``<landmark>_test_acc``."""
    tracker = open_store(tracking_uri)
    runs = tracker.trajectories(experiment_name(experiment))
    return listing.rows(runs, selection.finished_round_counts(tracker, runs), lambda run: lease.live_holder(
        tracker, run.info.experiment_id, run.data.tags.get("sddkit.config_hash"), run.data.tags.get("sddkit.code_hash"),
        run.info.run_id) is not None)


# ---------------------------------------------------------------- the store

def open_store(tracking_uri: str | None) -> Tracker:
    """``tracking_uri``, else the project's store. Fails, creating nothing, outside a project without a URI and
    where a local store does not exist yet (opening it would create an empty one)."""
    problem = paths.missing_project(tracking_uri)
    if problem:
        raise NoProjectError(f"{problem}; pass tracking_uri= or cd into the project")
    root = paths.project_root()
    uri = tracking_uri or paths.tracking_uri(project_config(root).tracking.uri, root)
    tracker = Tracker(uri, root)
    if not tracker.exists:
        raise TrackingError(f"no tracking store at {paths.sqlite_path(uri)}: nothing has been run there yet; "
                            f"run `sddkit run` (or `dvc repro`) first, or pass tracking_uri=")
    return tracker


def experiment_name(experiment: str | None) -> str:
    """``experiment``, else the project's ``tracking.experiment`` (params.yaml, else the default)."""
    return experiment or project_config(paths.project_root()).tracking.experiment


def project_config(root: Path) -> config.Config:
    """params.yaml, else the defaults: where the store is and the experiment's name."""
    params = root / "params.yaml"
    try:
        return config.load_config(config.read_params_file(params) if params.is_file() else {})
    except config.ConfigError as exc:  # one error type for a notebook to catch
        raise TrackingError(f"{params}: {exc}; fix it, or pass tracking_uri= and experiment=") from exc


def select(tracker: Tracker, selector: str, where, experiment: str | None, call: str) -> list:
    """The finished trajectories ``selector`` names where every ``where`` holds, newest first."""
    return selection.select(tracker, selector, experiment_name(experiment), selection.where_list(where),
                            heading=call, names_only=True)


# ---------------------------------------------------------------- the frame

def trajectory_rows(tracker: Tracker, run, label: str, keys: list[str]) -> list[dict]:
    """One row per finished round: the round run's metrics (not the per-epoch ones)."""
    values = config_values(run)
    shared = {"trajectory": label, "trajectory_run_id": run.info.run_id, **{k: values.get(k) for k in keys}}
    return [{**round_row(r), "run_id": r.info.run_id, **shared} for r in tracker.round_runs(run.info.run_id)]


def config_values(run) -> dict:
    """The run's config as typed values (lists as their JSON text, so cells stay hashable for groupby)."""
    try:
        flat = config.from_params(run.data.params).flat()
    except config.ConfigError:  # params of older code that no longer validate: show them as logged
        return dict(run.data.params)
    return {**run.data.params, **{k: param_text(v) if isinstance(v, (list, dict)) else v for k, v in flat.items()}}


def differing_keys(runs: list, skip=()) -> list[str]:
    """The params (but ``skip``) whose values differ between ``runs`` and change results."""
    return listing.differing_keys([r.data.params for r in runs], skip)


def trajectory_labels(runs: list) -> dict[str, str]:
    """Run ID -> the trajectory's name in the frame, with its seed where several share it (else a short run ID)."""
    by_name: dict[str, list] = {}
    for r in runs:
        by_name.setdefault(trajectory_name(r), []).append(r)
    labels = {}
    for name, same in by_name.items():
        seeds = [r.data.params.get("seed") for r in same]
        by_seed = len(set(seeds)) == len(same)
        for r, seed in zip(same, seeds):
            labels[r.info.run_id] = (name if len(same) == 1 else f"{name} seed={seed}" if by_seed
                                     else f"{name} {r.info.run_id[:8]}")
    return labels


def ambiguous(call: str, runs: list) -> str:
    """The error for a ``load_round`` selector naming several trajectories: each, by what differs."""
    differ = differing_keys(runs)[:3]
    if not differ:  # the same config run again (--force, or other code): only the run ID tells them apart
        ids = ", ".join(r.info.run_id for r in runs)
        return f"{call}: {len(runs)} finished runs of the same config match ({ids}); pass one's run ID"
    listed = "; ".join(f"{r.info.run_id} ({', '.join(f'{k}={r.data.params.get(k)}' for k in differ)})" for r in runs)
    return (f"{call}: {len(runs)} finished trajectories match: {listed}; pick one with where= "
            f"(e.g. where={{{differ[0]!r}: ...}}) or pass its run ID")

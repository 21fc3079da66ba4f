"""What ``sddkit analyze RUN`` does: for chosen rounds of stored trajectories, re-dense, interpolate between
the sparse and the re-dense solution, and walk the 1-D loss landscape; every result goes back into MLflow
as a run nested under its round run (``sddkit.kind`` = redense / interpolation / landscape).

An analysis already stored with the same settings is reported, not redone (``force`` redoes it).
"""
from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sddkit import analysis, config, landscape, models, plots, pruning, redense, seeds, selection, trajectory
from sddkit.checkpoint import torch_bytes
from sddkit.runs import LABELS, damaged
from sddkit.tracking import INIT_DIGEST, Tracker, TrackingError, literal, read_mask, read_weights, round_row


@dataclass(frozen=True)
class Settings:
    rounds: tuple[int, ...] = ()        # empty: the landmarks (dense, minimum, peak, last)
    redense_epochs: int | None = None   # None: the round's epoch count
    redense_lr: float | None = None     # None: the round's final lr
    interpolation_step: float = 0.05
    landscape_points: int = 41
    sharpness_radius: float = 0.1
    force: bool = False


@dataclass
class RoundRef:
    """A finished round run of a trajectory, with the trajectory it belongs to."""
    parent_id: str
    run: object

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    @property
    def index(self) -> int:
        return int(self.run.data.tags["sddkit.round"])


class StoredTrajectory:
    """A stored trajectory as the read-only ``trajectory.Store`` that ``trajectory.setup`` reads."""

    def __init__(self, tracker: Tracker, run_id: str, completed: list[dict]):
        self.tracker, self.run_id, self.completed = tracker, run_id, completed

    def load_state(self, name: str) -> dict | None:
        """A stored state (older runs kept the init; a rewind state past step 0 is kept), else None."""
        path = f"state/{name}.pt"
        if path not in self.tracker.artifact_paths(self.run_id, "state"):
            return None
        return self.tracker.read_torch(self.run_id, path)

    def init_digest(self) -> str | None:
        return self.tracker.run(self.run_id).data.tags.get(INIT_DIGEST)

    def record_init_digest(self, digest: str) -> None:
        """Read-only: a run that recorded none (older code) is not written to."""


def chosen_rounds(parent, rounds: dict[int, RoundRef], asked: tuple[int, ...], threshold: float) -> list[int]:
    """The asked rounds (each must be finished), else the landmarks of the stored curve."""
    if asked:
        missing = [r for r in asked if r not in rounds]
        if missing:
            raise TrackingError(f"trajectory {parent.info.run_name} ({parent.info.run_id}) has no finished round "
                                f"{missing[0]}; finished rounds: {', '.join(map(str, sorted(rounds)))}")
        return sorted(set(asked))
    ph = analysis.phases([round_row(rounds[r].run) for r in sorted(rounds)], threshold)
    return sorted({i for i in (ph.dense, ph.minimum, ph.peak, ph.last) if i is not None})


def say(text: str) -> None:
    """A progress line on stderr: re-dense trains for a round's epochs, so a silent minute looks like a hang."""
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} analyze: {text}", file=sys.stderr, flush=True)


def analyze(tracker: Tracker, root: Path, selector: str, experiment: str, settings: Settings) -> list[dict]:
    """Analyse every trajectory ``selector`` names; one summary row per (trajectory, round)."""
    plans = []
    # Failed or unfinished trajectories of the same name are left out; everything is checked before any write.
    hint = "give a run name or ID from that list, or --experiment"
    for parent in selection.select(tracker, selector, experiment, hint=hint):
        refs = [RoundRef(parent.info.run_id, r) for r in tracker.round_runs(parent.info.run_id)]
        rounds = {ref.index: ref for ref in refs}
        if not rounds:
            raise TrackingError(f"trajectory {parent.info.run_name} ({parent.info.run_id}) has no finished "
                                f"round yet; run it first")
        cfg = config.from_params(parent.data.params)
        chosen = chosen_rounds(parent, rounds, settings.rounds, cfg.analysis.interpolation_threshold)
        plans.append((parent, cfg, rounds, chosen))
    say(f"{sum(len(p[3]) for p in plans)} rounds of {len(plans)} trajectories: "
        + "; ".join(f"{p[0].info.run_name} rounds {', '.join(map(str, p[3]))}" for p in plans))
    return [row for parent, cfg, rounds, chosen in plans
            for row in analyze_trajectory(tracker, root, parent, cfg, rounds, chosen, settings)]


def analyze_trajectory(tracker: Tracker, root: Path, parent, cfg: config.Config, rounds: dict[int, RoundRef],
                       chosen: list[int], settings: Settings) -> list[dict]:
    say(f"{parent.info.run_name}: rebuilding its data, labels and init from the config")
    ctx = rebuild(tracker, root, parent, cfg, rounds)
    return [analyze_round(tracker, ctx, rounds[r], settings, parent.info.run_name) for r in chosen]


def rebuild(tracker: Tracker, root: Path, parent, cfg: config.Config, rounds: dict[int, RoundRef]):
    """The trajectory's data, labels (checked against the stored ones) and init, rebuilt from its config."""
    completed = [round_row(rounds[r].run) for r in sorted(rounds)]
    ctx = trajectory.setup(cfg, root, StoredTrajectory(tracker, parent.info.run_id, completed),
                           trajectory.Reporter(), None)
    check_labels(tracker, parent.info.run_id, ctx.noisy)
    return ctx


def check_labels(tracker: Tracker, run_id: str, noisy: torch.Tensor) -> None:
    """The rebuilt noisy labels must be the ones the trajectory trained on."""
    if not torch.equal(stored_labels(tracker, run_id).long(), noisy.cpu().long()):
        raise TrackingError(f"run {run_id}: rebuilding the data and noise from its config gives other labels "
                            f"than the run trained on (dataset files or noise code changed); restore them")


def stored_labels(tracker: Tracker, run_id: str) -> torch.Tensor:
    with tempfile.TemporaryDirectory() as tmp:
        local = tracker.download(run_id, LABELS, tmp)
        try:
            return torch.from_numpy(np.load(local))
        except (ValueError, TypeError, OSError, EOFError) as exc:  # np.load's ways of refusing a damaged file
            raise damaged(tracker, run_id, LABELS, f"corrupt ({exc.__class__.__name__})") from exc


def analyze_round(tracker: Tracker, ctx: trajectory.Context, ref: RoundRef, settings: Settings,
                  name: str = "") -> dict:
    masks, sparse = read_mask(tracker, ref.run_id), read_weights(tracker, ref.run_id)
    say(f"{name} round {ref.index}: re-dense")
    dense, redense_id = redense_solution(tracker, ctx, ref, masks, sparse, settings)
    say(f"{name} round {ref.index}: interpolation, sparse to re-dense")
    interpolation = interpolate(tracker, ctx, ref, sparse, dense, redense_id, settings)
    say(f"{name} round {ref.index}: loss landscape")
    walk = walk_landscape(tracker, ctx, ref, masks, sparse, settings)
    summary = {"redense_test_acc": interpolation[-1]["test_acc"],
               "redense_train_acc_noisy": interpolation[-1]["train_acc_noisy"],
               "interpolation_max_train_loss": max(r["train_loss_noisy"] for r in interpolation),
               "sharpness": walk["sharpness"]}
    for run_id in (ref.run_id, ref.parent_id):  # on the parent as a curve over rounds (step = round)
        tracker.log_metrics(run_id, [(k, v, ref.index) for k, v in summary.items()])
    row = round_row(ref.run)
    return {"name": name, "trajectory": ref.parent_id, "round": ref.index, "sparsity": row["sparsity"],
            "test_acc": row["test_acc"], **summary}


# ---------------------------------------------------------------- the three analyses

def redense_solution(tracker, ctx, ref: RoundRef, masks, sparse, settings: Settings):
    """The round's re-dense weights: stored ones with the same settings, else trained and stored now."""
    epochs = settings.redense_epochs or redense.default_epochs(ctx, ref.index)
    lr = settings.redense_lr or redense.default_lr(ctx, ref.index)
    key = f"epochs={epochs} lr={lr:.6g}"
    done = None if settings.force else stored_child(tracker, ref, "redense", key)
    if done is not None:
        return tracker.read_torch(done, "weights.pt"), done
    weights, history = redense.redense(ctx, sparse, masks, ref.index, epochs, lr)
    metrics = redense.evaluate(ctx, weights)
    dense_masks = pruning.dense_masks({n: weights[n] for n in ctx.names})
    metrics["distance_from_sparse"] = analysis.learning_distance(sparse, weights, dense_masks)
    run_id = open_child(tracker, ref, "redense", key, {"redense.epochs": epochs, "redense.lr": lr})
    tracker.log_metrics(run_id, [(f"epoch/{k}", v, row["epoch"]) for row in history for k, v in row.items()
                                 if k != "epoch"] + [(k, v, 0) for k, v in metrics.items()])
    close_child(tracker, run_id, {"weights.pt": torch_bytes(weights)})
    return weights, run_id


def interpolate(tracker, ctx, ref: RoundRef, sparse, dense, redense_id: str, settings: Settings) -> list[dict]:
    """Metrics of (1 − α)·sparse + α·re-dense along α = 0 … 1."""
    alphas = landscape.alphas(settings.interpolation_step)
    key = f"redense={redense_id} step={settings.interpolation_step:g}"
    done = None if settings.force else stored_child(tracker, ref, "interpolation", key)
    if done is not None:
        return read_series(tracker, done, "interpolation", len(alphas))
    rows = [redense.evaluate(ctx, landscape.blend(sparse, dense, a)) for a in alphas]
    run_id = open_child(tracker, ref, "interpolation", key,
                        {"interpolation.step": settings.interpolation_step, "redense_run": redense_id})
    log_series(tracker, run_id, "interpolation", "alpha", alphas, rows)
    title = f"round {ref.index}: sparse (α = 0) → re-dense (α = 1)"
    close_child(tracker, run_id, {"interpolation.png": plots.line_png(alphas, rows, "α", title)})
    return rows


def walk_landscape(tracker, ctx, ref: RoundRef, masks, sparse, settings: Settings) -> dict:
    """Metrics along sparse + t·d, d filter-normalised, t in [−1, 1]; the sharpness of the train loss."""
    ts = landscape.grid(settings.landscape_points, settings.sharpness_radius)
    key = landscape_key(settings)
    done = None if settings.force else stored_child(tracker, ref, "landscape", key)
    if done is not None:
        return {"sharpness": tracker.run(done).data.metrics["sharpness"]}
    weights = {n: sparse[n] for n in models.prunable(ctx.model, [])}
    direction = landscape.filter_normalised_direction(weights, masks, seeds.generator(ctx.cfg.seed, "landscape",
                                                                                      ref.index))
    rows = [redense.evaluate(ctx, landscape.shifted(sparse, direction, t)) for t in ts]
    sharp = landscape.sharpness(ts, [r["train_loss_noisy"] for r in rows], settings.sharpness_radius)
    run_id = open_child(tracker, ref, "landscape", key, {"landscape.points": settings.landscape_points,
                                                         "landscape.sharpness_radius": settings.sharpness_radius})
    log_series(tracker, run_id, "landscape", "t", ts, rows)
    tracker.log_metrics(run_id, [("sharpness", sharp, 0)])
    title = f"round {ref.index}: 1-D loss landscape (filter-normalised direction), sharpness {sharp:.4g}"
    radius = settings.sharpness_radius
    close_child(tracker, run_id, {"landscape.png": plots.line_png(ts, rows, "t", title, (-radius, radius))})
    return {"sharpness": sharp}


def landscape_key(settings: Settings) -> str:
    return f"points={settings.landscape_points} radius={settings.sharpness_radius:g}"


def sharpness_curve(tracker: Tracker, root: Path, parent, settings: Settings) -> dict[int, float]:
    """The sharpness of every finished round of one stored trajectory: the landscape walk alone (no re-dense),
    each round's logged as ``sharpness`` on its round run and on the parent (step = round), as ``analyze`` does.
    Walks stored with the same settings are read back, not redone; the data is rebuilt only for the others."""
    refs = {ref.index: ref for ref in (RoundRef(parent.info.run_id, r) for r in tracker.round_runs(parent.info.run_id))}
    ctx, out = None, {}
    for index in sorted(refs):
        ref = refs[index]
        done = stored_child(tracker, ref, "landscape", landscape_key(settings))
        if done is not None:
            out[index] = tracker.run(done).data.metrics["sharpness"]
        else:
            if ctx is None:
                ctx = rebuild(tracker, root, parent, config.from_params(parent.data.params), refs)
            masks, sparse = read_mask(tracker, ref.run_id), read_weights(tracker, ref.run_id)
            out[index] = walk_landscape(tracker, ctx, ref, masks, sparse, settings)["sharpness"]
        if ref.run.data.metrics.get("sharpness") != out[index]:
            for run_id in (ref.run_id, ref.parent_id):
                tracker.log_metrics(run_id, [("sharpness", out[index], index)])
    return out


# ---------------------------------------------------------------- nested runs

def stored_child(tracker: Tracker, ref: RoundRef, kind: str, key: str) -> str | None:
    """The newest finished analysis run of ``kind`` with settings ``key`` under the round run."""
    query = (f"tags.`mlflow.parentRunId` = {literal(ref.run_id)} and tags.`sddkit.kind` = {literal(kind)} "
             f"and tags.`sddkit.analysis_key` = {literal(key)} and attributes.status = 'FINISHED'")
    run = tracker.newest([ref.run.info.experiment_id], query)
    return run.info.run_id if run is not None else None


def open_child(tracker: Tracker, ref: RoundRef, kind: str, key: str, params: dict) -> str:
    tags = {"mlflow.parentRunId": ref.run_id, "sddkit.kind": kind, "sddkit.round": str(ref.index),
            "sddkit.trajectory": ref.parent_id, "sddkit.round_run": ref.run_id, "sddkit.analysis_key": key}
    return tracker.create_run(ref.run.info.experiment_id, tags, f"{ref.run.info.run_name}/{kind}", params)


def close_child(tracker: Tracker, run_id: str, files: dict[str, bytes]) -> None:
    """Store the files, then mark the run finished: only a finished run is ever reused."""
    tracker.log_files(run_id, files)
    tracker.set_status(run_id, "FINISHED")


def log_series(tracker: Tracker, run_id: str, prefix: str, x_name: str, xs: list[float], rows: list[dict]) -> None:
    """``<prefix>/<metric>`` and ``<prefix>/<x_name>`` with step = the point's index."""
    points = [(f"{prefix}/{x_name}", x, i) for i, x in enumerate(xs)]
    values = [(f"{prefix}/{k}", v, i) for i, row in enumerate(rows) for k, v in row.items()]
    tracker.log_metrics(run_id, points + values)


def read_series(tracker: Tracker, run_id: str, prefix: str, points: int) -> list[dict]:
    """The rows ``log_series`` stored, read back by step."""
    rows = [{} for _ in range(points)]
    for name in tracker.run(run_id).data.metrics:
        if name.startswith(f"{prefix}/"):
            for m in tracker.metric_history(run_id, name):
                rows[m.step][name[len(prefix) + 1:]] = m.value
    return rows

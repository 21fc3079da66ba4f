"""``sddkit analyze RUN``: for chosen rounds of stored trajectories, re-dense, interpolate between the sparse and
the re-dense solution, and walk the 1-D loss landscape; each result is a run nested under its round run
(``sddkit.kind`` = redense / interpolation / landscape). One stored with the same settings is reused (``force``:
redone)."""
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

    def load_state(self, name: str) -> dict | None:  # older runs kept the init; a rewind past step 0 is kept
        path = f"state/{name}.pt"
        if path not in self.tracker.artifact_paths(self.run_id, "state"):
            return None
        return self.tracker.read_torch(self.run_id, path)

    def init_digest(self) -> str | None:
        return self.tracker.run(self.run_id).data.tags.get(INIT_DIGEST)

    def record_init_digest(self, digest: str) -> None:  # read-only: a run of older code that recorded none stays so
        pass


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
    """Analyse every trajectory ``selector`` names (each checked before any write); a row per (trajectory, round)."""
    plans = []
    for parent in selection.select(tracker, selector, experiment,
                                   hint="give a run name or ID from that list, or --experiment"):
        rounds = round_refs(tracker, parent)
        if not rounds:
            raise TrackingError(f"trajectory {parent.info.run_name} ({parent.info.run_id}) has no finished "
                                f"round yet; run it first")
        cfg = config.from_params(parent.data.params)
        chosen = chosen_rounds(parent, rounds, settings.rounds, cfg.analysis.interpolation_threshold)
        plans.append((parent, cfg, rounds, chosen))
    say(f"{sum(len(p[3]) for p in plans)} rounds of {len(plans)} trajectories: "
        + "; ".join(f"{p[0].info.run_name} rounds {', '.join(map(str, p[3]))}" for p in plans))
    out = []
    for parent, cfg, rounds, chosen in plans:
        say(f"{parent.info.run_name}: rebuilding its data, labels and init from the config")
        ctx = rebuild(tracker, root, parent, cfg, rounds)
        out += [analyze_round(tracker, ctx, rounds[r], settings, parent.info.run_name) for r in chosen]
    return out


def round_refs(tracker: Tracker, parent) -> dict[int, RoundRef]:
    refs = (RoundRef(parent.info.run_id, r) for r in tracker.round_runs(parent.info.run_id))
    return {ref.index: ref for ref in refs}


def rebuild(tracker: Tracker, root: Path, parent, cfg: config.Config, rounds: dict[int, RoundRef]):
    """The trajectory's data, labels (checked against the stored ones) and init, rebuilt from its config."""
    completed = [round_row(rounds[r].run) for r in sorted(rounds)]
    ctx = trajectory.setup(cfg, root, StoredTrajectory(tracker, parent.info.run_id, completed),
                           trajectory.Reporter(), None)
    check_labels(tracker, parent.info.run_id, ctx.noisy)
    return ctx


def check_labels(tracker: Tracker, run_id: str, noisy: torch.Tensor) -> None:
    """The rebuilt noisy labels must be the ones the trajectory trained on."""
    with tempfile.TemporaryDirectory() as tmp:
        local = tracker.download(run_id, LABELS, tmp)
        try:
            stored = torch.from_numpy(np.load(local))
        except (ValueError, TypeError, OSError, EOFError) as exc:  # np.load's ways of refusing a damaged file
            raise damaged(tracker, run_id, LABELS, f"corrupt ({exc.__class__.__name__})") from exc
    if not torch.equal(stored.long(), noisy.cpu().long()):
        raise TrackingError(f"run {run_id}: rebuilding the data and noise from its config gives other labels "
                            f"than the run trained on (dataset files or noise code changed); restore them")


def analyze_round(tracker: Tracker, ctx: trajectory.Context, ref: RoundRef, settings: Settings,
                  name: str = "") -> dict:
    masks, sparse = read_mask(tracker, ref.run_id), read_weights(tracker, ref.run_id)
    say(f"{name} round {ref.index}: re-dense")
    dense, redense_id = redense_solution(tracker, ctx, ref, masks, sparse, settings)
    say(f"{name} round {ref.index}: interpolation, sparse to re-dense")
    interpolation = interpolate(tracker, ctx, ref, sparse, dense, redense_id, settings)
    say(f"{name} round {ref.index}: loss landscape")
    summary = {"redense_test_acc": interpolation[-1]["test_acc"],
               "redense_train_acc_noisy": interpolation[-1]["train_acc_noisy"],
               "interpolation_max_train_loss": max(r["train_loss_noisy"] for r in interpolation),
               "sharpness": walk_landscape(tracker, ctx, ref, masks, sparse, settings)}
    log_on_round(tracker, ref, summary)
    row = round_row(ref.run)
    return {"name": name, "trajectory": ref.parent_id, "round": ref.index, "sparsity": row["sparsity"],
            "test_acc": row["test_acc"], **summary}


def log_on_round(tracker: Tracker, ref: RoundRef, values: dict[str, float]) -> None:
    """On the round run, and on the parent as a curve over rounds (step = round)."""
    for run_id in (ref.run_id, ref.parent_id):
        tracker.log_metrics(run_id, [(k, v, ref.index) for k, v in values.items()])


# ---------------------------------------------------------------- the three analyses

def redense_solution(tracker, ctx, ref: RoundRef, masks, sparse, settings: Settings):
    """The round's re-dense weights and their run: stored ones with the same settings, else trained now."""
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
    logged = [(f"epoch/{k}", v, row["epoch"]) for row in history for k, v in row.items() if k != "epoch"]
    run_id = store_child(tracker, ref, "redense", key, {"redense.epochs": epochs, "redense.lr": lr},
                         logged + [(k, v, 0) for k, v in metrics.items()], {"weights.pt": torch_bytes(weights)})
    return weights, run_id


def interpolate(tracker, ctx, ref: RoundRef, sparse, dense, redense_id: str, settings: Settings) -> list[dict]:
    """Metrics of (1 − α)·sparse + α·re-dense along α = 0 … 1."""
    alphas = landscape.alphas(settings.interpolation_step)
    key = f"redense={redense_id} step={settings.interpolation_step:g}"
    done = None if settings.force else stored_child(tracker, ref, "interpolation", key)
    if done is not None:
        rows = [{} for _ in alphas]  # read back as series_metrics logged them, by step
        for name in tracker.run(done).data.metrics:
            if name.startswith("interpolation/"):
                for m in tracker.metric_history(done, name):
                    rows[m.step][name.removeprefix("interpolation/")] = m.value
        return rows
    rows = [redense.evaluate(ctx, landscape.blend(sparse, dense, a)) for a in alphas]
    title = f"round {ref.index}: sparse (α = 0) → re-dense (α = 1)"
    store_child(tracker, ref, "interpolation", key,
                {"interpolation.step": settings.interpolation_step, "redense_run": redense_id},
                series_metrics("interpolation", "alpha", alphas, rows),
                {"interpolation.png": plots.line_png(alphas, rows, "α", title)})
    return rows


def walk_landscape(tracker, ctx, ref: RoundRef, masks, sparse, settings: Settings) -> float:
    """The sharpness of the train loss along sparse + t·d, d filter-normalised, t in [−1, 1]."""
    ts = landscape.grid(settings.landscape_points, settings.sharpness_radius)
    key = landscape_key(settings)
    done = None if settings.force else stored_child(tracker, ref, "landscape", key)
    if done is not None:
        return tracker.run(done).data.metrics["sharpness"]
    weights = {n: sparse[n] for n in models.prunable(ctx.model, [])}
    direction = landscape.filter_normalised_direction(weights, masks, seeds.generator(ctx.cfg.seed, "landscape",
                                                                                      ref.index))
    rows = [redense.evaluate(ctx, landscape.shifted(sparse, direction, t)) for t in ts]
    radius = settings.sharpness_radius
    sharp = landscape.sharpness(ts, [r["train_loss_noisy"] for r in rows], radius)
    title = f"round {ref.index}: 1-D loss landscape (filter-normalised direction), sharpness {sharp:.4g}"
    store_child(tracker, ref, "landscape", key, {"landscape.points": settings.landscape_points,
                                                 "landscape.sharpness_radius": radius},
                series_metrics("landscape", "t", ts, rows) + [("sharpness", sharp, 0)],
                {"landscape.png": plots.line_png(ts, rows, "t", title, (-radius, radius))})
    return sharp


def landscape_key(settings: Settings) -> str:
    return f"points={settings.landscape_points} radius={settings.sharpness_radius:g}"


def sharpness_curve(tracker: Tracker, root: Path, parent, settings: Settings) -> dict[int, float]:
    """The sharpness of every finished round of one stored trajectory: the landscape walk alone (no re-dense),
    logged as ``analyze`` logs it. Walks stored with the same settings are read back; the data is rebuilt only
    for the others."""
    refs, ctx, out = round_refs(tracker, parent), None, {}
    for index, ref in sorted(refs.items()):
        done = stored_child(tracker, ref, "landscape", landscape_key(settings))
        if done is not None:
            out[index] = tracker.run(done).data.metrics["sharpness"]
        else:
            if ctx is None:
                ctx = rebuild(tracker, root, parent, config.from_params(parent.data.params), refs)
            masks, sparse = read_mask(tracker, ref.run_id), read_weights(tracker, ref.run_id)
            out[index] = walk_landscape(tracker, ctx, ref, masks, sparse, settings)
        if ref.run.data.metrics.get("sharpness") != out[index]:
            log_on_round(tracker, ref, {"sharpness": out[index]})
    return out


# ---------------------------------------------------------------- nested runs

def stored_child(tracker: Tracker, ref: RoundRef, kind: str, key: str) -> str | None:
    """The newest finished analysis run of ``kind`` with settings ``key`` under the round run."""
    query = (f"tags.`mlflow.parentRunId` = {literal(ref.run_id)} and tags.`sddkit.kind` = {literal(kind)} "
             f"and tags.`sddkit.analysis_key` = {literal(key)} and attributes.status = 'FINISHED'")
    run = tracker.newest([ref.run.info.experiment_id], query)
    return run.info.run_id if run is not None else None


def store_child(tracker: Tracker, ref: RoundRef, kind: str, key: str, params: dict, metrics: list,
                files: dict[str, bytes]) -> str:
    """A run of ``kind`` under the round run, marked finished only once all is stored: only such is reused."""
    tags = {"mlflow.parentRunId": ref.run_id, "sddkit.kind": kind, "sddkit.round": str(ref.index),
            "sddkit.trajectory": ref.parent_id, "sddkit.round_run": ref.run_id, "sddkit.analysis_key": key}
    run_id = tracker.create_run(ref.run.info.experiment_id, tags, f"{ref.run.info.run_name}/{kind}", params)
    tracker.log_metrics(run_id, metrics)
    tracker.log_files(run_id, files)
    tracker.set_status(run_id, "FINISHED")
    return run_id


def series_metrics(prefix: str, x_name: str, xs: list[float], rows: list[dict]) -> list[tuple]:
    """``<prefix>/<x_name>`` and ``<prefix>/<metric>`` with step = the point's index."""
    return [(f"{prefix}/{x_name}", x, i) for i, x in enumerate(xs)] + \
        [(f"{prefix}/{k}", v, i) for i, row in enumerate(rows) for k, v in row.items()]

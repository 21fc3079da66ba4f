"""What `sddkit ls` lists: a row per trajectory. The runs come through MLflow (``api``) or, from a local sqlite
store, by SQL (``store_sql``) without importing MLflow, whose import alone costs as much as torch's."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Callable

from sddkit import config, lease, relocation, store_sql
from sddkit.fingerprint import code_hash, current_identity

LANDMARKS = ("dense", "minimum", "peak", "last")
TRAJECTORY, ROUND = "trajectory", "round"  # the ``sddkit.kind`` tag of a trajectory's run and of a round's
PARENT_METRICS = ("sparsity", "remaining", "test_acc", "test_loss", "train_acc_noisy", "train_acc_clean",
                  "memorized", "learning_distance", "distance_from_start", "round_seconds")


def from_sqlite(db: Path, experiment: str) -> tuple[list[dict], list[str]] | None:
    """The listing of a local sqlite store; None where it must be read through MLflow: a schema SQL cannot vouch
    for, or a moved or served project's store (MLflow's path relocates it, or says why it cannot)."""
    found = store_sql.read_listing(db, experiment) if relocation.in_place(db) else None
    if found is None:
        return None
    return rows(found.runs, found.finished_rounds,
                lambda run: lease.holder_in(found.experiment_tags, run) is not None)


def rows(runs: list, finished: Counter, leased: Callable) -> tuple[list[dict], list[str]]:
    """A row per trajectory run (newest first), and the params whose values differ between them. ``finished``:
    run ID -> its finished rounds; ``leased(run)``: whether a live process holds the run's lease."""
    differ = differing_keys([r.data.params for r in runs], skip=("seed", "tracking.run_name"))
    listed = []
    for run in runs:
        params, summary = run.data.params, stored_summary(run)
        rounds = params.get("prune.rounds")
        # A RUNNING run nobody trains (its owner died before marking it KILLED: kill -9, a lost node).
        status = run.info.status if run.info.status != "RUNNING" or leased(run) else "interrupted"
        listed.append({"name": trajectory_name(run), "run_name": run.info.run_name, "run_id": run.info.run_id,
                       **{k: params.get(k) for k in differ}, "seed": params.get("seed"), "status": status,
                       "code": code_state(run), "rounds_done": finished[run.info.run_id],
                       "rounds_total": int(rounds) + 1 if rounds is not None else None,
                       **{f"{n}_test_acc": summary.get(f"{n}_test_acc") for n in LANDMARKS}})
    return listed, differ


def code_state(run) -> str:
    """``this code``, ``adopted (verified)`` (``sddkit adopt``), or ``other <fingerprint>`` (``old identity``:
    hashed by an older scheme)."""
    tags = run.data.tags
    code, adopted = tags.get("sddkit.code_hash", ""), tags.get("sddkit.adopted")
    if current_identity(run) and code == code_hash():
        return f"adopted ({adopted})" if adopted else "this code"
    return f"other {code[:8] or '?'}" + ("" if current_identity(run) else " (old identity)")


def trajectory_name(run) -> str:
    """A trajectory run's name as given (``sddkit.name``; runs of older sddkit: their run name)."""
    return run.data.tags.get("sddkit.name") or run.info.run_name


def differing_keys(params: list[dict[str, str]], skip=()) -> list[str]:
    """The identity params (but ``skip``) whose value differs between ``params``, sorted; with the retrain mode
    differing, the other retrain.* settings follow from it and are left out, and masks_from where no run is a
    reinit (the only mode that reads it)."""
    ignored = config.NOT_IDENTITY | set(skip)
    keys = sorted(k for k in set().union(*params) if k not in ignored and len({p.get(k) for p in params}) > 1)
    if "retrain.mode" in keys:
        keys = [k for k in keys if k == "retrain.mode" or not k.startswith("retrain.")]
    if not any(p.get("retrain.mode") == "reinit" for p in params):
        keys = [k for k in keys if k != "retrain.masks_from"]
    return keys


def stored_summary(run) -> dict[str, float]:
    """A finished trajectory's one-value metrics under their ``results.summary`` / ``analysis.phase_metrics``
    names, read from ``summary/…`` and ``phase/…`` (or the unprefixed names of older sddkit's runs)."""
    out = {}
    for key, value in run.data.metrics.items():
        if key.startswith("summary/"):
            out[key.removeprefix("summary/")] = value
        elif key.startswith("phase/"):
            out[f"phase_{key.removeprefix('phase/')}"] = value
    if out:
        return out
    curve = {*PARENT_METRICS, "noise_realised_rate"}
    return {k: v for k, v in run.data.metrics.items() if k not in curve and "/" not in k}

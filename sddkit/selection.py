"""Which stored trajectories a command means, for `ls`, compare, the API, analyze and adopt: a run ID, a name (run
name or ``sddkit.name``), a ``--results`` folder (its run.json) or ``key=value``. Names are searched with MLflow
filter strings; ``where`` conditions are matched in Python (values as YAML, 0.4 == 0.40)."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import yaml

from sddkit import config
from sddkit.listing import trajectory_name
from sddkit.results import RUN_FILE
from sddkit.tracking import ROUND, RUN_ID, SAFE_LITERAL, TRAJECTORY, Tracker, TrackingError, literal, param_text


def by_name(tracker: Tracker, selector: str, experiment: str) -> list:
    """Trajectories whose run ID, run name or ``sddkit.name`` is ``selector``, newest first."""
    if not SAFE_LITERAL.fullmatch(selector):  # it cannot be spliced into a filter: matched here instead
        return [r for r in tracker.trajectories(experiment)
                if selector in (r.info.run_id, r.info.run_name, r.data.tags.get("sddkit.name"))]
    value = literal(selector)
    fields = ["tags.`sddkit.name`", "attributes.run_name"] + (["attributes.run_id"] if RUN_ID.fullmatch(selector)
                                                             else [])
    found = {r.info.run_id: r for field in fields for r in tracker.trajectories(experiment, f"{field} = {value}")}
    return sorted(found.values(), key=lambda r: r.info.start_time, reverse=True)


def select(tracker: Tracker, selector: str, experiment: str, where=(), heading: str = "", finished: bool = True,
           hint: str = "", names_only: bool = False) -> list:
    """The trajectories ``selector`` names where every ``where`` (``key=value``) holds, newest first;
    ``names_only``: a run ID or name only (the API). ``heading`` (``--runs x``) starts each error, ``hint`` ends
    the one for an unknown name."""
    prefix = f"{heading}: " if heading else ""
    check_filters(where)
    if not names_only and (Path(selector) / RUN_FILE).is_file():
        found = [run_from_folder(tracker, Path(selector))]
    elif not names_only and "=" in selector:
        found = [r for r in tracker.trajectories(experiment) if matches(r, selector)]
        if not found:
            raise unknown(tracker, experiment, f"{prefix}no trajectory with that tag or param")
    else:
        found = by_name(tracker, selector, experiment)
        if not found:
            raise unknown(tracker, experiment, f"{prefix}no trajectory named {selector!r}", hint)
    kept = [r for r in found if all(matches(r, w) for w in where)]
    if not kept:
        raise TrackingError(f"{prefix}{len(found)} trajectories match, but none of them has {' and '.join(where)}")
    what = f"{prefix}no trajectory" + (f" with {' and '.join(where)}" if where else
                                       "" if heading else f" named {selector!r}")
    return finished_only(kept, what) if finished else kept


def unknown(tracker: Tracker, experiment: str, what: str, hint: str = "") -> TrackingError:
    """``what``, then the names the experiment does hold."""
    names = sorted({trajectory_name(r) for r in tracker.trajectories(experiment)})
    if not names:
        return TrackingError(f"{what}; experiment {experiment!r} in {tracker.uri} holds no trajectories yet; "
                             f"run `dvc repro` or `sddkit run` first (or name another experiment)")
    return TrackingError(f"{what} in experiment {experiment!r} of {tracker.uri}; names there: {', '.join(names)}"
                         + (f"; {hint}" if hint else ""))


def finished_only(runs: list, what: str) -> list:
    """The finished ones of ``runs``, or an error saying how the others ended."""
    finished = [r for r in runs if r.info.status == "FINISHED"]
    if not finished:
        statuses = ", ".join(sorted({r.info.status for r in runs}))
        raise TrackingError(f"{what} has finished ({len(runs)} found: {statuses}); rerun its `sddkit run` to "
                            f"finish it")
    return finished


def run_from_folder(tracker: Tracker, folder: Path):
    """The trajectory a ``--results`` folder's run.json names."""
    pointer = folder / RUN_FILE
    try:
        run_id = json.loads(pointer.read_text())["run_id"]
    except (ValueError, KeyError, TypeError, OSError) as exc:  # TypeError: valid JSON, but not an object
        raise TrackingError(f"--runs {folder}: {pointer} is damaged ({exc.__class__.__name__}: {exc}); rerun "
                            f"the stage that wrote it (`dvc repro`)") from exc
    run = tracker.find_run(run_id)
    if run is None:
        raise TrackingError(f"--runs {folder}: its {RUN_FILE} names run {run_id}, which is not in the store "
                            f"{tracker.uri}; rerun the stage that wrote it (`dvc repro`)")
    if run.data.tags.get("sddkit.kind") != TRAJECTORY:
        raise TrackingError(f"--runs {folder}: run {run_id} is not an sddkit trajectory")
    return run


# ---------------------------------------------------------------- key=value conditions

def check_filters(where) -> None:
    for assignment in where:
        key, equals, _ = assignment.partition("=")
        if not equals or not key.strip():
            raise TrackingError(f"--where {assignment}: give KEY=VALUE (a tag or param and its value), "
                                f"e.g. --where noise.ratio=0.4")


def where_list(where: dict | list[str] | str | None) -> list[str]:
    """The API's dict, list or text as ``key=value`` texts."""
    if where is None:
        return []
    if isinstance(where, str):
        return [where]
    if isinstance(where, dict):
        return [f"{k}={param_text(v)}" for k, v in where.items()]
    return list(where)


def matches(run, assignment: str) -> bool:
    """``key=value`` against the run's tags, then its params."""
    key, _, value = assignment.partition("=")
    stored = stored_value(run, key.strip())
    return stored is not None and (stored == value.strip() or as_yaml(stored) == as_yaml(value.strip()))


def stored_value(run, key: str) -> str | None:
    return run.data.tags.get(key, run.data.params.get(key))


def as_yaml(text: str):
    try:
        return config.read_yaml(text)
    except yaml.YAMLError:  # compared as text
        return text


def finished_round_counts(tracker: Tracker, runs: list) -> Counter:
    """Trajectory run ID -> its finished round runs, from one search of the experiment (not one per trajectory),
    in pages of 200 of which only the count is kept."""
    experiments = sorted({r.info.experiment_id for r in runs})
    if not experiments:
        return Counter()
    query = f"tags.`sddkit.kind` = {literal(ROUND)} and attributes.status = {literal('FINISHED')}"
    return Counter(r.data.tags.get("mlflow.parentRunId") for page in tracker.pages(experiments, query, size=200)
                   for r in page)

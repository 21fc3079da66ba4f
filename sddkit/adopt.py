"""``sddkit adopt RUN``: keep a finished trajectory made by other code (an earlier sddkit, or the identity
scheme before this one) as this code's run of its config, once a replay of its first epoch shows that this code
computes the same numbers on this machine."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from sddkit import config, selection
from sddkit.fingerprint import IDENTITY_TAG, IDENTITY_VERSION, code_hash, current_identity
from sddkit.tracking import Tracker, TrackingError

ADOPTED = "sddkit.adopted"  # verified | unverified; the run's former identity under sddkit.adopted.from_*


@dataclass
class Adoption:
    run_id: str
    former: dict[str, str]  # the identity tags the run had
    verified: bool
    compared: list[str]  # the per-epoch metrics found equal in the replay
    replay_seconds: float


def resolve(tracker: Tracker, selector: str, experiment: str):
    """The one finished trajectory ``selector`` (run ID or name) names; several is an error, not a guess."""
    found = [r for r in selection.by_name(tracker, selector, experiment) if r.info.status == "FINISHED"]
    if not found:
        raise TrackingError(f"adopt {selector}: no finished trajectory with that run ID or name in experiment "
                            f"{experiment!r} (`sddkit ls` lists them)")
    if len(found) > 1:
        ids = ", ".join(r.info.run_id for r in found[:5]) + (", …" if len(found) > 5 else "")
        raise TrackingError(f"adopt {selector}: {len(found)} finished trajectories have that name ({ids}); "
                            f"adopt one at a time by run ID")
    return found[0]


def adopt(tracker: Tracker, run, root: Path, verify: bool = True) -> Adoption:
    """Retag ``run`` with this code's identity of its config, once the replay (``verify``) matches."""
    cfg = config.from_params(run.data.params)
    identity = {"sddkit.config_hash": cfg.identity_hash(), "sddkit.code_hash": code_hash(),
                "sddkit.group": cfg.group_hash(), IDENTITY_TAG: IDENTITY_VERSION}
    tags, run_id = run.data.tags, run.info.run_id
    if current_identity(run) and all(tags.get(k) == v for k, v in identity.items()):
        raise TrackingError(f"adopt: run {run_id} is this code's run of its config already: nothing to adopt")
    taken = tracker.find_trajectory(cfg, identity["sddkit.code_hash"])
    if taken is not None and taken.info.run_id != run_id:
        raise TrackingError(f"adopt: this code has a run of that config already ({taken.info.run_id}, "
                            f"{taken.info.status}); it is the one found for it, so adopting {run_id} would hide "
                            f"nothing but itself")
    compared, seconds = (replay_check(tracker, run, cfg, root) if verify else ([], 0.0))
    former = {k: tags.get(k, "none") for k in identity}
    tracker.log(run_id, tags={**identity, ADOPTED: "verified" if verify else "unverified",
                              **{f"{ADOPTED}.from_{k.rpartition('.')[2]}": v for k, v in former.items()},
                              f"{ADOPTED}.replay": (f"round 0 epoch 0: {len(compared)} metrics equal"
                                                    if verify else "not replayed (--no-verify)")})
    return Adoption(run_id, former, verify, compared, seconds)


def replay_check(tracker: Tracker, run, cfg: config.Config, root: Path) -> tuple[list[str], float]:
    """Every per-epoch metric the run logged for round 0's first epoch, against this code's replay of it:
    (the metrics compared, the replay's seconds), or TrackingError naming what differs."""
    from sddkit import trajectory  # torch: only where a replay runs

    rounds = tracker.round_runs(run.info.run_id)
    if not rounds or rounds[0].data.tags.get("sddkit.round") != "0":
        raise TrackingError(f"adopt: run {run.info.run_id} has no finished round 0 to replay; adopt it with "
                            f"--no-verify, or rerun its config with this code")
    stored = {}
    for key in (k for k in rounds[0].data.metrics if k.startswith("epoch/")):
        at = [m.value for m in tracker.metric_history(rounds[0].info.run_id, key) if m.step == 0]
        if at:
            stored[key.removeprefix("epoch/")] = at[-1]
    started = time.perf_counter()
    replayed = trajectory.replay_first_epoch(cfg, root)
    seconds = time.perf_counter() - started
    differ = [f"{k}: stored {v!r}, replayed {replayed.get(k)!r}" for k, v in sorted(stored.items())
              if k not in replayed or float(replayed[k]) != v]
    if not stored or differ:
        shown = "; ".join(differ[:3]) + (f" (+{len(differ) - 3} more)" if len(differ) > 3 else "")
        raise TrackingError(f"adopt: this code does not replay run {run.info.run_id}: round 0 epoch 0 differs "
                            f"({shown or 'no per-epoch metrics stored'}); nothing adopted. Rerun the config with "
                            f"this code, or keep the run under its own code (--no-verify adopts it unchecked)")
    return sorted(stored), seconds

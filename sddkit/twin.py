"""reinit's mask source (``trajectory.MaskSource``): round r's mask is round r's of its lottery trajectory, the exact
twin (this config in lottery mode, this code) or the run ``retrain.masks_from`` names. The engine sees only the
protocol; the twin is read through ``tracking``, and followed round by round while it trains."""
from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

from sddkit import lease
from sddkit.config import Config
from sddkit.tracking import INIT_DIGEST, RUN_ID, TRAJECTORY, Tracker, TrackingError, literal, param_text, read_mask

if TYPE_CHECKING:
    import torch

# How often a reinit looks for its twin's next round (a look costs ~10 ms of CPU; each round it waits, it starts half a
# poll late on average, and a reinit late is a pipeline late), and how long a twin with no live owner (failed,
# killed) is given to be resumed before the reinit stops.
TWIN_POLL_S = 0.25
TWIN_GRACE_S = 90.0
# The keys that decide which weights a mask covers, their shapes and how sparse each round is.
MASK_KEYS = ("model.arch", "data.name", "data.downsample", "prune.rate", "prune.scope", "prune.criterion",
             "prune.exclude")


class LotteryMasks:
    """The twin stores each round's mask as that round starts, so the reinit trains round k beside its round k;
    ``follow`` (``--wait``, sweep cells) waits for a twin still training, else every round must be there now."""

    def __init__(self, tracker: Tracker, cfg: Config, code: str, follow: bool = False):
        chosen = cfg.retrain.masks_from
        self.tracker, self.code, self.follow = tracker, code, follow
        self.twin_hash = lottery_twin(cfg).identity_hash()
        self.heading = f"retrain.masks_from = {chosen!r}" if chosen else "reinit's lottery twin"
        self.source = explicit_source(tracker, cfg) if chosen and RUN_ID.fullmatch(chosen) else self.twin_run(cfg)
        self.packed: dict[int, bytes] = {}
        self.rounds: dict[int, object] = {}
        for r in range(1, cfg.prune.rounds + 1):  # those there now are checked before training
            run = self.round_run(r)
            if run is None:
                if not follow:
                    raise TrackingError(self.missing(r))
                break
            self.keep(r, run)

    # ---- trajectory.MaskSource
    def masks(self, round_index: int) -> dict[str, torch.Tensor]:
        if round_index not in self.packed:
            self.wait_for(round_index, lambda text: None)
        return read_mask(self.tracker, self.rounds[round_index].info.run_id, self.packed[round_index])

    def wait_for(self, round_index: int, waiting) -> bool:
        """Block until the source has round ``round_index``'s mask (round 0: its finished round 0), telling
        ``waiting(text)`` once if it has to wait; True if it waited. A source with no live owner for
        ``TWIN_GRACE_S`` stops it with a TrackingError saying what to resume."""
        if round_index in self.packed or (round_index == 0 and not self.exact()):
            return False
        told, orphaned_since = False, None
        while True:
            run = self.round_run(round_index)
            if run is not None:
                if round_index > 0:
                    self.keep(round_index, run)
                else:
                    self.rounds[0] = run
                return told
            if not self.follow:
                raise TrackingError(self.missing(round_index))
            if self.owner_alive():
                orphaned_since = None
            else:
                orphaned_since = orphaned_since or time.monotonic()
                if time.monotonic() - orphaned_since > TWIN_GRACE_S:
                    raise TrackingError(self.missing(round_index, waited=True))
            if not told:
                waiting(f"waiting for lottery round {round_index} (run {self.source.info.run_id})")
                told = True
            time.sleep(TWIN_POLL_S)

    def same_round_zero(self, init_digest: str):
        """The source's round 0 run when it is the exact twin's with this init: then it is this trajectory's
        round 0, bit for bit. Else None."""
        if not self.exact():
            return None
        if 0 not in self.rounds:
            self.wait_for(0, lambda text: None)
        tags = self.tracker.run(self.source.info.run_id).data.tags  # the digest comes after the run
        return self.rounds.get(0) if tags.get(INIT_DIGEST) in (init_digest, None) else None

    # ---- the source's rounds
    def exact(self) -> bool:
        tags = self.source.data.tags
        return tags.get("sddkit.config_hash") == self.twin_hash and tags.get("sddkit.code_hash") == self.code

    def round_run(self, round_index: int):
        """The source's round run holding round ``round_index``'s mask: the finished one, else the one under way
        once it has stored its mask (round 0: finished only). None when there is none yet."""
        runs = [r for r in self.tracker.round_runs(self.source.info.run_id, finished_only=False,
                                                   experiment_id=self.source.info.experiment_id,
                                                   round_index=round_index)
                if "sddkit.replaced" not in r.data.tags]
        finished = [r for r in runs if r.info.status == "FINISHED"]
        if finished or round_index == 0:
            return finished[-1] if finished else None
        for run in (r for r in runs if r.info.status == "RUNNING"):
            if "mask.npz" in self.tracker.artifact_paths(run.info.run_id):
                return run
        return None

    def keep(self, round_index: int, run) -> None:
        """Read round ``round_index``'s mask now and check it (a damaged one stops the run here)."""
        content = self.tracker.read_bytes(run.info.run_id, "mask.npz")
        read_mask(self.tracker, run.info.run_id, content)
        self.rounds[round_index], self.packed[round_index] = run, content

    def owner_alive(self) -> bool:
        """Whether the source is being trained now: RUNNING, with a live lease holder."""
        run = self.tracker.run(self.source.info.run_id)
        return run.info.status == "RUNNING" and lease.live_holder(self.tracker, run.info.experiment_id,
                                                                  self.twin_hash, self.code) is not None

    def missing(self, round_index: int, waited: bool = False) -> str:
        """The one line for a source without round ``round_index``'s mask: which round, and what to do."""
        run = self.tracker.run(self.source.info.run_id)
        run_id, status = run.info.run_id, run.info.status
        what = f"finished round {round_index}" if round_index == 0 else f"round-{round_index} mask"
        if status == "FINISHED":
            return (f"{self.heading}: run {run_id} has no {what}; finish that trajectory (its `sddkit run`, "
                    f"--redo-from {round_index}) or lower prune.rounds")
        if self.owner_alive():
            return (f"{self.heading}: run {run_id} has no {what} yet (it is still training); rerun with --wait to "
                    f"follow it round by round, or once it has finished")
        stopped = f"waited {TWIN_GRACE_S:.0f} s for it to be resumed; " if waited else ""
        return (f"{self.heading}: run {run_id} stopped ({status}, no live process) before its {what}; {stopped}"
                f"resume it (its `sddkit run`, same settings), then rerun this command: it continues after its "
                f"last finished round")

    def twin_run(self, cfg: Config):
        """The exact twin's run; while following, one about to start (its owner holds its lease, or the grace
        has not passed) is waited for."""
        waited_since = time.monotonic()
        while True:
            try:
                return lottery_twin_run(self.tracker, cfg, self.code, unfinished=True)
            except TrackingError:
                if not self.follow:
                    raise
                exp = self.tracker.experiment_id(cfg.tracking.experiment)
                if lease.live_holder(self.tracker, exp, self.twin_hash, self.code) is not None:
                    waited_since = time.monotonic()
                elif time.monotonic() - waited_since > TWIN_GRACE_S:
                    raise
                time.sleep(TWIN_POLL_S)


def lottery_twin(cfg: Config) -> Config:
    """The lottery trajectory a reinit config takes its masks from: the same config in lottery mode."""
    return dataclasses.replace(cfg, retrain=dataclasses.replace(cfg.retrain, mode="lottery", masks_from=None))


def lottery_twin_run(tracker: Tracker, cfg: Config, code: str, unfinished: bool = False):
    """The newest finished run of this config in lottery mode by this code (named ``masks_from``, if set);
    ``unfinished``: when none has finished, the newest one under way (or stopped: it may be resumed)."""
    twin = lottery_twin(cfg).identity_hash()
    query = f"tags.`sddkit.config_hash` = {literal(twin)} and tags.`sddkit.code_hash` = {literal(code)}"
    name = cfg.retrain.masks_from
    runs = [r for r in tracker.trajectories(cfg.tracking.experiment, query)
            if name in (None, r.info.run_name, r.data.tags.get("sddkit.name"))]
    named = [r for r in runs if r.info.status == "FINISHED"] or (runs[:1] if unfinished else [])
    if not named:
        which = f"named {name!r} " if name else ""
        raise TrackingError(f"reinit: no {'' if unfinished else 'finished '}lottery twin {which}in experiment "
                            f"{cfg.tracking.experiment!r} (this config in lottery mode: config {twin}, code {code}); "
                            f"run it first or beside it (`sddkit run --set retrain.mode=lottery` with the same "
                            f"settings; then this with --wait follows it round by round), or set "
                            f"retrain.masks_from to a lottery run ID")
    return named[0]


def explicit_source(tracker: Tracker, cfg: Config):
    """The run ``retrain.masks_from`` names by ID, after checking its masks fit this config."""
    run_id = cfg.retrain.masks_from
    run = tracker.find_run(run_id)
    if run is None:
        raise TrackingError(f"retrain.masks_from = {run_id!r}: no such run in {tracker.uri}")
    if run.data.tags.get("sddkit.kind") != TRAJECTORY or run.data.params.get("retrain.mode") == "reinit":
        raise TrackingError(f"retrain.masks_from = {run_id!r}: not a pruned trajectory of sddkit (kind "
                            f"{run.data.tags.get('sddkit.kind')}, mode {run.data.params.get('retrain.mode')})")
    ours = {k: v for k, v in cfg.flat().items() if k in MASK_KEYS}
    differ = [f"{k}: {run.data.params.get(k)} there, {param_text(v)} here" for k, v in ours.items()
              if run.data.params.get(k) != param_text(v)]
    if differ:
        raise TrackingError(f"retrain.masks_from = {run_id!r}: its masks do not fit this config "
                            f"({'; '.join(differ)}); point it at a lottery run of the same model, data and "
                            f"pruning settings")
    return run

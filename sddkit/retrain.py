"""The retraining modes as one table (where a round's weights start, which schedule it runs, where its mask
comes from): the engine reads the row; there is no runner per mode."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sddkit.config import Config, TrainConfig


@dataclass(frozen=True)
class Mode:
    start: str       # "rewind": weights saved at the rewind step; "previous": round k-1's final; "fresh": new init
    start_step: str  # "rewind": train steps k…T of the schedule (k = the rewind step); "zero": steps 0…T
    schedule: str    # "full": train.*; "finetune": constant retrain.finetune_lr for retrain.finetune_epochs
    masks: str       # "iterative": prune round k-1's final weights; "oneshot": prune the dense model's;
                     # "external": the masks of another (lottery) trajectory, round by round


# Start steps as in the paper's code: a level restarted from the rewind point trains k…T, and so does its
# random-reinit branch (a fresh init with the level's mask); modes that keep training or start from
# scratch run the whole schedule.
MODES = {
    "lottery": Mode(start="rewind", start_step="rewind", schedule="full", masks="iterative"),
    "finetune": Mode(start="previous", start_step="zero", schedule="finetune", masks="iterative"),
    "lr_rewind": Mode(start="previous", start_step="zero", schedule="full", masks="iterative"),
    "scratch": Mode(start="fresh", start_step="zero", schedule="full", masks="iterative"),
    "reinit": Mode(start="fresh", start_step="rewind", schedule="full", masks="external"),
    "oneshot": Mode(start="rewind", start_step="rewind", schedule="full", masks="oneshot"),
}


def schedule(cfg: Config, round_index: int) -> TrainConfig:
    """Round 0 is always the dense run on the full schedule."""
    if round_index == 0 or MODES[cfg.retrain.mode].schedule == "full":
        return cfg.train
    epochs = cfg.retrain.finetune_epochs or cfg.train.epochs
    return dataclasses.replace(cfg.train, lr=cfg.retrain.finetune_lr, schedule="constant", epochs=epochs)


def rewind_iteration(cfg: Config, steps_per_epoch: int) -> int:
    unit = steps_per_epoch if cfg.retrain.rewind_unit == "epochs" else 1
    return cfg.retrain.rewind_step * unit


def start_step(cfg: Config, round_index: int, rewind_at: int) -> int:
    """The step a round starts at (round 0: 0, its optimizer restarting at ``rewind_at``, the rewind step)."""
    if round_index == 0 or MODES[cfg.retrain.mode].start_step == "zero":
        return 0
    return rewind_at


def fresh_optimizer_at(round_index: int, rewind_at: int) -> int | None:
    """The paper's code pretrains the dense net to the rewind step, then trains on from there with a fresh
    optimizer (its level 0 also runs k…T): round 0's optimizer restarts at the rewind point."""
    return rewind_at if round_index == 0 and rewind_at > 0 else None

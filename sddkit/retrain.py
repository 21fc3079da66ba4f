"""The retraining modes as one table: where a round's weights start, which schedule it runs, and where
its mask comes from. The trajectory engine reads the row; there is no runner per mode.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sddkit.config import Config, TrainConfig


@dataclass(frozen=True)
class Mode:
    start: str     # "rewind": weights saved at the rewind step; "previous": round k-1's final; "fresh": new init
    schedule: str  # "full": train.*; "finetune": constant retrain.finetune_lr for retrain.finetune_epochs
    masks: str     # "iterative": prune round k-1's final weights; "oneshot": prune the dense model's;
                   # "external": the masks of another (lottery) trajectory, round by round


MODES = {
    "lottery": Mode(start="rewind", schedule="full", masks="iterative"),
    "finetune": Mode(start="previous", schedule="finetune", masks="iterative"),
    "lr_rewind": Mode(start="previous", schedule="full", masks="iterative"),
    "scratch": Mode(start="fresh", schedule="full", masks="iterative"),
    "reinit": Mode(start="fresh", schedule="full", masks="external"),
    "oneshot": Mode(start="rewind", schedule="full", masks="oneshot"),
}


def schedule(cfg: Config, round_index: int) -> TrainConfig:
    """Round 0 is always the dense run on the full schedule."""
    if round_index == 0 or MODES[cfg.retrain.mode].schedule == "full":
        return cfg.train
    epochs = cfg.retrain.finetune_epochs or cfg.train.epochs
    return dataclasses.replace(cfg.train, lr=cfg.retrain.finetune_lr, schedule="constant", epochs=epochs)


def rewind_iteration(cfg: Config, steps_per_epoch: int) -> int:
    """The rewind point in optimizer steps."""
    unit = steps_per_epoch if cfg.retrain.rewind_unit == "epochs" else 1
    return cfg.retrain.rewind_step * unit

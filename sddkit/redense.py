"""Re-dense (the paper's App. A.4): train *all* weights of a round's sparse solution again, unmasked, at a
constant lr, on the engine's ``Context``: a stored trajectory is rebuilt by the code that trained it."""
from __future__ import annotations

import dataclasses

from sddkit import pruning, retrain, train, trajectory
from sddkit.trajectory import Context, State


def default_epochs(ctx: Context, round_index: int) -> int:
    return retrain.schedule(ctx.cfg, round_index).epochs


def default_lr(ctx: Context, round_index: int) -> float:
    """The lr of the round's last step (the paper re-trains "at the final lr")."""
    schedule = retrain.schedule(ctx.cfg, round_index)
    per_epoch = train.steps_per_epoch(len(ctx.noisy), schedule.batch_size)
    last_step = max(0, schedule.epochs * per_epoch - 1)
    return schedule.lr * train.lr_factor(schedule, last_step, per_epoch)


def redense(ctx: Context, sparse: State, masks: pruning.Masks, round_index: int, epochs: int,
            lr: float) -> tuple[State, list[dict]]:
    """Train every weight of ``sparse`` (pruned ones from 0) for ``epochs`` at constant ``lr``, otherwise as the
    round trained: its optimizer, batch size and generators."""
    schedule = dataclasses.replace(retrain.schedule(ctx.cfg, round_index), lr=lr, epochs=epochs,
                                   schedule="constant", milestones=[], warmup_epochs=0)
    ctx.model.load_state_dict(sparse)
    pruning.MaskApplier(dict(ctx.model.named_parameters()), masks)()  # pruned weights start at exactly 0
    gens = trajectory.round_generators(ctx.cfg, round_index, ctx.splits.x_train.device)
    history = train.fit(ctx.model, ctx.splits, ctx.noisy, schedule, gens,
                        on_epoch=lambda e, row: trajectory.epoch_metrics(ctx, round_index, row, epochs))
    return trajectory.snapshot(ctx.model), history


def evaluate(ctx: Context, state: State) -> dict[str, float]:
    """The round metrics of ``state`` in fp32: interpolation and the landscape read small differences."""
    ctx.model.load_state_dict(state)
    return train.evaluate_round(ctx.model, ctx.splits, ctx.noisy, ctx.cfg.train, ctx.train_idx,
                                mixed_precision=False)

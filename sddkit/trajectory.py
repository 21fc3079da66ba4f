"""The one trajectory engine: dense training, then R rounds of prune → restart → retrain → evaluate.

The mode is a row of ``retrain.MODES``; rounds persist through a ``Store`` (never MLflow here). Each round draws
from generators derived from (seed, round), so a resumed trajectory ends bit-identical on the same CPU machine.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch
from torch import nn

from sddkit import analysis, checkpoint, data, models, noise, pruning, retrain, seeds, train
from sddkit.config import Config, ConfigError

State = dict[str, torch.Tensor]


class Store(Protocol):
    """Where a trajectory's rounds are kept; ``runs.TrajectoryRun`` is the real one.

    Nothing that can be re-derived from (seed, round) is stored: the init (only its digest, to check that a
    rebuilt one is the same), a rewind state at step 0 (the init), any round's start weights."""

    completed: list[dict]  # the metric rows of the rounds already done, in order

    def log_labels(self, noisy: torch.Tensor, realised_rate: float) -> None: ...
    def save_state(self, name: str, state: State) -> None: ...
    def load_state(self, name: str) -> State | None: ...  # None when absent or unreadable: rebuilt
    def init_digest(self) -> str | None: ...  # the digest recorded when the trajectory started, or None
    def record_init_digest(self, digest: str) -> None: ...
    def load_round(self, round_index: int) -> tuple[pruning.Masks, State]: ...
    def start_round(self, round_index: int, sparsity_target: float) -> None: ...  # before the round's work
    def publish_mask(self, round_index: int, masks: pruning.Masks) -> None: ...  # once pruned, before training
    def set_state(self, text: str | None) -> None: ...  # what it waits for (None: training again)
    def log_round(self, round_index: int, metrics: dict, history: list[dict], masks: pruning.Masks,
                  weights: State) -> None: ...
    def adopt_round(self, round_index: int, source: object) -> dict: ...  # a copy of an identical round; metrics


class MaskSource(Protocol):
    """Where a mode whose masks are "external" (reinit) takes them; ``twin.LotteryMasks`` is the real one."""

    def masks(self, round_index: int) -> pruning.Masks: ...
    def wait_for(self, round_index: int, waiting: Callable[[str], None]) -> bool: ...
    """Block until round ``round_index``'s mask is there (round 0: the source's finished round 0), telling
    ``waiting`` once if it must wait: a twin still training is followed round by round. True if it waited."""
    def same_round_zero(self, init_digest: str) -> object | None: ...
    """The source's round 0 when it is this trajectory's round 0 (same config but the mode, same code, same
    init): a handle for ``Store.adopt_round``. Else None, and round 0 is trained."""


class InitMismatch(RuntimeError):
    """The init rebuilt from the seed is not the one the trajectory started from (other torch or CPU)."""


class Reporter:
    """Progress hooks (the CLI draws them); the base class stays silent."""

    def round_started(self, round_index: int, rounds: int, sparsity: float, epochs: int) -> None: ...
    def waiting(self, round_index: int, text: str) -> None: ...  # before the round: its masks are not there yet
    def epoch_done(self, round_index: int, row: dict) -> None: ...
    def round_done(self, round_index: int, metrics: dict) -> None: ...
    def waiting_for_owner(self, owner: str) -> None: ...  # another process trains this trajectory: its lease


@dataclass
class Inputs:
    """What a trajectory is built from, loaded before its run exists (a bad dataset or layer name fails here)."""
    splits: data.Splits
    noisy: torch.Tensor
    model: nn.Module
    names: list[str]  # the prunable weights
    train_idx: torch.Tensor  # the fixed subset train accuracy is measured on


@dataclass
class Context(Inputs):
    """The inputs and everything else a round needs that does not change between rounds."""
    cfg: Config
    init: State
    rewind: State | None = None
    dense_final: State | None = None
    external: MaskSource | None = None
    reporter: Reporter = field(default_factory=Reporter)
    init_digest: str = ""  # checkpoint.digest of ``init``, hashed once


def run(cfg: Config, root: Path, store: Store, reporter: Reporter | None = None,
        external: MaskSource | None = None, inputs: Inputs | None = None) -> list[dict]:
    """The per-round metric rows of ``cfg``'s trajectory, run or continued. ``external``: reinit's masks;
    ``inputs`` (``load_inputs``): data a caller loaded and checked before it created the store."""
    ctx = setup(cfg, root, store, reporter or Reporter(), external, inputs)
    rows = list(store.completed)
    masks, previous = pruning.dense_masks(weights_of(ctx.model, ctx.names)), None
    if rows:
        masks, previous = resume(ctx, store, len(rows) - 1)
    for r in range(len(rows), cfg.prune.rounds + 1):
        masks, previous, metrics = run_round(ctx, store, r, masks, previous)
        rows.append(metrics)
    return rows


def round_generators(cfg: Config, r: int, device: torch.device) -> train.Generators:
    return train.Generators(seeds.generator(cfg.seed, "order", r), seeds.generator(cfg.seed, "augment", r, device))


def load_inputs(cfg: Config, root: Path, labelled: tuple[data.Splits, torch.Tensor] | None = None) -> Inputs:
    """``labelled``: the (splits, noisy labels) of ``prepare.load_pinned``; else built from the raw sources."""
    configure_torch(cfg)
    device = train.resolve_device(cfg.train.device)
    splits, noisy = labelled or data.load_labelled(cfg, root)
    check_rewind(cfg, len(noisy))
    splits, noisy = splits.to(device), noisy.to(device)
    model = fresh_model(cfg, splits, 0).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        splits.channels_last = True  # batches in the model's layout too
    exclude = cfg.prune.exclude if cfg.prune.exclude is not None else models.default_exclude(cfg.model.arch)
    prunable = models.prunable(model, exclude)
    check_rounds(cfg, {name: w.numel() for name, w in prunable.items()})
    train_idx = data.stratified_subset(splits.y_train_clean.cpu(), cfg.train.train_eval_size,
                                       cfg.data.split_seed, "train.train_eval_size").to(device)
    return Inputs(splits, noisy, model, list(prunable), train_idx)


def check_rounds(cfg: Config, sizes: dict[str, int]) -> None:
    """Refuse rounds that prune a tensor (``sizes``: name -> weights) to nothing: it cuts the net in two."""
    if not sizes:
        return
    most, name = pruning.max_rounds(sizes, cfg.prune.rate)
    if cfg.prune.rounds > most:
        raise ConfigError(f"prune.rounds = {cfg.prune.rounds}: at prune.rate {cfg.prune.rate} the smallest "
                          f"prunable tensor ({name}, {sizes[name]:,} weights) keeps no weight from round "
                          f"{most + 1} on; at most {most} rounds")


def resume(ctx: Context, store: Store, last: int) -> tuple[pruning.Masks, State]:
    """The state after round ``last`` (stored on the CPU), on the training device."""
    device = ctx.init[ctx.names[0]].device
    on_device = lambda tensors: {k: v.to(device) for k, v in tensors.items()}  # noqa: E731
    masks, previous = store.load_round(last)
    if needs_rewind(ctx.cfg):
        ctx.rewind = on_device(stored_rewind(ctx, store))
    if retrain.MODES[ctx.cfg.retrain.mode].masks == "oneshot":
        ctx.dense_final = on_device(store.load_round(0)[1])
    return on_device(masks), on_device(previous)


def needs_rewind(cfg: Config) -> bool:
    return retrain.MODES[cfg.retrain.mode].start == "rewind"


def rewind_at_step(ctx: Context) -> int:
    return retrain.rewind_iteration(ctx.cfg, train.steps_per_epoch(len(ctx.noisy), ctx.cfg.train.batch_size))


def stored_rewind(ctx: Context, store: Store) -> State:
    """The init at step 0 (never stored), else the stored rewind state, re-derived if it is lost or damaged."""
    if rewind_at_step(ctx) == 0:
        return ctx.init
    rewind = store.load_state("rewind")
    if rewind is None:
        rewind = replay_to_rewind(ctx)
        store.save_state("rewind", rewind)
    return rewind


def setup(cfg: Config, root: Path, store: Store, reporter: Reporter, external: MaskSource | None,
          inputs: Inputs | None = None) -> Context:
    inputs = inputs or load_inputs(cfg, root)
    if not store.completed:
        store.log_labels(inputs.noisy, noise.realised_rate(inputs.splits.y_train_clean, inputs.noisy))
    device = next(inputs.model.parameters()).device
    init, digest = trajectory_init(store, inputs.model)
    init = {k: v.to(device) for k, v in init.items()}  # a stored init is on the CPU
    return Context(**vars(inputs), cfg=cfg, init=init, external=external, reporter=reporter, init_digest=digest)


def trajectory_init(store: Store, model: nn.Module) -> tuple[State, str]:
    """The init (``model`` as built from the seed, or the init older sddkit stored) and its digest, checked
    against the one recorded when the trajectory started."""
    stored = store.load_state("init")
    if stored is not None:
        return stored, checkpoint.digest(stored)
    init = snapshot(model)
    digest, recorded = checkpoint.digest(init), store.init_digest()
    if recorded is None:
        store.record_init_digest(digest)
    elif recorded != digest:
        raise InitMismatch(f"the init rebuilt from the seed is not the one this trajectory started "
                           f"from (digest {digest[:12]} here, {recorded[:12]} recorded): torch or the CPU differ "
                           f"from the machine it started on; continue it there, or rerun with --force for a new "
                           f"trajectory (it retrains every round)")
    return init, digest


def configure_torch(cfg: Config) -> None:
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    # Fixed-size batches: let cuDNN pick the fastest kernels, unless bitwise reproducibility is asked for.
    torch.backends.cudnn.benchmark = not cfg.train.deterministic


def fresh_model(cfg: Config, splits: data.Splits, round_index: int) -> nn.Module:
    # The model is built on the CPU: seed only the CPU generator, which fork_rng restores. torch.manual_seed
    # would also reseed every CUDA generator, and fork_rng(devices=[]) would leave that change behind.
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seeds.derive(cfg.seed, "init", round_index))
        return models.build(cfg.model.arch, splits.num_classes, splits.input_shape, cfg.model.init)


def run_round(ctx: Context, store: Store, r: int, masks: pruning.Masks, previous: State | None):
    if ctx.external is not None:
        wait_for_masks(ctx, store, r)
    # Told first, so the stored round spans its pruning and training (and an interrupted one shows as begun).
    store.start_round(r, 1.0 - pruning.density_after(r, ctx.cfg.prune.rate))
    if r == 0 and ctx.external is not None:
        source = ctx.external.same_round_zero(ctx.init_digest)
        if source is not None:  # reinit's round 0 is its lottery twin's, bit for bit: copied, not retrained
            return adopt_round_zero(ctx, store, source, masks)
    cfg, model, started = ctx.cfg, ctx.model, time.perf_counter()
    if r > 0:
        masks = next_masks(ctx, r, masks, previous)
        store.publish_mask(r, masks)  # now, not at the round's end: a reinit twin can train its round k beside
    schedule = retrain.schedule(cfg, r)
    start = start_weights(ctx, r, previous)
    model.load_state_dict(start)
    apply_masks = pruning.MaskApplier(dict(model.named_parameters()), masks)
    apply_masks()
    start = snapshot(model)
    per_epoch = train.steps_per_epoch(len(ctx.noisy), cfg.train.batch_size)
    rewind_at = rewind_at_step(ctx)
    first_step = retrain.start_step(cfg, r, rewind_at)
    ctx.reporter.round_started(r, cfg.prune.rounds, pruning.sparsity(masks), schedule.epochs - first_step // per_epoch)
    gens = round_generators(cfg, r, ctx.splits.x_train.device)
    history = train.fit(model, ctx.splits, ctx.noisy, schedule, gens, apply_masks, start_step=first_step,
                        fresh_optimizer_at=retrain.fresh_optimizer_at(r, rewind_at),
                        on_step=rewind_capture(ctx, r, rewind_at),
                        on_epoch=lambda e, row: epoch_metrics(ctx, r, row, schedule.epochs))
    final = snapshot(model)
    if r == 0:
        if needs_rewind(cfg) and rewind_at > 0:  # at step 0 the rewind state is the init: not stored
            store.save_state("rewind", ctx.rewind)
        ctx.dense_final = final
    metrics = round_metrics(ctx, r, masks, start, final)
    metrics["round_seconds"] = time.perf_counter() - started
    store.log_round(r, metrics, history, masks, final)
    ctx.reporter.round_done(r, metrics)
    return masks, final, metrics


def wait_for_masks(ctx: Context, store: Store, r: int) -> None:
    """Before round r starts (its run, its clock): the external source's round-r mask, or its round 0 to copy,
    may still be in the making (reinit beside its lottery twin). Wait, the lease held and the wait shown."""
    def waiting(text: str) -> None:
        ctx.reporter.waiting(r, text)
        store.set_state(text)
    if ctx.external.wait_for(r, waiting):
        store.set_state(None)


def adopt_round_zero(ctx: Context, store: Store, source: object, masks: pruning.Masks):
    """Round 0 copied from the source's identical round 0 (its metrics, history, mask and weights)."""
    ctx.reporter.round_started(0, ctx.cfg.prune.rounds, 0.0, 0)
    metrics = store.adopt_round(0, source)
    ctx.reporter.round_done(0, metrics)
    return masks, None, metrics  # reinit's later rounds need neither round 0's weights nor its masks


def next_masks(ctx: Context, r: int, masks: pruning.Masks, previous: State) -> pruning.Masks:
    """Round r's mask: pruned from round r−1's weights, from the dense weights (oneshot), or given."""
    cfg, policy = ctx.cfg, retrain.MODES[ctx.cfg.retrain.mode].masks
    if policy == "external":
        return {n: m.to(ctx.init[n].device) for n, m in ctx.external.masks(r).items()}
    source = ctx.dense_final if policy == "oneshot" else previous
    if policy == "oneshot":
        masks = pruning.dense_masks({n: source[n] for n in ctx.names})
    ctx.model.load_state_dict(source)
    weights = weights_of(ctx.model, ctx.names)
    gradients = None
    if cfg.prune.criterion == "gradient":
        gradients = train.accumulate_gradients(ctx.model, ctx.splits, ctx.noisy, ctx.names,
                                               cfg.prune.gradient_batches, cfg.train.batch_size,
                                               seeds.generator(cfg.seed, "gradient", r))
    gen = seeds.generator(cfg.seed, "random_mask", r)
    scores = pruning.score(weights, cfg.prune.criterion, gradients, gen)
    return pruning.prune(scores, masks, pruning.density_after(r, cfg.prune.rate), cfg.prune.scope)


def start_weights(ctx: Context, r: int, previous: State | None) -> State:
    start = retrain.MODES[ctx.cfg.retrain.mode].start
    if r == 0:
        return ctx.init
    if start == "rewind":
        return ctx.rewind
    if start == "previous":
        return previous
    return fresh_model(ctx.cfg, ctx.splits, r).to(ctx.init[ctx.names[0]].device).state_dict()


class _Stop(Exception):
    """Ends a replay of round 0."""


def replay_round_zero(ctx: Context, **hooks) -> None:
    """Round 0 trained again from ``ctx.model``'s weights with its own generators, until a hook raises _Stop."""
    apply_masks = pruning.MaskApplier(dict(ctx.model.named_parameters()),
                                      pruning.dense_masks(weights_of(ctx.model, ctx.names)))
    try:
        train.fit(ctx.model, ctx.splits, ctx.noisy, retrain.schedule(ctx.cfg, 0),
                  round_generators(ctx.cfg, 0, ctx.splits.x_train.device), apply_masks,
                  fresh_optimizer_at=retrain.fresh_optimizer_at(0, rewind_at_step(ctx)), **hooks)
    except _Stop:
        pass


def replay_to_rewind(ctx: Context) -> State:
    """Round 0's weights at the rewind step, replayed from the init (on CUDA the same only if deterministic)."""
    rewind_at = rewind_at_step(ctx)
    if rewind_at == 0:
        return {k: v.clone() for k, v in ctx.init.items()}
    ctx.model.load_state_dict(ctx.init)
    captured: State = {}

    def stop_at_rewind(step: int) -> None:
        if step == rewind_at:
            captured.update(snapshot(ctx.model))
            raise _Stop
    replay_round_zero(ctx, on_step=stop_at_rewind)
    return captured


def rewind_capture(ctx: Context, r: int, rewind_at: int) -> Callable[[int], None] | None:
    """In round 0, a hook keeping the weights at the rewind step (``check_rewind`` keeps it inside the schedule)."""
    if r != 0:
        return None
    if rewind_at == 0:
        ctx.rewind = ctx.init  # round 0 starts from it: the weights at step 0
        return None

    def capture(step: int) -> None:
        if step == rewind_at:
            ctx.rewind = snapshot(ctx.model)
    return capture


def check_rewind(cfg: Config, train_size: int) -> None:
    per_epoch = train.steps_per_epoch(train_size, cfg.train.batch_size)
    rewind_at, total = retrain.rewind_iteration(cfg, per_epoch), cfg.train.epochs * per_epoch
    if rewind_at > 0 and rewind_at >= total:
        raise ConfigError(f"retrain.rewind_step = {cfg.retrain.rewind_step} {cfg.retrain.rewind_unit} is step "
                          f"{rewind_at}, not before the end of training ({total} steps = {cfg.train.epochs} "
                          f"epochs x {per_epoch}); lower it (0 rewinds to the initialisation)")


def epoch_metrics(ctx: Context, r: int, row: dict, epochs: int) -> None:
    """Test loss and accuracy every ``train.eval_every`` epochs and after the last one (of ``epochs``)."""
    epoch = row["epoch"]
    if (epoch + 1) % ctx.cfg.train.eval_every == 0 or epoch == epochs - 1:
        logits = train.predict(ctx.model, ctx.splits, ctx.splits.x_test, ctx.cfg.train.eval_batch_size)
        row["test_loss"], row["test_acc"] = train.loss_and_accuracy(logits, ctx.splits.y_test)
    ctx.reporter.epoch_done(r, row)


def round_metrics(ctx: Context, r: int, masks: pruning.Masks, start: State, final: State) -> dict:
    metrics = {"round": r, "sparsity": pruning.sparsity(masks)}
    metrics["remaining"] = 1.0 - metrics["sparsity"]
    metrics.update(train.evaluate_round(ctx.model, ctx.splits, ctx.noisy, ctx.cfg.train, ctx.train_idx))
    metrics["learning_distance"] = analysis.learning_distance(ctx.init, final, masks)
    metrics["distance_from_start"] = analysis.learning_distance(start, final, masks)
    metrics.update({f"sparsity/{n}": s for n, s in pruning.layer_sparsity(masks).items()})
    return metrics


def weights_of(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {n: params[n] for n in names}


def snapshot(model: nn.Module) -> State:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def replay_first_epoch(cfg: Config, root: Path) -> dict:
    """Round 0's first epoch row (every metric ``fit`` and ``epoch_metrics`` log), replayed from the seed with
    this code: ``sddkit adopt`` checks a stored run against it."""
    inputs = load_inputs(cfg, root)
    ctx, replayed = Context(**vars(inputs), cfg=cfg, init=snapshot(inputs.model)), {}

    def first_epoch_only(epoch: int, row: dict) -> None:
        epoch_metrics(ctx, 0, row, cfg.train.epochs)
        replayed.update(row)
        raise _Stop
    replay_round_zero(ctx, on_epoch=first_epoch_only)
    return replayed

"""Fit and evaluate, knowing nothing of MLflow or pruning: masks arrive as a callable applied after each
optimizer step, progress leaves through ``on_epoch``/``on_step`` callbacks."""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sddkit.config import ConfigError, TrainConfig
from sddkit.data import Splits


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device = {name!r}, but no CUDA device is available here; use auto or cpu")
    return device


def autocast(device: torch.device):
    """bf16 autocast on CUDA; fp32 on the CPU (where bf16 is slow and changes results)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def precision(device: torch.device, mixed_precision: bool):
    """``autocast(device)``, or autocast off even inside an enabled region: analyses compare what bf16 blurs."""
    if mixed_precision:
        return autocast(device)
    if device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def lr_factor(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The multiple of ``cfg.lr`` at absolute step ``step``: the schedule's times the warmup's min(1, step /
    warmup steps), as open_lth multiplies its lambdas (step 0 runs at 0)."""
    factor = schedule_factor(cfg, step, steps_per_epoch)
    warmup = cfg.warmup_epochs * steps_per_epoch
    return factor * min(1.0, step / warmup) if warmup else factor


def schedule_factor(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "multistep":
        epoch = step // steps_per_epoch
        return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    total = max(1, cfg.epochs * steps_per_epoch)
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def steps_per_epoch(samples: int, batch_size: int) -> int:
    return math.ceil(samples / batch_size)


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


@dataclass
class Generators:
    order: torch.Generator     # the shuffle of each epoch
    augment: torch.Generator   # crops and flips


def fit(model: nn.Module, splits: Splits, labels: torch.Tensor, cfg: TrainConfig, gens: Generators,
        apply_masks: Callable[[], None] = lambda: None, start_step: int = 0,
        fresh_optimizer_at: int | None = None,
        on_step: Callable[[int], None] | None = None,
        on_epoch: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Train on ``labels`` from step ``start_step`` to the end of ``cfg.epochs``; return the per-epoch rows
    (``epoch`` absolute). Step s runs at ``cfg.lr · lr_factor(s)`` whatever the start, as the paper's code advances
    its schedule to the rewind step; epoch e is shuffled by the e-th draw of ``gens.order``. The optimizer restarts
    at ``fresh_optimizer_at``; ``on_step(step)`` runs before each step and once after the last."""
    device, n = splits.x_train.device, len(labels)
    per_epoch = steps_per_epoch(n, cfg.batch_size)
    optimizer = make_optimizer(cfg, model.parameters())
    first_epoch, skipped_batches = divmod(start_step, per_epoch)
    for _ in range(min(first_epoch, cfg.epochs)):
        torch.randperm(n, generator=gens.order)  # the orders of the epochs before the start: drawn, not trained
    history, step = [], start_step
    apply_masks()
    for epoch in range(first_epoch, cfg.epochs):
        model.train()
        order = torch.randperm(n, generator=gens.order).to(device)
        first = skipped_batches * cfg.batch_size if epoch == first_epoch else 0
        losses, predictions, epoch_lr = [], [], cfg.lr * lr_factor(cfg, step, per_epoch)
        for start in range(first, n, cfg.batch_size):
            if on_step is not None:
                on_step(step)
            if step == fresh_optimizer_at:
                optimizer = make_optimizer(cfg, model.parameters())
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * lr_factor(cfg, step, per_epoch)
            idx = order[start:start + cfg.batch_size]
            logits, loss = train_step(model, optimizer, splits.train_batch(idx, gens.augment), labels[idx],
                                      cfg.precision == "bf16", cfg.bn_shards)
            apply_masks()
            # Kept on the device and reduced once per epoch: no host sync and one small op per step.
            losses.append(loss.detach())
            predictions.append(logits.argmax(1))
            step += 1
        row = {"epoch": epoch, "lr": epoch_lr,
               **running_metrics(losses, predictions, labels[order[first:]], cfg.batch_size)}
        if on_epoch is not None:
            on_epoch(epoch, row)
        history.append(row)
    if on_step is not None:
        on_step(step)
    return history


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               mixed_precision: bool = True, bn_shards: int = 1):
    """One optimizer step; the logits and the loss (the mean over the whole batch, whatever ``bn_shards``)."""
    with precision(x.device, mixed_precision):
        logits = sharded_forward(model, x, bn_shards) if bn_shards > 1 else model(x)
        loss = F.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return logits, loss


def sharded_forward(model: nn.Module, x: torch.Tensor, shards: int) -> torch.Tensor:
    """The logits of ``x`` with batch-norm statistics over ``shards`` chunks, as DataParallel on as many GPUs
    (the paper's Tiny ImageNet): running statistics follow the first chunk only, as its first replica's."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    momenta, tracked = [m.momentum for m in norms], []
    outputs = []
    try:
        for index, chunk in enumerate(x.chunk(shards)):
            outputs.append(model(chunk))
            if index == 0:
                tracked = [None if m.num_batches_tracked is None else m.num_batches_tracked.clone() for m in norms]
                for m in norms:
                    m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: left as the first chunk set it
    finally:
        for m, momentum, count in zip(norms, momenta, tracked):
            m.momentum = momentum
            if count is not None:  # one batch seen, as by DataParallel's first replica
                m.num_batches_tracked.copy_(count)
    return torch.cat(outputs)


def running_metrics(losses: list[torch.Tensor], predictions: list[torch.Tensor], targets: torch.Tensor,
                    batch_size: int) -> dict[str, float]:
    if not losses:
        return {"train_loss": float("nan"), "train_acc_running": float("nan")}
    sizes = torch.full((len(losses),), float(batch_size), device=targets.device)
    sizes[-1] = len(targets) - batch_size * (len(losses) - 1)  # the last batch may be short
    loss = float((torch.stack(losses).float() * sizes).sum()) / len(targets)
    accuracy = 100.0 * float((torch.cat(predictions) == targets).sum()) / len(targets)
    return {"train_loss": loss, "train_acc_running": accuracy}


@torch.no_grad()
def predict(model: nn.Module, splits: Splits, x: torch.Tensor, batch_size: int,
            mixed_precision: bool = False) -> torch.Tensor:
    """Float32 logits of raw images ``x`` in the evaluation view, computed in fp32 unless ``mixed_precision``."""
    model.eval()
    device = splits.x_train.device
    outs = []
    for start in range(0, len(x), batch_size):
        with precision(device, mixed_precision):
            outs.append(model(splits.eval_batch(x[start:start + batch_size])).float())
    return torch.cat(outs) if outs else torch.zeros(0, splits.num_classes, device=device)


def loss_and_accuracy(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    if len(y) == 0:
        return float("nan"), float("nan")
    return float(F.cross_entropy(logits, y)), 100.0 * int((logits.argmax(1) == y).sum()) / len(y)  # exact ratio


def evaluate_round(model: nn.Module, splits: Splits, noisy: torch.Tensor, cfg: TrainConfig,
                   train_idx: torch.Tensor, mixed_precision: bool = False) -> dict[str, float]:
    """Train accuracy (noisy and true labels, on the fixed subset ``train_idx``, unaugmented), memorisation and
    test loss/accuracy; in fp32 whatever precision the net trained in."""
    logits = predict(model, splits, splits.x_train[train_idx], cfg.eval_batch_size, mixed_precision)
    clean, noisy_sub = splits.y_train_clean[train_idx], noisy[train_idx]
    corrupted = clean != noisy_sub
    test_logits = predict(model, splits, splits.x_test, cfg.eval_batch_size, mixed_precision)
    test_loss, test_acc = loss_and_accuracy(test_logits, splits.y_test)
    train_loss_noisy, train_acc_noisy = loss_and_accuracy(logits, noisy_sub)
    return {
        "train_loss_noisy": train_loss_noisy,
        "train_acc_noisy": train_acc_noisy,
        "train_acc_clean": loss_and_accuracy(logits, clean)[1],
        "memorized": loss_and_accuracy(logits[corrupted], noisy_sub[corrupted])[1],
        "test_loss": test_loss,
        "test_acc": test_acc,
    }


def accumulate_gradients(model: nn.Module, splits: Splits, labels: torch.Tensor, names: list[str],
                         batches: int, batch_size: int, gen: torch.Generator,
                         mixed_precision: bool = False) -> dict[str, torch.Tensor]:
    """∂L/∂w summed over ``batches`` seeded batches; fp32 by default: bf16 ties or reorders small scores."""
    params = dict(model.named_parameters())
    model.train()
    model.zero_grad(set_to_none=True)
    order = torch.randperm(len(labels), generator=gen).to(splits.x_train.device)
    for b in range(batches):
        idx = order[(b * batch_size) % len(labels):][:batch_size]
        with precision(splits.x_train.device, mixed_precision):
            loss = F.cross_entropy(model(splits.eval_batch(splits.x_train[idx])), labels[idx])
        loss.backward()
    grads = {n: params[n].grad.detach().clone() for n in names}
    model.zero_grad(set_to_none=True)
    return grads

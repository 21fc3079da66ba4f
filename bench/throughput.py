"""Training throughput of sddkit's loop against a bare PyTorch loop, side by side in one run.

sddkit: ``train.fit`` with a ``pruning.MaskApplier`` at 50% sparsity (global magnitude), as a trajectory
round calls it, minus the per-epoch test evaluation (a trajectory callback, not part of the loop).
Bare: the loop one writes by hand — same model, same uint8 tensors on the device, same batch size, optimizer,
per-batch normalisation/augmentation, autocast and memory format; no masks, no metrics, no callbacks.
Bare + masks: the bare loop plus the same mask multiply after each step, which separates the cost of the
masks from the cost of sddkit's loop itself.

Repeats are interleaved (A B C, C B A, ...) so drift in the machine's load hits every loop alike; the figures
are medians. On the CPU the clock is the process's CPU time (one thread), so other jobs on a shared machine
count against neither loop; on CUDA it is the wall clock. Cases: LeNet-300-100 on MNIST-shaped data on the
CPU; ResNet-18 on CIFAR-shaped data on CUDA when a GPU is present (skipped otherwise).

    python bench/throughput.py               # ~25 s on one CPU core (plus the CUDA case on a GPU)
    python bench/throughput.py --repeats 5   # a quick look
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from sddkit import data, models, pruning, seeds, train
from sddkit.config import TrainConfig


@dataclass
class Case:
    name: str
    arch: str
    shape: tuple[int, int, int]
    samples: int
    device: str
    cfg: TrainConfig
    augment: bool


CASES = [
    # The paper's MNIST setting: SGD without momentum, constant lr.
    Case("LeNet-300-100, MNIST-shaped, CPU 1 thread", "lenet300_100", (1, 28, 28), 12_800, "cpu",
         TrainConfig(optimizer="sgd", lr=0.1, epochs=1, batch_size=128, threads=1), augment=False),
    # The paper's CIFAR setting: SGD m=0.9, wd 1e-4, multistep; crop+flip on the device.
    Case("ResNet-18, CIFAR-shaped, CUDA bf16 channels_last", "resnet18", (3, 32, 32), 10_240, "cuda",
         TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4, schedule="multistep",
                     milestones=[80, 120], epochs=1, batch_size=128), augment=True),
]


# ---------------------------------------------------------------- the loops

def random_splits(case: Case, device: torch.device) -> tuple[data.Splits, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (case.samples, *case.shape), generator=gen, dtype=torch.uint8)
    y = torch.randint(0, 10, (case.samples,), generator=gen)
    mean, std = data.channel_stats(x)
    splits = data.Splits(x, y, x[:256], y[:256], 10, mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1), case.augment)
    splits = splits.to(device)
    return splits, splits.y_train_clean


def sddkit_epochs(case: Case, model: torch.nn.Module, splits: data.Splits, labels: torch.Tensor,
                  apply_masks: pruning.MaskApplier) -> None:
    gens = train.Generators(seeds.generator(0, "order"), seeds.generator(0, "augment", 0, splits.x_train.device))
    train.fit(model, splits, labels, case.cfg, gens, apply_masks)


def bare_epochs(case: Case, model: torch.nn.Module, splits: data.Splits, labels: torch.Tensor,
                after_step: Callable[[], None] = lambda: None) -> None:
    cfg, device = case.cfg, splits.x_train.device
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    gen = torch.Generator(device=device).manual_seed(0)
    model.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(labels), device=device)
        for start in range(0, len(labels), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            x = (splits.x_train[idx].float() / 255.0 - splits.mean) / splits.std
            if case.augment:
                x = data.crop_flip(x, gen)
            with train.autocast(device):
                loss = F.cross_entropy(model(x), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            after_step()


# ---------------------------------------------------------------- measuring

def half_pruned(model: torch.nn.Module, arch: str) -> pruning.Masks:
    weights = models.prunable(model, models.default_exclude(arch))
    return pruning.prune(pruning.score(weights, "magnitude"), pruning.dense_masks(weights), 0.5, "global")


def timed(fn: Callable[[], None], device: torch.device) -> float:
    """Seconds of ``fn``: wall clock on CUDA (kernels run asynchronously, so CPU time says nothing there);
    this process's CPU time on the CPU, so other jobs sharing the cores count against neither loop."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        return time.perf_counter() - start
    start = time.process_time()
    fn()
    return time.process_time() - start


def measure(case: Case, repeats: int) -> dict:
    device = torch.device(case.device)
    torch.manual_seed(0)
    model = models.build(case.arch, 10, case.shape, "kaiming_normal").to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)  # as trajectory.setup does
    bare_model, masked_model = copy.deepcopy(model), copy.deepcopy(model)
    splits, labels = random_splits(case, device)
    masks = half_pruned(model, case.arch)
    appliers = {m: pruning.MaskApplier(dict(m.named_parameters()), masks) for m in (model, masked_model)}
    loops = {"sddkit": lambda: sddkit_epochs(case, model, splits, labels, appliers[model]),
             "bare": lambda: bare_epochs(case, bare_model, splits, labels),
             # The bare loop plus the same mask multiply: what is left between it and sddkit is loop overhead.
             "bare+masks": lambda: bare_epochs(case, masked_model, splits, labels, appliers[masked_model])}
    for run in loops.values():  # warm-up: allocator, cudnn, first-call dispatch
        run()
    seconds = {name: [] for name in loops}
    for rep in range(repeats):
        order = list(loops) if rep % 2 == 0 else list(reversed(loops))  # no loop always runs first
        for name in order:
            seconds[name].append(timed(loops[name], device))
    samples = case.samples * case.cfg.epochs
    rates = {name: samples / statistics.median(s) for name, s in seconds.items()}
    # A repeat's loops ran back to back: their ratio cancels slower drift in the machine's load.
    paired = statistics.median(b / a for a, b in zip(seconds["sddkit"], seconds["bare"]))
    return {**rates, "ratio": rates["sddkit"] / rates["bare"], "paired": paired,
            "overhead_ratio": rates["sddkit"] / rates["bare+masks"], "sparsity": pruning.sparsity(masks)}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = f"{names[0]} ({len(names)} logical cores)" if names else cpu
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{cpu}; {gpu}; torch {torch.__version__}, Python {platform.python_version()}"


def report(case: Case, r: dict, repeats: int, seconds: float) -> str:
    rows = {f"sddkit fit, masks at {r['sparsity']:.0%} sparsity": r["sddkit"], "bare PyTorch loop": r["bare"],
            "bare loop + the same masks": r["bare+masks"]}
    lines = [f"{case.name} [{repeats} repeats x {case.cfg.epochs} epoch x {case.samples:,} samples, {seconds:.0f}s]"]
    lines += [f"  {label + ':':40s}{rate:>8,.0f} samples/s" for label, rate in rows.items()]
    lines.append(f"  ratio sddkit/bare: {r['ratio']:.3f} (median of paired ratios {r['paired']:.3f}); "
                 f"sddkit/(bare+masks): {r['overhead_ratio']:.3f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=31, help="timed repeats per loop (median taken)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {machine()}")
    for case in CASES:
        if case.device == "cuda" and not torch.cuda.is_available():
            print(f"{case.name}: skipped (no CUDA device)")
            continue
        started = time.perf_counter()
        result = measure(case, args.repeats)
        print(report(case, result, args.repeats, time.perf_counter() - started))


if __name__ == "__main__":
    main()

"""The GPU check: what to run first on a lent GPU (under 8 minutes on one), printing one table.

1. ResNet-18 on CIFAR-shaped data: sddkit's loop (``train.fit`` with masks at 50% sparsity) against a bare
   PyTorch loop, in fp32 and bf16 (autocast), channels_last on and off: images/s and the ratio.
2. The mask pass: one fused ``_foreach_mul_`` over every prunable weight, with factors in the weights' own
   strides (``pruning.MaskApplier``: channels_last weights get channels_last factors, so the multi-tensor
   fast path holds) against contiguous factors (one kernel a tensor): µs a step, and CUDA kernels a pass.
3. ``torch.backends.cudnn.benchmark`` as a trajectory sets it: on unless ``train.deterministic``.
4. A tiny CIFAR-shaped trajectory (``train.deterministic``, fake CIFAR-10 files) stopped after round 1 and
   resumed: its metrics equal those of an uninterrupted one.
5. Four LeNet-300-100 trajectories sharing the GPU (``sddkit sweep --seeds 0 1 2 3 --gpus-per-trajectory
   0.25``) against one alone: the throughput ratio (4 × one's training time / the four's span).

Without CUDA it runs on the CPU at a tiny size (the CUDA-only rows say they were skipped), so a test checks it.

    python bench/gpu_check.py            # on a GPU; record the card and the table in docs/benchmarks.md
    python bench/gpu_check.py --quick    # tiny sizes: the script itself works (CPU: ~1 min)
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput  # noqa: E402  (bench/throughput.py: its data, loops and timer)

from sddkit import data, models, pruning, train, trajectory  # noqa: E402
from sddkit.config import TrainConfig, load_config  # noqa: E402

ROWS: list[tuple[str, str, str]] = []  # (check, setting, result): the one table


def row(check: str, setting: str, result: str) -> None:
    ROWS.append((check, setting, result))
    print(f"  {check}: {setting}: {result}", flush=True)


# ---------------------------------------------------------------- 1. the loop against a bare one

def bare_loop(cfg: TrainConfig, model, splits: data.Splits, labels, channels_last: bool) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    device = splits.x_train.device
    gen = torch.Generator(device=device).manual_seed(0)
    order = torch.randperm(len(labels), device=device)
    model.train()
    for start in range(0, len(labels), cfg.batch_size):
        idx = order[start:start + cfg.batch_size]
        x = data.crop_flip((splits.x_train[idx].float() / 255.0 - splits.mean) / splits.std, gen)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with train.autocast(device):
            loss = F.cross_entropy(model(x), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


@contextlib.contextmanager
def precision(name: str):
    """bf16: sddkit's autocast on CUDA; fp32: none (both loops call ``train.autocast``)."""
    saved = train.autocast
    if name == "fp32":
        train.autocast = lambda device: contextlib.nullcontext()
    try:
        yield
    finally:
        train.autocast = saved


def loop_speed(device: torch.device, quick: bool) -> None:
    shape, samples, batch = ((3, 16, 16), 32, 16) if quick else ((3, 32, 32), 10_240, 128)
    repeats = 1 if quick else 5
    cfg = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4, epochs=1, batch_size=batch)
    case = throughput.Case("resnet18", "resnet18", shape, samples, device.type, cfg, augment=True)
    precisions = ("fp32", "bf16") if device.type == "cuda" else ("fp32",)
    if device.type != "cuda":
        row("loop", "bf16", "skipped (no CUDA: bf16 autocast is CUDA-only in sddkit)")
    for prec in precisions:
        for channels_last in (True, False):
            torch.manual_seed(0)
            model = models.build("resnet18", 10, shape, "kaiming_normal").to(device)
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
            bare = copy.deepcopy(model)
            splits, labels = throughput.random_splits(case, device)
            splits.channels_last = channels_last
            applier = pruning.MaskApplier(dict(model.named_parameters()), throughput.half_pruned(model, "resnet18"))
            loops = {"sddkit": lambda: throughput.sddkit_epochs(case, model, splits, labels, applier),
                     "bare": lambda: bare_loop(cfg, bare, splits, labels, channels_last)}
            with precision(prec):
                for run in loops.values():
                    run()  # warm-up: cudnn's search, the allocator
                seconds = {name: [] for name in loops}
                for rep in range(repeats):
                    for name in (loops if rep % 2 == 0 else reversed(list(loops))):
                        seconds[name].append(throughput.timed(loops[name], device))
            rates = {name: samples / statistics.median(s) for name, s in seconds.items()}
            row("loop", f"{prec}, channels_last {'on' if channels_last else 'off'}",
                f"sddkit {rates['sddkit']:,.0f} img/s, bare {rates['bare']:,.0f} img/s, "
                f"ratio {rates['sddkit'] / rates['bare']:.3f}")


# ---------------------------------------------------------------- 2. the mask pass

def mask_pass(device: torch.device, quick: bool) -> None:
    shape = (3, 16, 16) if quick else (3, 32, 32)
    model = models.build("resnet18", 10, shape, "kaiming_normal").to(device)
    model = model.to(memory_format=torch.channels_last)
    masks = throughput.half_pruned(model, "resnet18")
    matched = pruning.MaskApplier(dict(model.named_parameters()), masks)
    same = all(f.stride() == w.stride() for f, w in zip(matched.factors, matched.weights))
    contiguous = [m.to(device=device, dtype=torch.float32).contiguous() for m in masks.values()]
    passes = {"factors in the weights' strides (MaskApplier)": lambda: matched(),
              "contiguous factors": lambda: torch._foreach_mul_(matched.weights, contiguous)}
    calls = 20 if quick else 500
    for name, apply in passes.items():
        with torch.no_grad():
            apply()
            seconds = throughput.timed(lambda: [apply() for _ in range(calls)], device)
        kernels = cuda_kernels(apply) if device.type == "cuda" else None
        row("mask pass", name, f"{1e6 * seconds / calls:.0f} µs a step" + (f", {kernels} CUDA kernels a pass"
                                                                           if kernels is not None else ""))
    row("mask pass", "factors keep channels_last strides", "yes" if same else "NO (the fused fast path is lost)")


def cuda_kernels(apply) -> int:
    from torch.profiler import ProfilerActivity, profile
    with torch.no_grad(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        apply()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type.name == "CUDA")


# ---------------------------------------------------------------- 3. cudnn.benchmark

def cudnn_flag() -> None:
    for deterministic in (False, True):
        trajectory.configure_torch(load_config(overrides={"train.deterministic": deterministic}))
        row("cudnn.benchmark", f"train.deterministic {deterministic}", str(torch.backends.cudnn.benchmark))
    torch.use_deterministic_algorithms(False)


# ---------------------------------------------------------------- 4. stop after round 1, resume

def fake_cifar10(root: Path, per_batch: int) -> None:
    """CIFAR-10's python pickles, random images: the layout sddkit reads, with nothing to download."""
    rng = np.random.default_rng(0)
    folder = root / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, per_batch).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))


class StopAfterRound1(trajectory.Reporter):
    def round_done(self, round_index, metrics):
        if round_index == 1:
            raise KeyboardInterrupt


def stop_and_resume(device: torch.device, quick: bool) -> None:
    from sddkit import runner
    timing = ("round_seconds", "copied_round_seconds")
    science = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / ".git").mkdir()
        fake_cifar10(root, 100 if quick else 1000)
        arch = "lenet300_100" if device.type != "cuda" else "resnet18"
        overrides = {"data.name": "cifar10", "model.arch": arch, "data.train_size": 200 if quick else 2000,
                     "data.test_size": 100, "train.epochs": 1 if quick else 2, "prune.rounds": 2 if quick else 3,
                     "train.batch_size": 64, "train.milestones": [], "train.deterministic": True,
                     "train.device": device.type, "tracking.uri": f"sqlite:///{root}/mlflow.db"}
        cfg = lambda exp: load_config(overrides={**overrides, "tracking.experiment": exp})  # noqa: E731
        with contextlib.redirect_stdout(sys.stderr):
            _, whole = runner.run_trajectory(cfg("whole"), root, quiet=True)
            with contextlib.suppress(SystemExit):
                runner.run_trajectory(cfg("cut"), root, quiet=True, reporter=StopAfterRound1())
            _, resumed = runner.run_trajectory(cfg("cut"), root, quiet=True)
        equal = science(resumed) == science(whole)
        row("stop after round 1, resume", f"{arch} on {device.type}, {len(whole)} rounds",
            "equal metrics" if equal else "METRICS DIFFER")


# ---------------------------------------------------------------- 5. four trajectories on one GPU

def shared_gpu(device: torch.device, quick: bool) -> None:
    if device.type != "cuda":
        row("4 LeNet on one GPU", "--gpus-per-trajectory 0.25", "skipped (no CUDA)")
        return
    rounds = "2" if quick else "4"
    spans = {}
    for label, args in (("one alone", ["run"]),
                        ("four", ["sweep", "--seeds", "0", "1", "2", "3", "--gpus-per-trajectory", "0.25"])):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            (root / ".git").mkdir()
            env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
            cmd = [sys.executable, "-m", "sddkit.cli", *args, "--preset", "quick", "--set", "train.device=cuda",
                   "--set", f"prune.rounds={rounds}", "--format", "csv"]
            done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                row("4 LeNet on one GPU", label, f"FAILED: {done.stderr.strip().splitlines()[-1:]}")
                return
            spans[label] = training_span(root)
    ratio = 4 * spans["one alone"] / spans["four"]
    row("4 LeNet on one GPU", "--gpus-per-trajectory 0.25",
        f"one alone {spans['one alone']:.1f} s, four {spans['four']:.1f} s: throughput {ratio:.2f}x one's")


def training_span(root: Path) -> float:
    """Seconds from the first round's start to the last round's end in the project's store."""
    from mlflow import MlflowClient
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    exp = client.get_experiment_by_name("sddkit")
    runs = client.search_runs([exp.experiment_id], "tags.`sddkit.kind` = 'round'", max_results=5000)
    return (max(r.info.end_time for r in runs) - min(r.info.start_time for r in runs)) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check that the script works")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    args = parser.parse_args()
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(1)
        print("no CUDA device: the CPU at a tiny size; the CUDA-only parts are skipped", flush=True)
    print(f"machine: {throughput.machine()}", flush=True)
    started = time.perf_counter()
    quick = args.quick or device.type == "cpu"
    for check in (loop_speed, mask_pass, lambda d, q: cudnn_flag(), stop_and_resume, shared_gpu):
        check(device, quick)
    width = max(len(c) + len(s) for c, s, _ in ROWS) + 3
    print(f"\ngpu check on {device.type} ({time.perf_counter() - started:.0f} s)")
    for check, setting, result in ROWS:
        print(f"{check + ': ' + setting:<{width}} {result}")


if __name__ == "__main__":
    main()

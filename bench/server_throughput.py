"""Rounds logged per second by 8 concurrent writers: through one `sddkit server`, and straight into the sqlite
store, side by side in one run.

    python bench/server_throughput.py                  # 8 writers × 10 rounds, each way (~2 min on 2 CPU cores)
    python bench/server_throughput.py --rounds 3       # a quick look

Each writer is a process that logs a LeNet-300-100 trajectory the way `sddkit run` does, with no training in
between: `Tracker.open_trajectory` (a parent run with the config's params and tags), then per round
`TrajectoryRun.start_round` (the nested run, with the parent's params) and `log_round` (12 per-epoch metric
points, the round metrics, mask.npz and the sparse weights.pt of the 266,200 prunable weights at the round's
density, metrics.json, the run ended, the parent's curve). The clock starts when every writer has opened its
trajectory (imports and store start-up excluded) and stops when the last one is done. The server is the real
command (`sddkit server`, one uvicorn worker), in a project of its own; the sqlite store is another one's.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EPOCHS = 3  # × 4 metrics: 12 per-epoch metric points a round
RATE = 0.2


def writer(uri: str, root: str, seed: int, rounds: int, barrier, results) -> None:
    import torch

    from sddkit import models
    from sddkit.config import load_config
    from sddkit.tracking import Tracker
    torch.set_num_threads(1)
    cfg = load_config(overrides={"seed": seed, "tracking.uri": uri})
    store = Tracker(uri, Path(root)).open_trajectory(cfg, force=True)
    model = models.build("lenet300_100", 10, (1, 28, 28))
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    prunable = [k for k in weights if k.endswith(".weight")]
    generator = torch.Generator().manual_seed(seed)
    barrier.wait()
    started = time.perf_counter()
    for r in range(rounds):
        density = (1 - RATE) ** r
        masks = {k: torch.rand(weights[k].shape, generator=generator) < density for k in prunable}
        kept = {k: v * masks[k] if k in masks else v for k, v in weights.items()}
        store.start_round(r, 1 - density)
        history = [{"epoch": e, "train_loss": 0.5, "train_acc": 90.0, "test_loss": 0.6, "test_acc": 88.0}
                   for e in range(EPOCHS)]
        metrics = {"round": r, "sparsity": 1 - density, "remaining": density, "test_acc": 88.0, "test_loss": 0.6,
                   "train_acc_noisy": 90.0, "train_acc_clean": 91.0, "memorized": 0.1, "learning_distance": 0.0,
                   "distance_from_start": 1.0, "round_seconds": 1.0}
        store.log_round(r, metrics, history, masks, kept)
    results.put(time.perf_counter() - started)


def measure(uri: str, root: Path, writers: int, rounds: int) -> tuple[float, float]:
    """(rounds logged per second over all writers, the slowest writer's seconds)."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(writers + 1), ctx.Queue()
    procs = [ctx.Process(target=writer, args=(uri, str(root), seed, rounds, barrier, results))
             for seed in range(writers)]
    for p in procs:
        p.start()
    barrier.wait(timeout=600)
    started = time.perf_counter()
    seconds = [results.get(timeout=1800) for _ in procs]
    wall = time.perf_counter() - started
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"a writer failed (exit code {p.exitcode})")
    return writers * rounds / wall, max(seconds)


def start_server(project: Path) -> tuple[subprocess.Popen, str]:
    """`sddkit server` in ``project`` on a free port; (its process, the workers' tracking URI)."""
    (project / ".git").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    server = subprocess.Popen([sys.executable, "-m", "sddkit.cli", "server", "--port", str(free_port())],
                              cwd=project, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True)
    for line in server.stdout:
        if line.startswith("workers: MLFLOW_TRACKING_URI="):
            return server, line.strip().partition("=")[2]
    raise SystemExit(f"sddkit server exited with code {server.wait()} before serving")


def free_port() -> int:
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=10, help="rounds each writer logs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        served, local = Path(folder) / "served", Path(folder) / "local"
        server, url = start_server(served)
        try:
            through_server = measure(url, served, args.writers, args.rounds)
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=120)
        local.mkdir()
        into_sqlite = measure(f"sqlite:///{local}/mlflow.db", local, args.writers, args.rounds)
    print(f"{args.writers} writers × {args.rounds} rounds (LeNet-300-100: mask.npz + sparse weights.pt a round)")
    print("store                  rounds/s   slowest writer (s)")
    for name, (rate, slowest) in (("sddkit server (http)", through_server), ("sqlite file, direct", into_sqlite)):
        print(f"{name:<22} {rate:8.2f}   {slowest:8.1f}")


if __name__ == "__main__":
    main()

"""A 4-cell sweep of the quick preset (noise.ratio 0.2 and 0.4 × lottery and reinit: the paper's grid in
small) run three ways side by side in one invocation, each into a fresh project:

- one after another: `sddkit sweep --jobs 1` (one worker, torch on every core);
- `--executor local --jobs 2` (two workers, one torch thread each);
- `--executor ray` (a Ray started here with every core, one CPU a cell).

It prints each wall time and its ratio to the sequential one (the issue's target: ≤ 0.55 on a 2-core machine),
and for each parallel run the round-level DAG at work: how long before its lottery twin finished each reinit cell
started (a cell-level DAG would start it after), and the longest time the cells had at most one trajectory
running (an idle core). Then Ray's overhead: the start of a local Ray, and per cell the time from submitting a task to its first line of
sddkit code (scheduling, a worker process), first and warm.

    python bench/sweep.py [--set key=value ...] [--skip-sequential SECONDS]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRID = ["--grid", "noise.ratio=0.2,0.4", "--modes", "lottery", "reinit"]


def timed_sweep(folder: Path, extra: list[str], sets: list[str]) -> float:
    folder.mkdir()
    (folder / ".git").mkdir()  # a project root of its own: a fresh store, nothing finished yet
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    args = [sys.executable, "-m", "sddkit.cli", "sweep", "--preset", "quick", *GRID, *extra,
            *(a for s in sets for a in ("--set", s)), "--format", "csv"]
    started = time.perf_counter()
    result = subprocess.run(args, cwd=folder, env={**env, "DVC_NO_ANALYTICS": "1"}, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(extra)} failed:\n{result.stderr[-3000:]}")
    print(result.stdout.strip(), flush=True)
    if "--jobs" not in extra or extra[extra.index("--jobs") + 1] != "1":
        overlap(folder)
    return seconds


def overlap(folder: Path) -> None:
    """From the project's store: each reinit cell's start against its twin's end (the round-level DAG)."""
    from mlflow import MlflowClient
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    exp = client.get_experiment_by_name("sddkit")
    runs = client.search_runs([exp.experiment_id], "tags.`sddkit.kind` = 'trajectory'")
    by = {(r.data.params["noise.ratio"], r.data.params["retrain.mode"]): r.info for r in runs}
    for (ratio, mode), info in sorted(by.items()):
        if mode == "reinit" and (ratio, "lottery") in by:
            twin = by[(ratio, "lottery")]
            ahead = (twin.end_time - info.start_time) / 1000
            print(f"  reinit noise.ratio={ratio}: started {ahead:.1f} s before its twin finished "
                  f"({(info.end_time - twin.end_time) / 1000:.1f} s after it, it finished)", flush=True)
    # The time with at most one trajectory running, after the first start and before the last end.
    edges = sorted([(r.start_time, 1) for r in by.values()] + [(r.end_time, -1) for r in by.values()])
    alone, running, last = 0.0, 0, edges[0][0]
    for at, step in edges:
        if running == 1:
            alone += (at - last) / 1000
        running, last = running + step, at
    print(f"  one trajectory alone (a core idle) for {alone:.1f} s in all", flush=True)


def ray_overhead(cells: int = 8) -> None:
    """Ray's start-up as the executor starts it, and the submit → first-line latency of a task with the
    executor's options (the first on a worker Ray prestarted, then warm)."""
    import ray

    from sddkit import executors
    started = time.perf_counter()
    executors.start_ray(ray, None, {"MLFLOW_TRACKING_URI": "sqlite:////tmp/unused.db"})
    init_s = time.perf_counter() - started

    @ray.remote
    def first_line(submitted: float) -> float:
        return time.time() - submitted

    task = first_line.options(num_cpus=1, num_gpus=0, max_retries=3, retry_exceptions=False)
    cold = ray.get(task.remote(time.time()))
    warm = [ray.get(task.remote(time.time())) for _ in range(cells)]
    round_trip = []
    for _ in range(cells):
        t = time.perf_counter()
        ray.get(task.remote(time.time()))
        round_trip.append(time.perf_counter() - t)
    ray.shutdown()
    print(f"ray start-up (ray.init, {os.cpu_count()} CPUs): {init_s:.2f} s")
    print(f"per cell, submit -> task running: first (a prestarted worker) {cold:.2f} s, warm "
          f"{sum(warm) / len(warm) * 1000:.1f} ms; full round trip warm {sum(round_trip) / len(round_trip) * 1000:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--only", choices=("sequential", "local", "ray", "overhead"), action="append")
    args = parser.parse_args()
    only = set(args.only or ("sequential", "local", "ray", "overhead"))
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        times = {}
        if "sequential" in only:
            times["sequential"] = timed_sweep(Path(tmp) / "sequential", ["--jobs", "1"], args.sets)
        if "local" in only:
            times["local"] = timed_sweep(Path(tmp) / "local", ["--executor", "local", "--jobs", "2"], args.sets)
        if "ray" in only:
            times["ray"] = timed_sweep(Path(tmp) / "ray", ["--executor", "ray"], args.sets)
    base = times.get("sequential")
    for name, seconds in times.items():
        ratio = f"  ratio {seconds / base:.3f}" + ("  (target ≤ 0.55)" if name != "sequential" else "") if base else ""
        print(f"{name:>10}: {seconds:7.1f} s{ratio}", flush=True)
    if "overhead" in only:
        ray_overhead()


if __name__ == "__main__":
    main()

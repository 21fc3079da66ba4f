"""What `sddkit ls` costs on a lab-sized store, beside `python -c "import torch"` and `mlflow runs list`.

    python bench/ls.py                          # 100 trajectories of 33 rounds: ~5 min to build, ~1 min to time
    python bench/ls.py --trajectories 10 --rounds 5 --repeats 3    # a quick look
    python bench/ls.py --store /tmp/ls-store    # build once into that folder, reuse it on the next run

The store is made through MLflow's own API, no training: each trajectory is a finished parent run with the full
config as params, its provenance tags, its per-round curve and summary metrics, and one finished round run per
round (dense round 0 included) carrying the config params, the round's metrics and a short per-epoch history, as
the engine logs them (quick preset's shape: 32 pruning rounds). Each command is timed as a child of a fresh small
Python parent, which reports the wall time and the child's peak resident memory (``ru_maxrss`` of
``RUSAGE_CHILDREN``). Repeats are interleaved (A B C, A B C, ...) so drift in the machine's load hits every
command alike; the table gives min and median. Targets (issue 26): `ls` below `import torch` in time, and under
300 MB.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "bench-ls"
LIMIT_MB = 300
# Run in a fresh interpreter: the child's wall time, CPU time (user + system: what the command itself spent, which
# a busy neighbour does not inflate as it does the wall time) and peak RSS (Linux reports ru_maxrss in KiB).
PROBE = ("import resource, subprocess, sys, time, json; t = time.perf_counter(); "
         "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).returncode; "
         "wall = time.perf_counter() - t; use = resource.getrusage(resource.RUSAGE_CHILDREN); "
         "print(json.dumps({'rc': rc, 'wall': wall, 'cpu': use.ru_utime + use.ru_stime, "
         "'mb': use.ru_maxrss / 1024}))")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trajectories", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=32, help="pruning rounds after the dense round 0")
    parser.add_argument("--epochs", type=int, default=5, help="per-epoch history points a round logs")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--store", type=Path, default=None, help="build into (or reuse) this folder")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another sddkit checkout (say, of the commit before): its `sddkit ls` timed alongside")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = (args.store or Path(tmp)).resolve() / "project"
        exp = ensure_store(root, args.trajectories, args.rounds, args.epochs)
        commands = measured_commands(root, exp, args.baseline)
        results = time_commands(commands, root, args.repeats)
    report(results, args)


# ---------------------------------------------------------------- the store

def ensure_store(root: Path, count: int, rounds: int, epochs: int) -> str:
    """The experiment ID of a store in ``root`` holding ``count`` finished trajectories (built if absent)."""
    marker = root / "bench-store.json"
    shape = {"trajectories": count, "rounds": rounds, "epochs": epochs}
    if marker.is_file() and json.loads(marker.read_text())["shape"] == shape:
        print(f"store: reusing {root} ({count} trajectories of {rounds + 1} rounds)")
        return json.loads(marker.read_text())["experiment_id"]
    if root.exists():
        raise SystemExit(f"{root} exists and is not a store of this shape: remove it or name another --store")
    root.mkdir(parents=True)
    (root / "params.yaml").write_text(f"tracking:\n  experiment: {EXPERIMENT}\n")
    started = time.perf_counter()
    exp = build_store(root, count, rounds, epochs)
    print(f"store: built {count} trajectories of {rounds + 1} rounds in {root} in "
          f"{time.perf_counter() - started:.0f} s")
    marker.write_text(json.dumps({"shape": shape, "experiment_id": exp}))
    return exp


def build_store(root: Path, count: int, rounds: int, epochs: int) -> str:
    sys.path.insert(0, str(REPO))  # this checkout's sddkit, whatever the environment installed
    from sddkit.config import load_config
    from sddkit.fingerprint import code_hash
    from sddkit.tracking import Tracker
    tracker = Tracker(f"sqlite:///{root}/mlflow.db", root)
    exp = tracker.experiment_id(EXPERIMENT)
    code = code_hash()
    ratios = (0.1, 0.2, 0.3, 0.4, 0.5)
    for i in range(count):
        cfg = load_config(preset="quick", overrides={"seed": i // len(ratios), "noise.ratio": ratios[i % len(ratios)],
                                               "prune.rounds": rounds, "tracking.experiment": EXPERIMENT})
        fake_trajectory(tracker, exp, cfg, root, code, rounds, epochs, 1_700_000_000_000 + 10_000_000 * i)
        if (i + 1) % 10 == 0:
            print(f"  {i + 1}/{count} trajectories", flush=True)
    return exp


def fake_trajectory(tracker, exp: str, cfg, root: Path, code: str, rounds: int, epochs: int, t0: int) -> str:
    """A finished trajectory as the engine logs it, with made-up numbers (a double-descent-ish curve)."""
    from mlflow.entities import Metric, Param, RunTag
    from sddkit.tracking import PARENT_METRICS, param_text, run_label, trajectory_tags
    client = tracker.client
    params = [Param(k, param_text(v)) for k, v in cfg.flat().items()]
    parent = client.create_run(exp, start_time=t0, tags=trajectory_tags(cfg, root, code),
                               run_name=run_label(cfg)).info.run_id
    for i in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
        client.log_batch(parent, params=params[i:i + 100])
    curve = []
    for r in range(rounds + 1):
        stamp = t0 + 1000 * (r + 1)
        child = client.create_run(exp, start_time=stamp, run_name=f"{cfg.name}/round-{r:02d}", tags={
            "mlflow.parentRunId": parent, "sddkit.kind": "round", "sddkit.round": str(r)}).info.run_id
        own = [*params, Param("round", str(r)), Param("sparsity_target", f"{1 - 0.8 ** r:.6g}")]
        for i in range(0, len(own), 100):
            client.log_batch(child, params=own[i:i + 100])
        values = round_values(r)
        history = [Metric(f"epoch/{k}", values[k] + 0.01 * e, stamp, e) for e in range(epochs)
                   for k in ("test_acc", "train_acc_noisy")]
        client.log_batch(child, metrics=history + [Metric(k, v, stamp, r) for k, v in values.items()],
                         tags=[RunTag("sddkit.round_seconds", "3.2")])
        client.set_terminated(child, "FINISHED", end_time=stamp + 900)
        client.log_batch(parent, metrics=[Metric(k, values[k], stamp, r) for k in PARENT_METRICS if k in values])
        curve.append(values)
    accs = [v["test_acc"] for v in curve]
    summary = {"summary/dense_test_acc": accs[0], "summary/minimum_test_acc": min(accs),
               "summary/peak_test_acc": max(accs[accs.index(min(accs)):]), "summary/last_test_acc": accs[-1],
               "phase/light_first": 1.0, "phase/critical_first": 8.0, "phase/sparse_first": 20.0}
    client.log_batch(parent, metrics=[Metric(k, v, t0, 0) for k, v in summary.items()],
                     tags=[RunTag("mlflow.note.content", "made by bench/ls.py: no training")])
    client.set_terminated(parent, "FINISHED", end_time=t0 + 1000 * (rounds + 2))
    return parent


def round_values(r: int) -> dict[str, float]:
    sparsity = 1 - 0.8 ** r
    dip = 6.0 * max(0.0, 1 - abs(r - 8) / 6)  # test accuracy dips near round 8, then recovers, then collapses
    return {"round": float(r), "sparsity": sparsity, "remaining": 1 - sparsity, "test_acc": 80.0 - dip - max(0, r - 26),
            "test_loss": 0.7, "train_acc_noisy": max(60.0, 99.0 - 1.2 * max(0, r - 12)), "train_acc_clean": 90.0,
            "memorized": 50.0, "learning_distance": 0.1 * r, "distance_from_start": 0.2 * r, "round_seconds": 3.2}


# ---------------------------------------------------------------- the timings

def measured_commands(root: Path, exp: str, baseline: Path | None = None) -> dict[str, list[str]]:
    """Each command's argv; the console scripts beside this interpreter (a pyenv shim would add its own start).
    Every command runs with this checkout first on PYTHONPATH; ``baseline``'s `ls` with that checkout instead."""
    bin_dir = Path(sys.executable).parent
    sddkit = [str(bin_dir / "sddkit")] if (bin_dir / "sddkit").exists() else [sys.executable, "-m", "sddkit.cli"]
    mlflow = [str(bin_dir / "mlflow")] if (bin_dir / "mlflow").exists() else [sys.executable, "-m", "mlflow"]
    return {
        "sddkit ls": [*sddkit, "ls"],
        'python -c "import torch"': [sys.executable, "-c", "import torch"],
        f"mlflow runs list --experiment-id {exp}": [*mlflow, "runs", "list", "--experiment-id", exp],
        'python -c "import mlflow"': [sys.executable, "-c", "import mlflow"],
        **({f"sddkit ls ({baseline.name})": ["env", f"PYTHONPATH={baseline.resolve()}", *sddkit, "ls"]}
           if baseline else {}),
    }


def time_commands(commands: dict[str, list[str]], root: Path, repeats: int) -> dict[str, list[dict]]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db"}
    results: dict[str, list[dict]] = {name: [] for name in commands}
    for _ in range(repeats):
        for name, argv in commands.items():
            probe = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=root, env=env, capture_output=True,
                                   text=True, check=True)
            got = json.loads(probe.stdout)
            if got["rc"] != 0:
                raise SystemExit(f"{name} failed (exit {got['rc']}): {probe.stderr.strip()[-400:]}")
            results[name].append(got)
    return results


def report(results: dict[str, list[dict]], args) -> None:
    print(f"\n{args.trajectories} trajectories x {args.rounds + 1} rounds, {args.repeats} repeats, "
          f"{platform.node()} ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}), python {platform.python_version()}")
    print(f"| command | wall min s | wall median s | CPU min s | CPU median s | peak MB |\n|---|---|---|---|---|---|")
    for name, runs in results.items():
        walls, cpus = [r["wall"] for r in runs], [r["cpu"] for r in runs]
        print(f"| `{name}` | {min(walls):.2f} | {statistics.median(walls):.2f} | {min(cpus):.2f} | "
              f"{statistics.median(cpus):.2f} | {max(r['mb'] for r in runs):.0f} |")
    names = list(results)
    ls, torch = results[names[0]], results[names[1]]
    ratio = statistics.median(r["wall"] for r in ls) / statistics.median(r["wall"] for r in torch)
    cpu_ratio = statistics.median(r["cpu"] for r in ls) / statistics.median(r["cpu"] for r in torch)
    peak = max(r["mb"] for r in ls)
    print(f"\nls / import torch (median wall): {ratio:.2f}  -> {'PASS' if ratio < 1 else 'FAIL'} (target < 1)")
    print(f"ls / import torch (median CPU):  {cpu_ratio:.2f}  -> {'PASS' if cpu_ratio < 1 else 'FAIL'} (target < 1)")
    print(f"ls peak memory: {peak:.0f} MB  -> {'PASS' if peak < LIMIT_MB else 'FAIL'} (target < {LIMIT_MB} MB)")


if __name__ == "__main__":
    main()

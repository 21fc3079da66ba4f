"""`dvc repro` of a fresh clone, pipelined (today's dvc.yaml: lottery and reinit side by side in one sweep
stage) against the old shape (the two trajectories one after the other: a `lottery` stage, then a `reinit`
stage, as dvc.yaml had them), one after the other in one invocation, each in a fresh clone of this checkout's
HEAD (commit first: uncommitted edits are not in a clone). Then where the time outside training goes.

For each shape it prints the wall time of `dvc repro`, its ratio (target: pipelined ≤ 0.55× the old shape),
and the time outside training: wall time minus the time in which at least one round trains (the union of every
round's training interval of both trajectories: the old shape, their sum; pipelined, the lottery's rounds and
whatever of the reinit's does not overlap them). The target is ≤ 5% of the wall time. Its parts, from the store:

- before the first run: DVC, preparing the data (a stage of its own in the old shape), imports, data loading;
- inside the runs: a run's life minus its rounds' (opening, closing files, waiting for a twin's round);
- per round: a round run's life minus its round_seconds (MLflow writes: metrics, mask, weights);
- after the last run: the compare stage (it draws every file) and DVC's closing.

    python bench/pipeline.py                           # the real measurement (~10 min on 2 cores)
    python bench/pipeline.py --set prune.rounds=3      # a quick check of the script
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def clone(into: Path, sets: list[str]) -> Path:
    """A fresh clone of HEAD with ``sets`` (key=value) written into its params.yaml."""
    subprocess.run(["git", "clone", "-q", str(ROOT), str(into)], check=True)
    params = yaml.safe_load((into / "params.yaml").read_text())
    for item in sets:
        key, value = item.split("=", 1)
        *path, last = key.split(".")
        node = params
        for part in path:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[last] = yaml.safe_load(value)
    (into / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return into


def old_shape(repo: Path) -> None:
    """dvc.yaml as it was before the pipelined stage: `prepare`, `lottery`, then `reinit` (it depends on lottery's
    run.json), each its own process."""
    pipeline = yaml.safe_load((repo / "dvc.yaml").read_text())
    stages = pipeline["stages"]
    both = stages.pop("trajectories")
    data = [o for o in both["outs"] if o.startswith("data/")]
    prepare = {"cmd": "sddkit prepare --params params.yaml --out data/prepared",
               "deps": ["sddkit/presets/${preset}.yaml", "sddkit/prepare.py", "sddkit/config.py", "sddkit/data.py",
                        "sddkit/noise.py", "sddkit/sources.py"],
               "params": ["preset", "seed", "data", "noise"], "outs": data}
    common = "sddkit run --params params.yaml --prepared data/prepared"
    lottery = {**both, "cmd": f"{common} --run-file results/lottery/run.json --set retrain.mode=lottery "
                              f"--set tracking.run_name=lottery", "deps": [*data, *both["deps"]],
               "outs": ["results/lottery/run.json"]}
    reinit = {**both, "cmd": f"{common} --run-file results/reinit/run.json --set retrain.mode=reinit "
                             f"--set retrain.masks_from=lottery --set tracking.run_name=reinit",
              "deps": ["results/lottery/run.json", *data, *both["deps"]], "outs": ["results/reinit/run.json"]}
    compare = stages.pop("compare")
    pipeline["stages"] = {"prepare": prepare, "lottery": lottery, "reinit": reinit, "compare": compare}
    (repo / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))


def repro(repo: Path) -> tuple[float, float, float]:
    """`dvc repro` in ``repo``: (start, end) as epoch seconds, and the wall time."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(DVC_NO_ANALYTICS="1", PYTHONPATH=str(repo),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")
    began, clock = time.time(), time.perf_counter()
    done = subprocess.run(["dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True)
    wall, ended = time.perf_counter() - clock, time.time()
    if done.returncode != 0:
        raise SystemExit(f"dvc repro failed in {repo}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return began, ended, wall


def breakdown(repo: Path, began: float, ended: float, wall: float) -> dict:
    """The seconds in which a round trains and the parts outside them, from the repo's store."""
    from mlflow import MlflowClient
    client = MlflowClient(f"sqlite:///{repo}/mlflow.db")
    runs = {name: client.get_run(json.loads((repo / "results" / name / "run.json").read_text())["run_id"])
            for name in ("lottery", "reinit")}
    rounds = {}
    for name, run in runs.items():
        query = f"tags.`mlflow.parentRunId` = '{run.info.run_id}' and attributes.status = 'FINISHED'"
        rounds[name] = sorted(client.search_runs([run.info.experiment_id], query),
                              key=lambda r: int(r.data.tags["sddkit.round"]))
    seconds = {name: [r.data.metrics["round_seconds"] for r in rs] for name, rs in rounds.items()}
    copied = rounds["reinit"][0].data.metrics.get("copied_round_seconds")  # round 0 copied: not trained again
    # Training: the union of every round's training interval (it ends as its round run ends, but for the round's
    # writes, ~0.1 s), both trajectories: time in which at least one core trains.
    spans = sorted((r.info.end_time / 1000 - r.data.metrics["round_seconds"], r.info.end_time / 1000)
                   for rs in rounds.values() for r in rs)
    training, reach = 0.0, float("-inf")
    for start, end in spans:
        training += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    life = lambda r: (r.info.end_time - r.info.start_time) / 1000  # noqa: E731
    starts = min(r.info.start_time for r in runs.values()) / 1000
    last_end = max(r.info.end_time for r in runs.values()) / 1000
    in_rounds = sum(life(r) - r.data.metrics["round_seconds"] for rs in rounds.values() for r in rs)
    return {"wall": wall, "training": training, "outside": wall - training,
            "before the first run (dvc, prepare, imports, data)": starts - began,
            "before the first round trains": spans[0][0] - began,
            "after the last run (compare, dvc)": ended - last_end,
            "round runs beyond round_seconds (MLflow writes)": in_rounds,
            "reinit round 0 (copied from the lottery's)" if copied is not None else "reinit round 0 (trained)":
                seconds["reinit"][0],
            "sum of round_seconds, lottery / reinit": f"{sum(seconds['lottery']):.1f} / {sum(seconds['reinit']):.1f}",
            "the reinit ended after the lottery by": (runs["reinit"].info.end_time - runs["lottery"].info.end_time)
            / 1000}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--set", dest="sets", action="append", default=[], help="a params.yaml key=value")
    parser.add_argument("--keep", action="store_true", help="keep the clones (their stores) for a look")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}; {' '.join(args.sets) or 'params.yaml'}",
          flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="sddkit-bench-pipeline-"))
    results = {}
    try:
        for shape in ("sequential", "pipelined"):
            repo = clone(tmp / shape, args.sets)
            if shape == "sequential":
                old_shape(repo)
            began, ended, wall = repro(repo)
            results[shape] = breakdown(repo, began, ended, wall)
            print(f"{shape}: dvc repro {wall:.1f} s", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"clones kept in {tmp}")
    base = results["sequential"]["wall"]
    for shape, parts in results.items():
        ratio = parts["wall"] / base
        print(f"\n{shape:>10}: {parts['wall']:7.1f} s  ratio {ratio:.3f}"
              + ("  (target ≤ 0.55)" if shape == "pipelined" else ""))
        print(f"{'':>12}training (a round on a core) {parts['training']:.1f} s; outside it {parts['outside']:.1f} s "
              f"= {100 * parts['outside'] / parts['wall']:.1f}% of the wall time (target ≤ 5%)")
        for key, value in parts.items():
            if key not in ("wall", "training", "outside"):
                print(f"{'':>14}{key}: {value if isinstance(value, str) else f'{value:.1f} s'}")


if __name__ == "__main__":
    main()

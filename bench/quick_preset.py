"""Run the quick preset for seeds 0, 1, 2 (one torch thread each, `--jobs` at a time) and print, per seed,
the landmarks, the dip/rise/drop margins against the issue's criteria, and the wall time of the trajectory.

    python bench/quick_preset.py [--jobs 2] [--seeds 0 1 2] [--set key=value ...]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
from pathlib import Path


def one_seed(args: tuple[int, list[str], str]) -> dict:
    seed, sets, folder = args
    from sddkit import analysis, runner
    from sddkit.config import load_config
    cfg = load_config(overrides=[*sets, f"seed={seed}", f"tracking.uri=sqlite:///{folder}/seed{seed}.db"])
    started = time.perf_counter()
    _, rows = runner.run_trajectory(cfg, Path(folder), quiet=True)
    ph = analysis.phases(rows, cfg.analysis.interpolation_threshold)
    acc = lambda i: rows[i]["test_acc"]  # noqa: E731
    sp = lambda i: 100 * rows[i]["sparsity"]  # noqa: E731
    return {"seed": seed, "seconds": time.perf_counter() - started, "rows": rows,
            "dense": acc(ph.dense), "minimum": (acc(ph.minimum), sp(ph.minimum)),
            "peak": (acc(ph.peak), sp(ph.peak)), "last": (acc(ph.last), sp(ph.last)),
            **analysis.double_descent_margins(rows, ph), "ok": analysis.shows_double_descent(rows, ph)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--output", type=Path, default=None, help="write curves.png and per-seed CSVs here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        jobs = [(s, args.sets, folder) for s in args.seeds]
        with mp.get_context("spawn").Pool(args.jobs) as pool:
            found = pool.map(one_seed, jobs)
    print("seed  dense  minimum (@sparsity)  peak (@sparsity)  last (@sparsity)   dip  rise  drop  ok  seconds")
    for r in found:
        print(f"{r['seed']:>4}  {r['dense']:5.1f}  {r['minimum'][0]:5.1f} ({r['minimum'][1]:5.2f}%)   "
              f"{r['peak'][0]:5.1f} ({r['peak'][1]:5.2f}%)  {r['last'][0]:5.1f} ({r['last'][1]:5.2f}%)  "
              f"{r['dip']:4.1f}  {r['rise']:4.1f}  {r['drop']:4.1f}  {'yes' if r['ok'] else 'NO ':3}  {r['seconds']:6.1f}")
    print(f"criteria: dip ≥ 3, rise ≥ 8, drop ≥ 5 points; all seeds pass: {all(r['ok'] for r in found)}")
    if args.output:
        write_curves(found, args.output)


def write_curves(found: list[dict], folder: Path) -> None:
    from sddkit import analysis, plots, results
    folder.mkdir(parents=True, exist_ok=True)
    series = {}
    for r in found:
        rows = r["rows"]
        (folder / f"seed{r['seed']}.csv").write_text(results.table_csv(rows, analysis.phases(rows)))
        series[f"seed {r['seed']}"] = {k: [row[k] for row in rows] for k in ("remaining", "test_acc", "train_acc_noisy")}
    (folder / "curves.png").write_bytes(plots.curve_png(series, "quick preset, seeds " +
                                                        ", ".join(str(r["seed"]) for r in found)))


if __name__ == "__main__":
    main()

"""What ``sddkit run --seeds 0 1 2 --jobs N`` does: one trajectory per seed, in parallel worker processes,
grouped by the tag ``sddkit.group`` (``Config.group_hash``), then a mean ± std table and curve.

The seed moves the initialisation, the data order and, unless ``noise.seed`` is pinned, the noise draw.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import multiprocessing
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from rich.console import Console

from sddkit import analysis, lifeline, plots, results, runner
from sddkit.config import Config, ConfigError
from sddkit.paths import tracking_uri
from sddkit.tracking import Tracker, log_files

console = Console(stderr=True)
ARTIFACT_DIR = "replicates"  # where each replicate's parent run keeps the group's mean ± std files


class ReplicateFailed(RuntimeError):
    """One or more seeds ended with an error; the message names them."""


@dataclasses.dataclass
class Replicate:
    seed: int
    run_id: str
    rows: list[dict]


def seeded(cfg: Config, seed: int, parallel: bool) -> Config:
    """``cfg`` with ``seed`` replaced; in parallel workers one torch thread where torch would take every core."""
    threads = cfg.train.threads or (1 if parallel else 0)
    return dataclasses.replace(cfg, seed=seed, train=dataclasses.replace(cfg.train, threads=threads))


def run_one(cfg: Config, root: Path, force: bool, results_dir: Path | None) -> Replicate:
    """A worker: one trajectory, quiet apart from its timestamped lines (``runner.LineReporter``)."""
    folder = results_dir / f"seed-{cfg.seed}" if results_dir else None
    store, rows = runner.run_trajectory(cfg, root, force=force, results_dir=folder, quiet=True,
                                        reporter=runner.LineReporter(f"seed {cfg.seed}"))
    return Replicate(cfg.seed, store.run_id, rows)


def worker_started(parent: int) -> None:
    """Each worker's initializer: die with the parent (even by kill -9), and take SIGTERM (the parent's death,
    or ``abandon``) as Ctrl-C, so the trajectory being trained is marked KILLED and its lease released."""
    lifeline.stop_like_ctrl_c(signal.SIGTERM)
    lifeline.die_with_parent(parent)


def work(cfg: Config, root: Path, force: bool, results_dir: Path | None) -> Replicate:
    """``run_one`` in a worker, which leaves once interrupted: its parent is gone or abandoning it, and a
    worker whose parent was killed would otherwise wait for its next job forever."""
    try:
        return run_one(cfg, root, force, results_dir)
    except (KeyboardInterrupt, SystemExit):  # the trajectory is marked KILLED by now
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)


def run_replicates(cfg: Config, root: Path, seeds: list[int], jobs: int = 1, force: bool = False,
                   results_dir: Path | None = None, table_format: str = "table") -> list[Replicate]:
    """One trajectory per seed (``jobs`` at a time), then the group's mean ± std table (``table_format``) and curve."""
    if len(set(seeds)) != len(seeds):
        raise ReplicateFailed(f"--seeds {' '.join(map(str, seeds))}: each seed once, please")
    tracker = Tracker(tracking_uri(cfg.tracking.uri, root), root)
    tracker.check_writable()  # workers may start together on a fresh store: Tracker creates it once, under a lock
    configs = [seeded(cfg, s, parallel=jobs > 1) for s in seeds]
    console.print(f"{len(seeds)} replicates of {cfg.name} (group {cfg.group_hash()}), {min(jobs, len(seeds))} "
                  f"at a time", highlight=False)
    done = run_all(configs, root, jobs, force, results_dir)
    group = summarise(cfg, done)
    log_group(tracker, done, group)
    if results_dir is not None:
        results.write_folder(results_dir, group)
    print_table(results.mean_rows([r.rows for r in done]), [r.seed for r in done], cfg, table_format)
    where = results_dir / "curve_mean_std.png" if results_dir else f"runs:/{done[0].run_id}/{ARTIFACT_DIR}/"
    console.print(f"mean ± std curve: {where} (also under {ARTIFACT_DIR}/ in each replicate's run)",
                  highlight=False)
    names = ", ".join(tracker.client.get_run(r.run_id).info.run_name for r in done)
    runner.print_lines(runner.where_lines(tracker, cfg, f"runs {names} ({', '.join(r.run_id for r in done)})",
                                          cfg.name), to_stderr=table_format != "table")
    return done


def run_all(configs: list[Config], root: Path, jobs: int, force: bool, results_dir: Path | None) -> list[Replicate]:
    """Run every config; raise ReplicateFailed naming the seeds that failed once all have ended."""
    if jobs <= 1:
        outcomes = [attempt(run_one, c, root, force, results_dir) for c in configs]
    else:
        outcomes = run_parallel(configs, root, jobs, force, results_dir)
    failed = [(c.seed, o) for c, o in zip(configs, outcomes) if isinstance(o, BaseException)]
    if failed and all(isinstance(exc, ConfigError) for _, exc in failed):
        raise failed[0][1]  # the config is wrong for every seed alike: one message, exit 2, as for one run
    if failed:
        detail = "; ".join(f"seed {seed}: {exc}" for seed, exc in failed)
        raise ReplicateFailed(f"{len(failed)} of {len(configs)} replicates failed ({detail}); rerun the same "
                              f"command to continue them (finished seeds are reported, not redone)")
    return outcomes


def run_parallel(configs: list[Config], root: Path, jobs: int, force: bool, results_dir: Path | None) -> list:
    """Each config's Replicate or exception; Ctrl-C drops the queued seeds and stops the running ones."""
    # spawn: a fresh interpreter per worker (fork would copy torch's and sqlite's state).
    pool = ProcessPoolExecutor(max_workers=min(jobs, len(configs)), mp_context=multiprocessing.get_context("spawn"),
                               initializer=worker_started, initargs=(os.getpid(),))
    try:
        futures = [pool.submit(work, c, root, force, results_dir) for c in configs]
        outcomes = [attempt(f.result) for f in futures]
    except BaseException:  # Ctrl-C above all: the CLI then says how to continue and exits 130
        abandon(pool)
        raise
    pool.shutdown()
    return outcomes


def abandon(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and end the workers now (a rerun continues each from its last round).

    SIGTERM stops a worker as Ctrl-C does (``worker_started``): it marks its run KILLED and exits. One that
    has not exited after 10 s is killed."""
    workers = list((pool._processes or {}).values())  # no public handle before Python 3.14's terminate_workers
    pool.shutdown(wait=False, cancel_futures=True)
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.join(timeout=10)
        if worker.is_alive():
            worker.kill()


def attempt(fn, *args):
    """``fn(*args)``, or the exception it raised (other replicates keep running)."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - reported with its seed once all replicates have ended
        return exc


# ---------------------------------------------------------------- mean ± std

def summarise(cfg: Config, done: list[Replicate]) -> dict[str, bytes]:
    """The group's files: mean ± std by round (CSV) and the mean ± std curve (PNG)."""
    rows = results.mean_rows([r.rows for r in done])
    keys = results.STD_KEYS
    series = {k: [r[k] for r in rows] for k in ("remaining", *keys, *(f"{k}_std" for k in keys))}
    seeds = " ".join(str(r.seed) for r in done)
    title = f"{cfg.name}: mean ± std over seeds {seeds} (group {cfg.group_hash()})"
    return {"mean_std.csv": mean_csv(rows).encode(), "curve_mean_std.png": plots.curve_png({cfg.name: series}, title)}


def mean_csv(rows: list[dict]) -> str:
    columns = ("round", "sparsity", "remaining", *(c for k in results.STD_KEYS for c in (k, f"{k}_std")))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({**r, "round": int(round(r["round"]))} for r in rows)
    return out.getvalue()


def log_group(tracker: Tracker, done: list[Replicate], files: dict[str, bytes]) -> None:
    """Every replicate's parent run keeps the group's files under ``replicates/``."""
    stored = {f"{ARTIFACT_DIR}/{name}": content for name, content in files.items()}
    for r in done:
        log_files(tracker.client, r.run_id, stored)
        tracker.client.set_tag(r.run_id, "sddkit.replicate_seeds", " ".join(str(x.seed) for x in done))


def print_table(rows: list[dict], seeds: list[int], cfg: Config, table_format: str = "table") -> None:
    title = f"mean ± std over seeds {' '.join(map(str, seeds))} (phases of the mean)"
    ph = analysis.phases(rows, cfg.analysis.interpolation_threshold, cfg.analysis.light_tolerance)
    std = results.STD_KEYS if len(seeds) > 1 else ()  # one seed has no spread: no std column rather than 0.0
    results.print_table(results.closing_table(rows, ph, ("sparsity", "train_acc_noisy", "test_acc"), table_format,
                                              title, std))

"""The bytes a 31-round ResNet-18 lottery trajectory stores: sparse checkpoints against the dense weights.pt of before.

    python bench/storage.py                       # ~70 s on 2 CPU cores
    python bench/storage.py --rounds 5            # a quick look
    python bench/storage.py --reinit              # and its reinit twin (~2 min)

A real trajectory (``runner.run_trajectory``, round 0 plus ``--rounds`` lottery rounds at rate 0.2, global
magnitude pruning) of ResNet-18 on tiny data: 20 digits of the embedded MNIST-5k at 7×7 (20 more to test on),
one epoch (one step) a round, on the CPU. The data only sets the training time: the bytes depend on the model
and the densities.
Per round it prints the density, the stored weights file, the allowance (1.1 × (kept weights × 4 B + the
never-pruned tensors) + 64 KB) and the dense file the same weights made before (``torch.save`` of the full state
dict, computed from the weights read back through ``read_weights``). Then the trajectory's artifact folder
(init and rewind states, masks, noisy labels, …) as stored, and with every round's weights file dense.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

TINY_RESNET = {
    "model.arch": "resnet18", "data.name": "mnist5k", "data.downsample": 4, "data.train_size": 20,
    "data.test_size": 20, "train.train_eval_size": 20, "train.epochs": 1, "train.batch_size": 20,
    "train.eval_batch_size": 20, "train.milestones": [], "train.optimizer": "sgd", "train.lr": 0.1,
    "train.momentum": 0.9, "train.weight_decay": 1e-4, "train.device": "cpu", "train.threads": 2,
    "noise.kind": "random", "noise.ratio": 0.2, "prune.rate": 0.2, "prune.scope": "global",
    "prune.criterion": "magnitude", "retrain.mode": "lottery", "retrain.rewind_step": 0,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30, help="pruning rounds after the dense round 0")
    parser.add_argument("--reinit", action="store_true", help="then the reinit twin: its bytes and trainings")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="more config overrides")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        cfg, store = run(Path(folder), args.rounds, args.sets)
        print(f"trajectory: {time.perf_counter() - started:.0f} s\n")
        rounds = per_round(store)
        print_rounds(rounds)
        ids = {store.run_id, *(r.info.run_id for r in store.tracker.round_runs(store.run_id))}
        print_totals(experiment_folder(store), rounds, ids)
        if args.reinit:
            reinit_twin(Path(folder), args.rounds, args.sets, store.completed)


def run(root: Path, rounds: int, sets: list[str]):
    from sddkit import runner
    from sddkit.config import load_config
    overrides = {**TINY_RESNET, "prune.rounds": rounds, "tracking.uri": f"sqlite:///{root}/mlflow.db"}
    cfg = load_config(overrides=[*(f"{k}={v}" for k, v in overrides.items()), *sets])
    store, _ = runner.run_trajectory(cfg, root, quiet=True)
    return cfg, store


def per_round(store) -> list[dict]:
    """Per finished round: density, stored bytes, the allowance and the dense bytes of the same weights."""
    from sddkit import checkpoint
    from sddkit.checkpoint import torch_bytes
    from sddkit.tracking import read_mask, read_weights
    tracker, out = store.tracker, []
    for run in tracker.round_runs(store.run_id):
        run_id = run.info.run_id
        masks = read_mask(tracker, run_id)
        weights = read_weights(tracker, run_id, masks)
        kept, total = sum(int(m.sum()) for m in masks.values()), sum(m.numel() for m in masks.values())
        values = checkpoint.payload(weights, masks)  # what any exact format must hold
        out.append({"round": int(run.data.tags["sddkit.round"]), "density": kept / total,
                    "stored": artifact(store, run_id, "weights.pt").stat().st_size,
                    "values": values, "allowed": 1.1 * values + 64 * 1024,
                    "dense": len(torch_bytes(weights)), "mask": artifact(store, run_id, "mask.npz").stat().st_size})
    return out


def artifact(store, run_id: str, path: str) -> Path:
    uri = store.client.get_run(run_id).info.artifact_uri
    return Path(uri.removeprefix("file://")) / path


def experiment_folder(store) -> Path:
    """mlruns/<experiment>: the parent run's folder and its round runs' (the experiment holds nothing else)."""
    return artifact(store, store.run_id, "").parent.parent


def print_rounds(rounds: list[dict]) -> None:
    print("| round | density | weights.pt, sparse (bytes) | allowance | dense before (bytes) | sparse/dense |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rounds:
        assert r["stored"] <= r["allowed"], f"round {r['round']}: {r['stored']:,} bytes over {r['allowed']:,.0f}"
        print(f"| {r['round']} | {r['density']:.4%} | {r['stored']:,} | {r['allowed']:,.0f} | {r['dense']:,} | "
              f"{r['stored'] / r['dense']:.3f} |")


def print_totals(folder: Path, rounds: list[dict], run_ids: set[str], start_weights: bool = False) -> int:
    """The bytes of the runs ``run_ids`` in ``folder`` by kind of file, as stored, and as the code before sparse
    checkpoints stored them: every round's weights dense, the init and the rewind state dense (2 dense states)
    and, with ``start_weights`` (reinit), each pruned round's start weights dense. Returns the total."""
    kinds = Counter()
    for f in folder.rglob("*"):
        if f.is_file() and f.relative_to(folder).parts[0] in run_ids:
            kinds[f.name if f.parent.name == "state" or f.name == "weights.pt" else "other"] += f.stat().st_size
    sparse, dense = sum(r["stored"] for r in rounds), sum(r["dense"] for r in rounds)
    states, dense_state = kinds["init.pt"] + kinds["rewind.pt"], rounds[0]["dense"]
    masks = sum(r["mask"] for r in rounds)
    total = sum(kinds.values())
    before = total - sparse - states + dense + 2 * dense_state + (len(rounds) - 1) * dense_state * start_weights
    mb = lambda n: f"{n / 1e6:,.2f} MB"  # noqa: E731
    print(f"\n{len(rounds)} rounds; the trajectory's artifacts:")
    print(f"  rounds' weights.pt     sparse {mb(sparse):>10}   dense before {mb(dense):>10}   "
          f"(the values alone: {mb(sum(r['values'] for r in rounds))})")
    print(f"  init + rewind states   now {mb(states):>10}   before {mb(2 * dense_state):>10} (the init is rebuilt "
          f"from the seed; at rewind step 0 the rewind state is the init)")
    if start_weights:
        print(f"  start_weights.pt       now {mb(0):>10}   before {mb((len(rounds) - 1) * dense_state):>10} "
              f"(re-derived from (seed, round))")
    print(f"  masks                  {mb(masks):>10}")
    print(f"  everything else        {mb(kinds['other'] - masks):>10} (metrics, labels, curve, summary)")
    print(f"  total                  now {mb(total):>10}   before {mb(before):>10}")
    print(f"  goal ≤ 250 MB: {'met' if total <= 250e6 else 'not met'}")
    return total


def reinit_twin(root: Path, rounds: int, sets: list[str], lottery) -> None:
    """The reinit twin of the lottery trajectory: its bytes, and how many rounds it trained."""
    from sddkit import runner
    from sddkit.config import load_config
    overrides = {**TINY_RESNET, "prune.rounds": rounds, "tracking.uri": f"sqlite:///{root}/mlflow.db",
                 "retrain.mode": "reinit"}
    cfg = load_config(overrides=[*(f"{k}={v}" for k, v in overrides.items()), *sets])
    started = time.perf_counter()
    store, rows = runner.run_trajectory(cfg, root, quiet=True)
    seconds = time.perf_counter() - started
    runs = store.tracker.round_runs(store.run_id)
    copied = [r for r in runs if "sddkit.copied_from" in r.data.tags]
    print(f"\nreinit twin: {seconds:.0f} s; {len(runs) - len(copied)} rounds trained of {len(runs)} "
          f"(round 0 copied from the lottery twin: {len(copied) == 1}); round 0 took {rows[0]['round_seconds']:.2f} s "
          f"against the lottery's {lottery[0]['round_seconds']:.2f} s of training")
    ids = {store.run_id, *(r.info.run_id for r in runs)}
    print_totals(experiment_folder(store), per_round(store), ids, start_weights=True)


if __name__ == "__main__":
    main()

"""A trajectory's runs, through a ``tracking.Tracker``: ``TrajectoryRun`` (the engine's ``trajectory.Store``: a
parent run and one nested run per round) and the reads of a round's files."""
from __future__ import annotations

import json
import sys
import time
import zipfile
from typing import TYPE_CHECKING

from sddkit.store import TrackingError
from sddkit.listing import PARENT_METRICS, ROUND

if TYPE_CHECKING:  # torch (``checkpoint``) only where a file is packed or read: `sddkit ls` never does
    import torch

INIT_DIGEST = "sddkit.init_sha256"  # a trajectory's init is rebuilt from its seed, never stored: this checks it
# A round's weights: sparse since ``checkpoint``'s format, dense before; one name, so both load alike.
WEIGHTS = "weights.pt"
ROUND_FILES = ("mask.npz", WEIGHTS)  # what a later round, load_round and reinit read of a round
LABELS = "noisy_labels.npy"  # the parent's copy of the labels it trained on


class TrajectoryRun:
    """A parent run; implements ``trajectory.Store``."""

    def __init__(self, tracker, run_id: str, lease=None):
        self.tracker, self.run_id, self.lease = tracker, run_id, lease
        run = tracker.run(run_id)
        self.finished = run.info.status == "FINISHED"
        self.experiment_id, self.name = run.info.experiment_id, run.info.run_name
        self.code_hash = run.data.tags.get("sddkit.code_hash", "")
        self._rounds = tracker.round_runs(run_id, finished_only=False, experiment_id=self.experiment_id)
        self._kept = contiguous([r for r in self._rounds if r.info.status == "FINISHED"])
        self.completed = [round_row(r) for r in self._kept]
        self._started: tuple[int, str] | None = None  # (round, run ID) of the round run under way
        self._published: tuple[int, str] | None = None  # (round, run ID) whose mask publish_mask stored

    @property
    def client(self):
        return self.tracker.client

    def close_interrupted_rounds(self) -> None:
        """Rounds left RUNNING by a dead owner: KILLED (redone, never counted)."""
        for r in self._rounds:
            if r.info.status == "RUNNING":
                self.tracker.set_status(r.info.run_id, "KILLED")

    def complete_parent_curve(self) -> None:
        """Fill the parent curve's gaps (a kill between a round run turning FINISHED and the parent's metrics)."""
        logged = {m.step for m in self.tracker.metric_history(self.run_id, "test_acc")}
        self.tracker.log_metrics(self.run_id, [(k, row[k], row["round"]) for row in self.completed
                                               if row["round"] not in logged for k in PARENT_METRICS if k in row])

    def redo_from(self, first: int) -> None:
        """Retrain round ``first`` on: their runs are marked KILLED and tagged ``sddkit.replaced``."""
        if first > len(self.completed):
            raise TrackingError(f"--redo-from {first}: run {self.run_id} has finished rounds 0–"
                                f"{len(self.completed) - 1} only; rerun without --redo-from to continue it")
        for r in self._rounds:
            if int(r.data.tags["sddkit.round"]) >= first and r.info.status == "FINISHED":
                self.tracker.set_tag(r.info.run_id, "sddkit.replaced", f"redone by --redo-from {first}")
                self.tracker.set_status(r.info.run_id, "KILLED")
        self.completed = self.completed[:first]
        self.tracker.set_tag(self.run_id, "sddkit.redone_from", str(first))

    def check_rounds_kept(self, redo_from: int | None = None) -> None:
        """Before a resume: every finished round it keeps still has its files (the rounds to train build on
        them); else stop in one line offering the repair that keeps the rounds before the first lost one."""
        for run in self._kept[:redo_from]:
            lost = [name for name in ROUND_FILES if name not in self.tracker.artifact_paths(run.info.run_id)]
            if lost:
                k = int(run.data.tags["sddkit.round"])
                keeps = f" and keeps rounds 0–{k - 1}" if k else ""
                raise TrackingError(
                    f"run {run.info.run_id} (round {k} of trajectory run {self.run_id}): {' and '.join(lost)} "
                    f"{'is' if len(lost) == 1 else 'are'} missing, and this resume builds on it; repair it with "
                    f"the same `sddkit run` plus --redo-from {k}: it retrains round {k} on{keeps} (--force would "
                    f"instead start a new run and retrain every round)")

    def restore_labels(self, noisy: torch.Tensor) -> None:
        """Put back a deleted noisy_labels.npy (derived from the config; said, not silent)."""
        from sddkit import checkpoint
        if LABELS not in self.tracker.artifact_paths(self.run_id):
            self.note_rebuilt("labels", f"{LABELS} of run {self.run_id} is missing")
            self.tracker.log_files(self.run_id, {LABELS: checkpoint.npy_bytes(noisy.cpu().numpy())})

    def reopen(self) -> None:
        """A continued run is RUNNING again (it was KILLED, FAILED or, for --redo-from, FINISHED)."""
        self.tracker.set_status(self.run_id, "RUNNING")
        self.finished = False
        self.set_state(None)  # a wait the last owner was stopped in is over

    def check_owner(self) -> None:
        if self.lease is not None:
            self.lease.check()

    def round_run(self, round_index: int) -> str:
        """The ID of round ``round_index``'s run under way (created now if it is not), once the lease is ours."""
        self.check_owner()
        if self._started is None or self._started[0] != round_index:
            self.start_round(round_index)
        return self._started[1]

    # ---- trajectory.Store
    def log_labels(self, noisy: torch.Tensor, realised_rate: float) -> None:
        from sddkit import checkpoint
        self.tracker.log_metrics(self.run_id, [("noise_realised_rate", realised_rate, 0)])
        self.tracker.log_files(self.run_id, {LABELS: checkpoint.npy_bytes(noisy.cpu().numpy())})

    def save_state(self, name: str, state: dict) -> None:
        from sddkit import checkpoint
        self.tracker.log_files(self.run_id, {f"state/{name}.pt": checkpoint.torch_bytes(state)})

    def load_state(self, name: str) -> dict | None:
        """None when absent or damaged: the engine then re-derives it from the config (a half-written file is
        never trained on)."""
        path = f"state/{name}.pt"
        if path not in self.tracker.artifact_paths(self.run_id, "state"):
            if name != "init":  # the init is never stored (only runs of older sddkit kept it): not a loss
                self.note_rebuilt(name, f"{path} of run {self.run_id} is missing")
            return None
        try:
            return self.tracker.read_torch(self.run_id, path)
        except TrackingError as exc:
            self.note_rebuilt(name, f"{path} of run {self.run_id} is unreadable ({exc.__cause__.__class__.__name__})")
            return None

    def note_rebuilt(self, name: str, problem: str) -> None:
        print(f"{problem}: rebuilding it", file=sys.stderr)
        self.tracker.set_tag(self.run_id, f"sddkit.rebuilt.{name}", time.strftime("%Y-%m-%d %H:%M:%S"))

    def load_round(self, round_index: int):
        for r in self.tracker.round_runs(self.run_id, experiment_id=self.experiment_id):
            if int(r.data.tags["sddkit.round"]) == round_index:
                return read_mask(self.tracker, r.info.run_id), read_weights(self.tracker, r.info.run_id)
        raise TrackingError(f"trajectory run {self.run_id} has no finished round {round_index}")

    def init_digest(self) -> str | None:
        return self.tracker.run(self.run_id).data.tags.get(INIT_DIGEST)

    def record_init_digest(self, digest: str) -> None:
        self.tracker.set_tag(self.run_id, INIT_DIGEST, digest)

    def log_round(self, round_index, metrics, history, masks, weights) -> None:
        from sddkit import checkpoint
        epoch_metrics = [(f"epoch/{k}", v, row["epoch"]) for row in history for k, v in row.items() if k != "epoch"]
        files = {"mask.npz": checkpoint.pack_mask(masks), WEIGHTS: checkpoint.to_bytes(weights, masks),
                 "metrics.json": json.dumps(metrics, indent=1).encode()}
        if self._published == (round_index, self._started and self._started[1]):
            del files["mask.npz"]  # stored when the round started (publish_mask)
        self.store_round(round_index, metrics, epoch_metrics, files, {})

    def publish_mask(self, round_index: int, masks: dict[str, torch.Tensor]) -> None:
        """Store the mask as soon as it is pruned: a reinit twin (``twin.LotteryMasks``) trains its own round k
        beside this one from it."""
        from sddkit import checkpoint
        child = self.round_run(round_index)
        self.tracker.log_files(child, {"mask.npz": checkpoint.pack_mask(masks)})
        self._published = (round_index, child)

    def set_state(self, text: str | None) -> None:
        """What the trajectory does when not training (``waiting for lottery round 3 …``), in the parent's tag
        ``sddkit.state``; None removes it."""
        if text is not None:
            self.tracker.set_tag(self.run_id, "sddkit.state", text)
        else:
            self.tracker.delete_tag(self.run_id, "sddkit.state")

    def adopt_round(self, round_index: int, source) -> dict:
        """Round ``round_index`` as a copy of ``source``, an identical round run of another trajectory (reinit's
        round 0 is its twin's), tagged ``sddkit.copied_from``."""
        started = time.perf_counter()
        source_id = source.info.run_id
        epoch_metrics = [m for key in source.data.metrics if key.startswith("epoch/")
                         for m in self.tracker.metric_history(source_id, key)]
        files = {name: self.tracker.read_bytes(source_id, name) for name in ("mask.npz", WEIGHTS, "metrics.json")}
        metrics = round_row(source)
        metrics["copied_round_seconds"] = metrics.get("round_seconds", float("nan"))
        metrics["round_seconds"] = time.perf_counter() - started
        files["metrics.json"] = json.dumps(metrics, indent=1).encode()
        self.store_round(round_index, metrics, epoch_metrics, files, {"sddkit.copied_from": source_id})
        return metrics

    def start_round(self, round_index: int, sparsity_target: float | None = None) -> None:
        """The round's nested run, RUNNING, with its params and the parent's (to search rounds by them)."""
        self.check_owner()
        tags = {"mlflow.parentRunId": self.run_id, "sddkit.kind": ROUND, "sddkit.round": str(round_index)}
        own = {"round": str(round_index)}
        if sparsity_target is not None:
            own["sparsity_target"] = f"{sparsity_target:.6g}"
        params = {**self.tracker.run(self.run_id).data.params, **own}
        child = self.tracker.create_run(self.experiment_id, tags, f"{self.name}/round-{round_index:02d}", params)
        self._started = (round_index, child)

    def store_round(self, round_index: int, metrics: dict, epoch_metrics: list, files: dict[str, bytes],
                    tags: dict[str, str]) -> None:
        """A round's metrics, history and files into its nested run; FINISHED only once all are stored."""
        child = self.round_run(round_index)
        # A failure here (a full disk, a server gone) leaves the round under way: the runner marks it and the
        # parent as the run ends (runner.ending), and a rerun redoes the round.
        self.tracker.log(child, epoch_metrics + [(k, v, round_index) for k, v in metrics.items()], tags=tags)
        self.tracker.log_files(child, files)
        self.tracker.set_status(child, "FINISHED")  # only now does the round count as done
        self._started = None
        # One batch, one transaction: test_acc is there exactly when the others are (complete_parent_curve).
        self.tracker.log_metrics(self.run_id, [(k, metrics[k], round_index) for k in PARENT_METRICS if k in metrics])
        self.completed.append(metrics)

    def finish(self, files: dict[str, bytes], summary: dict[str, float], tags: dict[str, str]) -> None:
        """Close the trajectory: its files, one-value metrics (``summary/…``, ``phase/…``) and tags."""
        self.check_owner()
        self.tracker.log_files(self.run_id, files)
        self.tracker.log_metrics(self.run_id, [(k, v, 0) for k, v in summary.items()],
                                 {k: str(v) for k, v in tags.items()})
        self.tracker.set_status(self.run_id, "FINISHED")
        self.finished = True

    @property
    def round_under_way(self) -> int:
        """The round being trained or stored (else the next one)."""
        return self._started[0] if self._started is not None else len(self.completed)

    def stop(self, status: str) -> None:
        """End the run (and the round under way) as ``status``: KILLED on Ctrl-C, FAILED on an error."""
        if self._started is not None:
            self.tracker.set_status(self._started[1], status, quietly=True)
            self._started = None
        self.tracker.set_status(self.run_id, status, quietly=True)


def contiguous(rounds: list) -> list:
    """Finished round runs 0, 1, 2, … up to the first gap."""
    done = []
    for expected, r in enumerate(rounds):
        if int(r.data.tags["sddkit.round"]) != expected:
            break
        done.append(r)
    return done


def round_row(run) -> dict:
    """A finished round run's metrics, as the engine produced them."""
    row = {k: v for k, v in run.data.metrics.items() if not k.startswith("epoch/")}
    row["round"] = int(row.get("round", run.data.tags["sddkit.round"]))
    return row


# ---------------------------------------------------------------- a round's files

def read_mask(tracker, run_id: str, content: bytes | None = None) -> dict[str, torch.Tensor]:
    """``content``: the mask's bytes, read already."""
    from sddkit import checkpoint
    content = tracker.read_bytes(run_id, "mask.npz") if content is None else content
    try:
        return checkpoint.unpack_mask(content)
    except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise damaged(tracker, run_id, "mask.npz", f"corrupt ({exc.__class__.__name__})") from exc


def read_weights(tracker, run_id: str, masks: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Dense on the CPU (exact zeros where pruned), from either file format."""
    from sddkit import checkpoint
    stored = tracker.read_torch(run_id, WEIGHTS)
    if not checkpoint.is_sparse(stored):
        return stored
    masks = read_mask(tracker, run_id) if masks is None else masks
    try:
        return checkpoint.unpack(stored, masks)
    except checkpoint.CheckpointError as exc:
        raise damaged(tracker, run_id, WEIGHTS, f"corrupt or does not fit the round's mask.npz ({exc})") from exc


def damaged(tracker, run_id: str, path: str, problem: str) -> TrackingError:
    """The error for a missing or unreadable artifact, with the repair that keeps the finished rounds (never a
    bare --force, which would retrain all of them)."""
    run = tracker.find_run(run_id)
    if run is None:
        return TrackingError(f"run {run_id}: {path} is {problem}, and the run itself is not in {tracker.uri}")
    tags, where = run.data.tags, f"run {run_id}"
    if tags.get("sddkit.kind") == ROUND:
        k, parent = int(tags["sddkit.round"]), tags.get("mlflow.parentRunId", "?")
        repair = (f"repair it with that trajectory's `sddkit run` (same settings) plus --redo-from {k}: it retrains "
                  f"round {k} on and keeps rounds 0–{k - 1}" if k else
                  "repair it with that trajectory's `sddkit run` (same settings) plus --redo-from 0")
        where = f"run {run_id} (round {k} of trajectory run {parent})"
    elif path.startswith("state/"):
        repair = ("it is derived from the config: its `sddkit run` rebuilds it when it continues the trajectory "
                  "(for a finished one, add --redo-from with its last round, which retrains that round only)")
    else:
        repair = "rerun the trajectory's `sddkit run` with --redo-from 0 to rebuild it in place"
    return TrackingError(f"{where}: {path} is {problem}; {repair} (--force would instead start a new run and "
                         f"retrain every round)")

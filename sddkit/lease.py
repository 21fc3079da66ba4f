"""One owner per trajectory: a lease with a heartbeat, the experiment tag ``sddkit.lease.<config hash>.<code hash>``
(JSON ``Holder``; an experiment tag: it guards the creation of the first run too, and works on a remote server).
The only module that reads or writes lease tags. MLflow has no compare-and-swap: acquiring writes our record,
waits ``SETTLE_S`` and reads it back; the last writer wins. A lease is stale, and taken over, when its heartbeat is
older than ``STALE_AFTER_S`` or its owner ran on this host and is gone (``kill -9``: taken over at once)."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Callable

from sddkit import failures
from sddkit.paths import process_started

if TYPE_CHECKING:  # MLflow where a lease is taken or read through it: `sddkit ls` on sqlite never does
    from mlflow import MlflowClient

HEARTBEAT_S = 10.0
STALE_AFTER_S = 60.0
SETTLE_S = 1.0
WAIT_POLL_S = 2.0
_live_tokens: set[str] = set()  # leases this process holds now


class LeaseHeld(RuntimeError):
    """Another live process owns the trajectory; the message names it."""


class LeaseLost(RuntimeError):
    """Another process took this one's lease over (it looked dead to it); stop writing."""


@dataclass
class Holder:
    token: str
    host: str
    pid: int
    since: float
    heartbeat: float
    run_id: str = ""

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        run = f" on run {self.run_id}" if self.run_id else ""
        return (f"pid {self.pid} on host {self.host}{run} (since {started}, last heartbeat "
                f"{max(0.0, time.time() - self.heartbeat):.0f} s ago)")

    def is_stale(self) -> bool:
        if time.time() - self.heartbeat > STALE_AFTER_S:
            return True
        if self.host != socket.gethostname():
            return False  # another machine: only its heartbeat tells
        if self.pid == os.getpid():
            return self.token not in _live_tokens  # left behind by an earlier attempt in this process
        return not process_alive(self.pid)


def process_alive(pid: int) -> bool:
    """On this host (a zombie, killed but not yet reaped, counts as gone)."""
    return process_started(pid) is not None


def identity(config_hash: str, code_hash: str) -> str:
    """What one lease guards: a trajectory's config and the code that trains it."""
    return f"{config_hash}.{code_hash}"


PREFIX = "sddkit.lease."


def key_for(identity: str) -> str:
    return f"{PREFIX}{identity}"


def read(client: MlflowClient, experiment_id: str, key: str) -> Holder | None:
    return parse(client.get_experiment(experiment_id).tags.get(key))


def parse(text: str | None) -> Holder | None:
    try:
        return Holder(**json.loads(text)) if text else None
    except (ValueError, TypeError):
        return None  # a damaged record guards nothing


def live(holder: Holder | None, run_id: str | None = None) -> Holder | None:
    """``holder`` if it is alive (and on ``run_id``, or on no run yet, where given)."""
    if holder is None or holder.is_stale() or (run_id is not None and holder.run_id not in ("", run_id)):
        return None
    return holder


def live_holder(tracker, experiment_id: str, config_hash: str | None, code_hash: str | None,
                run_id: str | None = None) -> Holder | None:
    """The live holder of that identity's lease (on ``run_id``, or on no run yet, where given)."""
    return live(read(tracker.client, experiment_id, key_for(identity(config_hash, code_hash))), run_id)


def holder_in(experiment_tags: dict[str, str], run) -> Holder | None:
    """The live holder of trajectory ``run``'s lease, from its experiment's tags."""
    key = key_for(identity(run.data.tags.get("sddkit.config_hash"), run.data.tags.get("sddkit.code_hash")))
    return live(parse(experiment_tags.get(key)), run.info.run_id)


def drop(tracker, experiment_id: str, config_hash: str, code_hash: str) -> None:
    """Delete that identity's lease (its owner is known to be gone)."""
    tracker.client.delete_experiment_tag(experiment_id, key_for(identity(config_hash, code_hash)))


def local_holders(tracker) -> list[Holder]:
    """The live holders of the store's leases that run on this host."""
    found = [parse(value) for experiment in tracker.client.search_experiments()
             for key, value in experiment.tags.items() if key.startswith(PREFIX)]
    return [h for h in found if h is not None and h.host == socket.gethostname() and not h.is_stale()]


class Lease:
    """The lease of one trajectory identity; use ``with Lease(...).acquire(wait):`` around the training."""

    def __init__(self, uri: str, experiment_id: str, identity: str,
                 on_wait: Callable[[Holder], None] | None = None):
        self.uri, self.experiment_id, self.key = uri, experiment_id, key_for(identity)
        from mlflow import MlflowClient
        self.client = MlflowClient(tracking_uri=uri)
        now = time.time()
        self.record = Holder(uuid.uuid4().hex, socket.gethostname(), os.getpid(), now, now)
        self.on_wait = on_wait
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, wait: bool = False) -> "Lease":
        """Take the lease, or raise LeaseHeld (``wait``: poll until it is free)."""
        while True:
            holder = read(self.client, self.experiment_id, self.key)
            if holder is None or holder.token == self.record.token or holder.is_stale():
                holder = self._claim()
                if holder is None:
                    break
            if not wait:
                raise LeaseHeld(f"this trajectory is being trained by {holder.describe()}; wait for it "
                                f"(--wait) or stop that process; a killed owner's lease is taken over by the "
                                f"next run")
            if self.on_wait is not None:
                self.on_wait(holder)
            time.sleep(WAIT_POLL_S)
        _live_tokens.add(self.record.token)
        self._thread = threading.Thread(target=self._beat, name="sddkit-lease", daemon=True)
        self._thread.start()
        return self

    def _claim(self) -> Holder | None:
        """None if our record is still there after SETTLE_S, else the winner's."""
        self._write()
        time.sleep(SETTLE_S)
        back = read(self.client, self.experiment_id, self.key)
        return None if back is not None and back.token == self.record.token else back

    def _write(self, client: MlflowClient | None = None) -> None:
        self.record.heartbeat = time.time()
        (client or self.client).set_experiment_tag(self.experiment_id, self.key, json.dumps(asdict(self.record)))

    def set_run(self, run_id: str) -> None:
        self.record.run_id = run_id
        self._write()

    def _beat(self) -> None:
        from mlflow import MlflowClient
        client = MlflowClient(tracking_uri=self.uri)  # its own client: never share one across threads
        while not self._stop.wait(HEARTBEAT_S):
            try:
                holder = read(client, self.experiment_id, self.key)
                if holder is None or holder.token != self.record.token:
                    self.lost = True
                    return
                self._write(client)
            except Exception:  # noqa: BLE001 - a busy store skips one beat; staleness needs six in a row
                continue

    def check(self) -> None:
        """Never write a round once another process took the trajectory over."""
        if self.lost:
            raise LeaseLost(f"the lease on this trajectory ({self.key}) was taken over by another process "
                            f"(this one looked dead to it); stopping without writing")

    def release(self, reach_store: bool = True) -> None:
        """Stop the heartbeat and delete the lease; ``reach_store=False`` (the server stopped answering): only
        stop. The lease then names this process, gone once it exits: it is taken over all the same."""
        self._stop.set()
        if self._thread is not None and reach_store:
            self._thread.join(timeout=HEARTBEAT_S + 5)
        _live_tokens.discard(self.record.token)
        if not reach_store:
            return
        # An unreleased lease goes stale on its own: never mask the real error.
        with contextlib.suppress(Exception):
            holder = read(self.client, self.experiment_id, self.key)
            if holder is not None and holder.token == self.record.token:
                self.client.delete_experiment_tag(self.experiment_id, self.key)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release(reach_store=exc is None or failures.silent_server(exc) is None)

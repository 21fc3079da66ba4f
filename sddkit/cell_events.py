"""A sweep's cells tell its driver how they progress: ``Event``s (``started`` on host/pid, round k of R begun,
round done), posted on a queue the driver drains: a multiprocessing queue for local workers, an ``EventBox``
actor on Ray. Standard library only, so the box's actor process starts in Ray's own import time (it imports
this module to unpickle the events, and nothing of torch or MLflow).
"""
from __future__ import annotations

import dataclasses
import time


@dataclasses.dataclass
class Event:
    """A cell's progress: ``started`` (on host/pid), ``round`` (round k of R begins), ``round_done``,
    ``retry`` (its worker died; the executor runs it again), ``waiting`` (round k waits for its lottery twin's
    mask) and ``owner_waiting`` (another process trains its trajectory: the cell waits for that owner's lease,
    named in ``note``)."""
    key: str
    kind: str
    round_index: int = -1
    rounds: int = 0
    test_acc: float | None = None
    seconds: float | None = None
    host: str = ""
    pid: int = 0
    at: float = dataclasses.field(default_factory=time.time)
    note: str = ""          # ``retry``: why the cell runs again; ``waiting``: the owner waited for


def post(events, event: Event) -> None:
    if events is None:
        return
    try:
        events.put(event)
    except Exception:  # noqa: BLE001 - a driver gone (its queue with it) must not fail the trajectory
        pass


class EventBox:
    """The driver's mailbox on Ray (an actor holding no CPU): cells put their events, and the driver takes all
    of them in one call a poll (a ``ray.util.queue.Queue`` costs two or three)."""

    def __init__(self):
        self.events: list[Event] = []

    def put(self, event: Event) -> None:
        self.events.append(event)

    def take(self) -> list[Event]:
        taken, self.events = self.events, []
        return taken


class RayEvents:
    """A Ray cell's side of the box. ``put`` waits until the box has the event, so all of a cell's events are
    there before its outcome reaches the driver."""

    def __init__(self, box):
        self.box = box

    def put(self, event: Event) -> None:
        import ray
        ray.get(self.box.put.remote(event))

"""How a sweep's cells tell its driver their progress: ``Event``s on a local worker's pipe or a Ray actor's box.
Standard library only: the box's actor imports this module to unpickle events, and starts light.
"""
from __future__ import annotations

import dataclasses
import time


@dataclasses.dataclass
class Event:
    """``started`` (on host/pid), ``round`` (k of R begins), ``round_done``, ``retry`` (its worker died),
    ``waiting`` (for its lottery twin's mask) or ``owner_waiting`` (for the lease of the process in ``note``)."""
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
    """The driver's mailbox on Ray (an actor holding no CPU): the driver takes all events in one call a poll."""

    def __init__(self):
        self.events: list[Event] = []

    def put(self, event: Event) -> None:
        self.events.append(event)

    def take(self) -> list[Event]:
        taken, self.events = self.events, []
        return taken


class RayEvents:
    """A Ray cell's side of the box; ``put`` waits, so a cell's events arrive before its outcome."""

    def __init__(self, box):
        self.box = box

    def put(self, event: Event) -> None:
        import ray
        ray.get(self.box.put.remote(event))

"""What a sweep shows while it runs: each cell's state (pending, waiting, queued, running round k of R, done,
failed), elapsed time and ETA; a live table in a terminal, else one timestamped line per event. Fed by
``sweep.drive`` with ``cell_events.Event``s, read duck-typed: it knows nothing else of sddkit."""
from __future__ import annotations

import dataclasses
import time

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text


@dataclasses.dataclass
class CellState:
    label: str
    rounds: int                 # R: the cell runs rounds 0..R
    state: str = "pending"
    round_index: int = -1       # the round under way (running) or the last one done
    test_acc: float | None = None
    started: float | None = None
    ended: float | None = None
    round_seconds: list[float] = dataclasses.field(default_factory=list)
    where: str = ""

    def elapsed(self, now: float) -> float | None:
        return None if self.started is None else (self.ended or now) - self.started

    def eta(self) -> float | None:
        """Seconds left: the rounds not yet done times this cell's mean round so far."""
        if self.state != "running" or not self.round_seconds:
            return None
        left = self.rounds + 1 - len(self.round_seconds)
        return max(0, left) * sum(self.round_seconds) / len(self.round_seconds)

    def progress(self) -> str:
        if self.state == "running" and self.round_index >= 0:
            return f"round {self.round_index} of {self.rounds}"
        return self.state


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class View:
    """The cells' states; subclasses draw them."""

    def __init__(self, cells, stored: dict, console: Console):
        self.console, self.began = console, time.time()
        self.cells: dict[str, CellState] = {}
        for c in cells:
            state = self.cells[c.key] = CellState(c.label, c.cfg.prune.rounds)
            if c.key in stored:
                state.state, state.round_index = "stored", state.rounds
            elif c.needs:
                state.state = "waiting for its lottery twin"

    def queued(self, key: str) -> None:
        self.cells[key].state = "queued"
        self.changed(key, "queued")

    def event(self, event) -> None:
        cell = self.cells.get(event.key)
        if cell is None:
            return
        if event.kind == "started":
            cell.state, cell.started, cell.where = "running", cell.started or event.at, f"{event.host} pid {event.pid}"
            cell.round_seconds.clear()  # a retry measures its own rounds
            self.changed(event.key, f"started on {cell.where}")
        elif event.kind == "owner_waiting":
            cell.state = "waiting for another process"
            self.changed(event.key, f"waiting: its trajectory is being trained by {event.note}")
        elif event.kind == "retry":
            cell.state = "queued"
            self.changed(event.key, event.note)
        elif event.kind == "round":
            cell.state, cell.round_index = "running", event.round_index
        elif event.kind == "waiting":  # a reinit ahead of its twin, its worker held
            cell.state = f"waiting for lottery round {event.round_index}"
            self.changed(event.key, cell.state)
        elif event.kind == "round_done":
            cell.round_index, cell.test_acc = event.round_index, event.test_acc
            cell.round_seconds.append(event.seconds or 0.0)
            self.changed(event.key, f"round {event.round_index}/{cell.rounds} done: test {event.test_acc:.1f}% "
                                    f"({event.seconds or 0:.1f} s)")

    def done(self, key: str, rows: list[dict]) -> None:
        cell = self.cells[key]
        cell.state, cell.ended, cell.round_index = "done", time.time(), len(rows) - 1
        cell.test_acc = rows[-1]["test_acc"] if rows else None
        self.changed(key, f"done ({len(rows)} rounds, {duration(cell.elapsed(time.time()))})")

    def failed(self, key: str, why: str) -> None:
        cell = self.cells[key]
        cell.state, cell.ended = f"failed: {why}", time.time()
        self.changed(key, cell.state)

    def changed(self, key: str, what: str) -> None: ...
    def note(self, text: str) -> None:
        self.console.print(text, highlight=False)
    def refresh(self) -> None: ...
    def close(self) -> None: ...


class LineView(View):
    """One timestamped line per event (the driver's stderr is a file or a pipe)."""

    def changed(self, key: str, what: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        print(f"{stamp} sweep: {self.cells[key].label}: {what}", file=self.console.file, flush=True)


class LiveView(View):
    """One table, redrawn in place twice a second."""

    def __init__(self, cells, stored: dict, console: Console):
        super().__init__(cells, stored, console)
        self.live = Live(self.table(), console=console, refresh_per_second=2, transient=False)
        self.live.start()

    def table(self) -> Table:
        now = time.time()
        done = sum(c.state in ("done", "stored") for c in self.cells.values())
        table = Table(title=f"sweep: {done} of {len(self.cells)} cells done, {duration(now - self.began)} elapsed")
        for header in ("cell", "state", "test %", "elapsed", "ETA", "where"):
            table.add_column(header, justify="right" if header in ("test %", "elapsed", "ETA") else "left")
        for cell in self.cells.values():
            acc = "" if cell.test_acc is None else f"{cell.test_acc:.1f}"
            style = "red" if cell.state.startswith("failed") else "green" if cell.state in ("done", "stored") else ""
            table.add_row(Text(cell.label), Text(cell.progress(), style=style), acc, duration(cell.elapsed(now)),
                          duration(cell.eta()), Text(cell.where))
        return table

    def note(self, text: str) -> None:
        self.live.console.print(text, highlight=False)

    def refresh(self) -> None:
        self.live.update(self.table())

    def close(self) -> None:
        self.live.update(self.table())
        self.live.stop()

"""Where a sweep's cells run: ``local`` worker processes on this machine, or ``ray`` tasks on a Ray cluster. A cell
is ``run_cell``: ``runner.run_trajectory`` reporting ``cell_events``, always waiting for the trajectory's lease (a
retry whose worker died elsewhere waits out the dead owner's heartbeat, then continues after its last round)."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import multiprocessing
import os
import signal
import socket
import sys
import time
import types
import unittest.mock
from pathlib import Path

import psutil

from sddkit import lifeline, runner, trajectory
from sddkit.cell_events import Event, EventBox, RayEvents, post
from sddkit.config import Config
from sddkit.fingerprint import code_hash, package_folder

CANCEL_GRACE_S = 15.0  # how long cancelled cells get to mark their runs KILLED before they are killed
INTERRUPTED = 130  # a worker's exit status after Ctrl-C or cancel: stopped on purpose, not retried
RAY_CONNECT_S = 5.0
CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


class ExecutorError(RuntimeError):
    """The executor cannot run here (Ray missing, a cluster unreachable); the message says what to do."""


class CellFailed(RuntimeError):
    """A cell that could not run its trajectory (other code on its node, a worker that kept dying)."""


@dataclasses.dataclass(frozen=True)
class Task:
    key: str                    # the cell's trajectory identity (config hash)
    cfg: Config                 # tracking.uri set to the sweep's store
    root: str                   # the driver's project root
    code: str                   # the driver's code hash: a worker that would run other code stops
    force: bool = False
    results_dir: str | None = None
    log: str | None = None      # the cell's output goes here (the driver's screen belongs to its view)
    prepared: str | None = None  # a `sddkit prepare` folder: the data the cell trains on (DVC's stage)
    run_file: str | None = None  # write only run.json, naming the cell's run, here (DVC's stage)


@dataclasses.dataclass
class Outcome:
    key: str
    run_id: str
    rows: list[dict]
    host: str
    pid: int


class EventReporter(trajectory.Reporter):
    """The engine's progress hooks as events on the driver's queue."""

    def __init__(self, key: str, events):
        self.key, self.events = key, events

    def round_started(self, round_index, rounds, sparsity, epochs):
        post(self.events, Event(self.key, "round", round_index, rounds))

    def waiting(self, round_index, text):
        post(self.events, Event(self.key, "waiting", round_index))

    def round_done(self, round_index, metrics):
        post(self.events, Event(self.key, "round_done", round_index, 0, metrics.get("test_acc"),
                                metrics.get("round_seconds")))

    def waiting_for_owner(self, owner):
        post(self.events, Event(self.key, "owner_waiting", note=owner))


def run_cell(task: Task, events=None) -> Outcome:
    """One cell in a worker: its trajectory trained, continued or (finished already) reported."""
    host, pid = socket.gethostname(), os.getpid()
    if code_hash() != task.code:
        raise CellFailed(f"host {host} runs sddkit code {code_hash()} ({package_folder()}), the sweep's driver "
                         f"{task.code}: install the same sddkit on every node")
    post(events, Event(task.key, "started", host=host, pid=pid))
    root = Path(task.root) if Path(task.root).is_dir() else Path.home() / ".sddkit" / Path(task.root).name
    root.mkdir(parents=True, exist_ok=True)  # a node without the project: its data downloads land here
    results_dir = Path(task.results_dir) if task.results_dir else None
    with output_to(task.log):
        store, rows = runner.run_trajectory(task.cfg, root, force=task.force, results_dir=results_dir, quiet=True,
                                            reporter=EventReporter(task.key, events), wait=True,
                                            prepared=Path(task.prepared) if task.prepared else None,
                                            run_file=Path(task.run_file) if task.run_file else None)
    return Outcome(task.key, store.run_id, rows, host, pid)


@contextlib.contextmanager
def output_to(log: str | None):
    """This process's file descriptors 1 and 2 into ``log`` for the block (unless its folder is missing here)."""
    if not log or not Path(log).parent.is_dir():
        yield
        return
    flush()
    saved = [os.dup(fd) for fd in (1, 2)]
    with open(log, "ab", buffering=0) as f:
        for fd in (1, 2):
            os.dup2(f.fileno(), fd)
        try:
            yield
        finally:
            flush()
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)


def flush() -> None:
    sys.stdout.flush()
    sys.stderr.flush()


# ---------------------------------------------------------------- local processes

_events = None  # a local worker's channel to the driver (set by worker_main)


def local_work(task: Task) -> Outcome:
    """``run_cell`` in a local worker, which leaves once interrupted (its parent may be gone)."""
    try:
        return run_cell(task, _events)
    except (KeyboardInterrupt, SystemExit):  # the trajectory is marked KILLED by now
        flush()
        os._exit(INTERRUPTED)


def worker_main(parent: int, conn, device: str | None, warm: bool = False) -> None:
    """A local worker: run the calls the driver sends until None (``warm``: first import what a cell needs)."""
    global _events
    # One pipe per worker, not one shared queue: a worker killed mid-write damages its own pipe alone (a shared
    # queue's lock would die held, and the other workers' events with it).
    _events = types.SimpleNamespace(put=lambda event: conn.send(("event", event)))
    # SIGTERM (the parent's death, even by kill -9, or cancel) stops a worker as Ctrl-C: its run marked KILLED.
    lifeline.stop_like_ctrl_c(signal.SIGTERM)
    lifeline.die_with_parent(parent)
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device  # one GPU alone, before anything touches CUDA
    if warm:
        try:
            warm_up()
        except KeyboardInterrupt:  # cancelled before its first call: nothing of its own to mark
            os._exit(INTERRUPTED)
    while True:
        try:
            call = conn.recv()
        except EOFError:  # the driver is gone
            return
        except KeyboardInterrupt:  # cancelled while idle: nothing of its own to mark
            os._exit(INTERRUPTED)
        if call is None:
            return
        call_id, fn, args = call
        conn.send(("outcome", call_id, outcome_of(fn, args)))


def warm_up() -> None:
    """torch, the engine, MLflow's store and what torch imports on a first optimizer (~2 s, else paid in the first
    round: a reinit's starts one round late, and the lag stays to its end), while the driver reads the store."""
    import importlib

    import torch
    importlib.import_module("mlflow.store.tracking.sqlalchemy_store")
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)  # no random draw: no generator moves


def outcome_of(fn, args):
    """``fn(*args)``, or the exception it raised (the other cells keep running), as it can cross a pipe."""
    import pickle
    try:
        value = fn(*args)
    except Exception as exc:  # noqa: BLE001 - reported with its cell once the sweep has ended
        value = exc
    try:
        pickle.dumps(value)
        return value
    except Exception:  # noqa: BLE001 - any pickling failure: keep the message
        return CellFailed(f"{type(value).__name__}: {value}")


@dataclasses.dataclass(eq=False)
class Call:
    """A handle of ``LocalExecutor``: a call (a cell, or any function) a worker runs for the driver."""
    fn: object
    args: tuple
    key: str = ""                   # the cell's key, for the events the executor makes of a retry
    deaths: int = 0                 # workers that died running it
    result: object = dataclasses.field(default=None, repr=False)
    done: bool = False


@dataclasses.dataclass(eq=False)
class Worker:
    process: object
    conn: object
    call: Call | None = None


class LocalExecutor:
    """``jobs`` worker processes here; worker i sees GPU i mod ``gpus`` alone (``hide_gpus``: none). A worker
    that dies (kill -9, the OOM killer) costs only its own call: a new one takes its place and runs it again,
    ``retries`` times at most (as Ray retries a task), taking the dead one's lease over at once."""
    name = "local"

    def __init__(self, jobs: int, gpus: int, hide_gpus: bool = False, retries: int = 0, warm: bool = False):
        self.jobs, self.retries, self.warm = jobs, retries, warm
        self.context = multiprocessing.get_context("spawn")  # fresh interpreters: fork copies torch's, sqlite's state
        self.devices = [str(i % gpus) if gpus else "" for i in range(jobs)] if gpus or hide_gpus else [None] * jobs
        self.queue: list[Call] = []
        self.calls: dict[int, Call] = {}
        self.events: list[Event] = []
        # All now (slot i keeps its device across replacements): a cell submitted later (a reinit, once its twin
        # trains) finds its interpreter started.
        self.workers: list[Worker | None] = [self.start_worker(slot) for slot in range(jobs)]

    def describe(self) -> str:
        return f"{self.jobs} local worker process{'es' if self.jobs > 1 else ''}"

    def submit(self, task: Task) -> Call:
        return self.call(local_work, task, key=task.key)

    def call(self, fn, *args, key: str = "") -> Call:
        """Run ``fn(*args)`` in a worker (a module-level function: it crosses to a fresh interpreter)."""
        call = Call(fn, args, key)
        self.calls[id(call)] = call
        self.queue.append(call)
        self.pump(0)
        return call

    def wait(self, handles: list[Call], timeout: float) -> list[Call]:
        deadline = time.monotonic() + timeout
        self.pump(0)  # what has arrived counts, even when a handle is done already
        while True:
            done = [h for h in handles if h.done]
            left = deadline - time.monotonic()
            if done or left <= 0:
                return done
            self.pump(left)

    def outcome(self, handle: Call):
        return handle.result

    def drain(self) -> list[Event]:
        self.pump(0)
        out, self.events = self.events, []
        return out

    def pump(self, timeout: float) -> None:
        """Read what the workers sent (waiting up to ``timeout``), bury the dead, give idle workers calls."""
        from multiprocessing.connection import wait as wait_ready
        live = [w for w in self.workers if w is not None]
        if not live:
            time.sleep(min(timeout, 0.05))  # nothing to wait on (all calls done or none yet)
        ready = wait_ready([w.conn for w in live] + [w.process.sentinel for w in live], timeout) if live else []
        for worker in live:
            if worker.conn in ready or worker.process.sentinel in ready:
                self.read(worker)
        self.assign()

    def read(self, worker: Worker) -> None:
        try:
            while worker.conn.poll():
                message = worker.conn.recv()
                if message[0] == "event":
                    self.events.append(message[1])
                else:
                    call = self.calls.pop(message[1])
                    call.result, call.done, worker.call = message[2], True, None
        except Exception:  # noqa: BLE001 - EOF, or a message cut off by the worker's death
            pass
        if not worker.process.is_alive():  # all it sent has been read: the pipe ends where it died
            self.buried(worker)

    def buried(self, worker: Worker) -> None:
        """A worker ended: free its slot; its call, if unfinished, runs again (or fails, past the retries)."""
        worker.process.join()
        worker.conn.close()
        self.workers[self.workers.index(worker)] = None
        call = worker.call
        if call is None or call.done:
            return
        status = worker.process.exitcode
        how = f"signal {signal.Signals(-status).name}" if status < 0 else f"exit status {status}"
        call.deaths += 1
        if status == INTERRUPTED or call.deaths > self.retries:
            self.calls.pop(id(call), None)
            why = "was interrupted" if status == INTERRUPTED else f"died {call.deaths} times (last: {how})"
            call.result, call.done = CellFailed(f"its worker process {why}; rerun the sweep to continue it"), True
            return
        self.events.append(Event(call.key, "retry", call.deaths, self.retries,
                                 note=f"its worker (pid {worker.process.pid}) died ({how}); retry {call.deaths} "
                                      f"of {self.retries}"))
        self.queue.insert(0, call)

    def assign(self) -> None:
        for slot in range(self.jobs):
            if not self.queue:
                return
            worker = self.workers[slot]
            if worker is None:
                worker = self.workers[slot] = self.start_worker(slot)
            if worker.call is None:
                worker.call = call = self.queue.pop(0)
                worker.conn.send((id(call), call.fn, call.args))

    def start_worker(self, slot: int) -> Worker:
        # Started from the driver's main thread: the parent-death signal follows that thread (lifeline).
        ours, theirs = self.context.Pipe()
        args = (os.getpid(), theirs, self.devices[slot], self.warm)
        process = self.context.Process(target=worker_main, args=args, daemon=True)
        process.start()
        theirs.close()
        return Worker(process, ours)

    def cancel(self, handles: list[Call]) -> None:
        """Drop what has not started and stop the workers now (SIGTERM: as Ctrl-C, each marks its run KILLED)."""
        self.queue.clear()
        self.stop_workers(term=True)

    def close(self) -> None:
        for worker in filter(None, self.workers):
            with contextlib.suppress(OSError):
                worker.conn.send(None)
        self.stop_workers(term=False)

    def stop_workers(self, term: bool) -> None:
        workers = list(filter(None, self.workers))
        # is_alive: not reaped yet, so its pid is still its own
        procs = lifeline.handles(w.process.pid for w in workers if w.process.is_alive())
        lifeline.stop(procs, CANCEL_GRACE_S, term=term)
        for worker in workers:
            worker.process.join()
        self.workers = [None] * self.jobs


def local_jobs(jobs: int, gpus: int, gpus_per_cell: float | None, cells: int) -> int:
    """``jobs``, or (0) as many as the GPUs hold, else one per CPU core; never more than there are cells."""
    per_gpu = max(1, int(1 / gpus_per_cell)) if gpus_per_cell else 1
    return max(1, min(jobs or gpus * per_gpu or os.cpu_count() or 1, cells))


def gpu_count() -> int:
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


# ---------------------------------------------------------------- Ray

def import_ray():
    try:
        import ray
    except ImportError as exc:
        raise ExecutorError("--executor ray needs Ray, which is not installed: pip install -e '.[ray]' (or pip "
                            "install 'sddkit[ray]'); or run the sweep with --executor local") from exc
    return ray


class RayExecutor:
    """Each cell a Ray task holding ``cpus`` CPUs and ``gpus`` GPUs; a task whose worker or node dies is retried
    ``retries`` times (``max_retries``: system failures only; an error of the trajectory itself is final)."""
    name = "ray"

    def __init__(self, address: str | None, cpus: float, gpus: float | None, retries: int, uri: str):
        self.ray = ray = import_ray()
        # The tasks log into the sweep's store whatever their node's environment says.
        env = {"MLFLOW_TRACKING_URI": uri, **{k: os.environ[k] for k in CREDENTIALS if k in os.environ}}
        self.started_here = not ray.is_initialized()
        task_env = None if self.started_here else {"env_vars": env}  # a Ray the caller started: per task
        self.reaper = start_ray(ray, address, env) if self.started_here else None
        self.nodes = [n for n in ray.nodes() if n.get("Alive")]
        cluster_gpus = ray.cluster_resources().get("GPU", 0)
        self.gpus = (1.0 if cluster_gpus else 0.0) if gpus is None else gpus
        if self.gpus > cluster_gpus:
            raise ExecutorError(f"--gpus-per-trajectory {self.gpus:g}: the Ray cluster has {cluster_gpus:g} GPUs; "
                                f"lower it (0 runs on CPU)")
        self.cpus, self.retries = cpus, retries
        options = dict(num_cpus=cpus, num_gpus=self.gpus, max_retries=retries, retry_exceptions=False)
        self.remote = ray.remote(run_cell).options(**options, **({"runtime_env": task_env} if task_env else {}))
        self.box = ray.remote(EventBox).options(num_cpus=0).remote()
        self.events = RayEvents(self.box)

    def describe(self) -> str:
        resources = f"{self.cpus:g} CPU" + (f", {self.gpus:g} GPU" if self.gpus else "")
        return f"Ray tasks on {len(self.nodes)} node{'s' if len(self.nodes) > 1 else ''} ({resources} a cell)"

    def submit(self, task: Task):
        return self.remote.remote(task, self.events)

    def wait(self, handles: list, timeout: float) -> list:
        done, _ = self.ray.wait(handles, num_returns=len(handles), timeout=timeout, fetch_local=False)
        return done

    def outcome(self, handle):
        from ray.exceptions import RayError, RayTaskError
        try:
            return self.ray.get(handle)
        except RayTaskError as exc:  # the trajectory's own error: the same exception as a local run's
            cause = exc.cause if isinstance(exc.cause, Exception) else None
            return cause or CellFailed(str(exc).strip().splitlines()[-1])
        except RayError as exc:  # its worker or node died, and so did every retry
            return CellFailed(f"its Ray worker died {self.retries + 1} times ({type(exc).__name__}); rerun the "
                              f"sweep to continue it")

    def drain(self) -> list[Event]:
        try:
            return self.ray.get(self.box.take.remote())
        except Exception:  # noqa: BLE001 - the box's actor is gone: no more events
            return []

    def cancel(self, handles: list) -> None:
        """Each running task gets KeyboardInterrupt (its run marked KILLED); after ``CANCEL_GRACE_S``, a kill."""
        for handle in handles:
            with contextlib.suppress(Exception):
                self.ray.cancel(handle, recursive=False)
        deadline = time.time() + CANCEL_GRACE_S
        left = list(handles)
        while left and time.time() < deadline:
            _, left = self.ray.wait(left, num_returns=len(left), timeout=0.5, fetch_local=False)
        for handle in left:
            with contextlib.suppress(Exception):
                self.ray.cancel(handle, force=True)
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ray.kill(self.box)
        if self.started_here:
            self.ray.shutdown()
            lifeline.stop_reaper(self.reaper)  # and whatever of that Ray outlived its shutdown


def start_ray(ray, address: str | None, env: dict):
    """``ray.init``: a new Ray on this machine, or the cluster at ``address`` (or ``RAY_ADDRESS``). Returns the
    reaper (``lifeline.reap``) of a Ray started here, which ends Ray's processes with this one (kill -9 too)."""
    joining = address is not None or bool(os.environ.get("RAY_ADDRESS"))
    # Ray's own INFO and WARNING lines (coloured at a terminal) would cut through the sweep's view; what
    # matters reaches the user as the project's one line (the errors below) or the cell's failure.
    options = dict(address=address, log_to_driver=False, include_dashboard=False, logging_level=logging.ERROR)
    check_address(address)
    reaper = None
    try:
        if joining:  # this sddkit as a job-level py_module: Ray uploads a local folder only there
            ray.init(**options, runtime_env={"env_vars": env, "py_modules": [str(package_folder())]})
        else:
            before = set(psutil.Process().children())
            # Inherited by the raylet, so the workers it prestarts serve the cells (a per-task runtime_env
            # would start two more, 1 s each).
            with unittest.mock.patch.dict(os.environ, env):  # for the block, then as it was
                ray.init(**options)
            # What ray.init started (GCS, raylet, monitors; nothing else starts processes meanwhile) and
            # whatever they start end with this process.
            reaper = lifeline.start_reaper({p.pid for p in set(psutil.Process().children()) - before})
    except (ConnectionError, RuntimeError, ValueError) as exc:
        if not joining:
            raise ExecutorError(f"cannot start Ray on this machine ({exc}); or run the sweep with --executor "
                                f"local") from exc
        where, drop = address_names(address)
        raise ExecutorError(f"{where}: cannot join that Ray cluster ({exc}); start it with `ray start --head`, "
                            f"or {drop}") from exc
    return reaper


def address_names(address: str | None) -> tuple[str, str]:
    """How an error names the cluster's address (the option or the variable), and how to do without it."""
    where = f"--address {address}" if address else f"RAY_ADDRESS={os.environ.get('RAY_ADDRESS')}"
    return where, f"drop {'--address' if address else 'RAY_ADDRESS'} to start Ray here"


def check_address(address: str | None) -> None:
    """The cluster to join at ``HOST:PORT`` (``address`` or ``RAY_ADDRESS``) must take a connection within
    ``RAY_CONNECT_S``: ray.init retries a closed port for minutes, printing only its own warnings."""
    target = address or os.environ.get("RAY_ADDRESS")
    host, _, port = (target or "").split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        return
    where, drop = address_names(address)
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=RAY_CONNECT_S).close()
    except OSError as exc:
        why = f"no answer in {RAY_CONNECT_S:g} s" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise ExecutorError(f"{where}: no Ray cluster answers at {host}:{port} ({why}); start its head there "
                            f"(`ray start --head --port {port}`) or fix the address, or {drop}") from None


def threads_for(cfg: Config, cpus: float, parallel: bool) -> Config:
    """``cfg`` with a cell's torch threads (unless set): its CPUs where cells share the machine, else all."""
    threads = cfg.train.threads or (math.ceil(cpus) if parallel else 0)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=threads))

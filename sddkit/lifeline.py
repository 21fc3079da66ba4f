"""Processes that end with what started them (Linux's parent-death signal; SIGTERM stops a run as Ctrl-C does),
and the one way sddkit stops processes (``stop``, on psutil). Also a plain script importing nothing of sddkit:
``python -P lifeline.py PARENT COMMAND…`` guards the group of an mlflow server, ``… --reap PARENT PID…`` ends a
Ray that ``sddkit sweep`` started. Off Linux these do nothing."""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import psutil

LINUX = sys.platform.startswith("linux")
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
WATCH_POLL_S = 1.0
GRACE_S = 10.0  # how long a guarded group gets to stop on SIGTERM before SIGKILL
REAP_POLL_S = 1.0
REAP_GRACE_S = 5.0


def stop_like_ctrl_c(*signals: int) -> None:
    """Let ``signals`` raise KeyboardInterrupt, as SIGINT does (main thread only: signals reach only it)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in signals:
        signal.signal(sig, _interrupt)


def _interrupt(signum, frame) -> None:
    # A second signal while the first is being handled (the run being marked KILLED, the lease released)
    # would cut that short and leave the run RUNNING: while a KeyboardInterrupt or exit unwinds, ignore it.
    if isinstance(sys.exc_info()[1], (KeyboardInterrupt, SystemExit)):
        return
    raise KeyboardInterrupt


def die_with_parent(parent: int, sig: int = signal.SIGTERM) -> None:
    """The kernel sends ``sig`` to this process when ``parent`` (strictly: the thread that started us) ends."""
    if not LINUX:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(ctypes.get_errno())}")
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)  # the parent ended before the line above, so the kernel never will


# ---------------------------------------------------------------- process state and stopping

def running(proc: psutil.Process) -> bool:
    """Not ended, not a zombie, and its pid not reused (psutil compares the start time)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def handles(pids) -> list[psutil.Process]:
    found = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            found.append(psutil.Process(pid))
    return found


def stop(procs: list[psutil.Process], grace: float, term: bool = True) -> None:
    """SIGTERM to ``procs`` (``term=False``: sent already), SIGKILL to those still running after ``grace`` s.
    A pid reused meanwhile is never signalled. Not psutil.wait_procs: it reaps our children behind the back of
    their subprocess handles and waits out zombies no one reaps; here a zombie counts as ended."""
    if term:
        send(procs, signal.SIGTERM)
    left = still_running(procs, grace)
    send(left, signal.SIGKILL)
    still_running(left, grace)


def send(procs: list[psutil.Process], sig: int) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)


def still_running(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while (procs := [p for p in procs if running(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return procs


def group(pgid: int) -> list[psutil.Process]:
    members = []
    for proc in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if os.getpgid(proc.pid) == pgid and running(proc):
                members.append(proc)
    return members


def stop_group(pgid: int, grace: float) -> None:
    """SIGTERM to the group at once, SIGKILL to its members (this process aside) after ``grace`` s."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    stop([p for p in group(pgid) if p.pid != os.getpid()], grace, term=False)


# ---------------------------------------------------------------- a DVC stage

def follow_dvc() -> threading.Thread | None:
    """Inside a DVC stage (``DVC_STAGE`` set; not ``DVC_ROOT`` alone, which a user may export), get SIGTERM when
    the ``dvc`` running it ends: from the direct parent by the parent-death signal, from a ``dvc`` further up by
    a watcher thread (returned), because a shell in between survives dvc's kill -9 and waits on us."""
    if not LINUX or not os.environ.get("DVC_STAGE"):
        return None
    parent = os.getppid()
    die_with_parent(parent)
    try:
        proc = psutil.Process(parent)
        lineage = [proc, *proc.parents()]
    except psutil.Error:
        return None
    for proc in lineage:
        with contextlib.suppress(psutil.Error):
            if proc.pid > 1 and is_dvc(proc.cmdline()):  # the nearest dvc
                if proc.pid == parent:
                    return None  # the parent-death signal covers it
                return watch(proc.pid, lambda: os.kill(os.getpid(), signal.SIGTERM))
    return None


def is_dvc(argv: list[str]) -> bool:
    """``dvc …``, ``python …/bin/dvc …`` (an entry-point script) or ``python -m dvc …``."""
    if any(Path(a).name in ("dvc", "dvc.exe") for a in argv[:2]):
        return True
    return any(a == "-m" and b == "dvc" for a, b in zip(argv, argv[1:]))


def watch(pid: int, on_end: Callable[[], None], poll: float = WATCH_POLL_S) -> threading.Thread:
    """A daemon thread that calls ``on_end`` once process ``pid`` has ended."""
    procs = handles([pid])

    def run() -> None:
        while procs and running(procs[0]):
            time.sleep(poll)
        on_end()

    thread = threading.Thread(target=run, name="sddkit-lifeline", daemon=True)
    thread.start()
    return thread


# ---------------------------------------------------------------- the guard of a process group

def guard(parent: int, command: list[str]) -> int:
    """Run ``command``, then end our whole process group: when it exits, on SIGTERM, SIGHUP or SIGINT, or when
    ``parent`` dies. Returns the command's exit code (128 + SIGTERM when stopped)."""
    if os.getpgrp() != os.getpid():
        os.setpgid(0, 0)  # lead a group of our own: ending it must never reach the parent's
    stop_like_ctrl_c(signal.SIGTERM, signal.SIGHUP)
    code = 128 + signal.SIGTERM
    try:
        die_with_parent(parent)
        code = subprocess.Popen(command).wait()
    except KeyboardInterrupt:
        pass
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)  # our own killpg reaches us too
    stop_group(os.getpgrp(), GRACE_S)
    return code


# ---------------------------------------------------------------- the reaper of a parent's descendants

def start_reaper(roots: set[int]) -> subprocess.Popen | None:
    """A reaper (``reap``) of ``roots`` (this process's children) and theirs, in a session of its own (a Ctrl-C
    in the terminal is ours to handle, not its)."""
    if not LINUX or not roots:
        return None
    return subprocess.Popen([sys.executable, "-P", __file__, "--reap", str(os.getpid()), *map(str, sorted(roots))],
                            start_new_session=True, stdin=subprocess.DEVNULL)


def stop_reaper(reaper: subprocess.Popen | None) -> None:
    """End the reaper now; it ends what is left of its processes first."""
    if reaper is not None and reaper.poll() is None:  # not reaped yet: its pid is still its own
        stop(handles([reaper.pid]), REAP_GRACE_S + 5)
        reaper.wait()


def reap(parent: int, roots: list[int], poll: float = REAP_POLL_S) -> int:
    """Note ``roots`` and their descendants every ``poll`` s; once ``parent`` ends (kill -9 included) or on
    SIGTERM, ``stop`` those still alive. (Ray's agents outlived a killed driver by minutes; orphaned, they are
    nobody's descendants, so they are known from the last look taken while the driver lived.)"""
    # A flag, not KeyboardInterrupt: the parent's death is seen by getppid or by the signal, in either order,
    # and a signal arriving once the ending has begun must not cut it short.
    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: stopping.append(signum))
    die_with_parent(parent)
    tracked = handles(roots)  # now: a root's pid reused later is not ours
    known: dict[int, psutil.Process] = {}
    while True:
        known = {pid: proc for pid, proc in known.items() if running(proc)}
        known.update(family(tracked))
        if stopping or os.getppid() != parent:
            break
        time.sleep(poll)
    stop(list(known.values()), REAP_GRACE_S)
    return 0


def family(roots: list[psutil.Process]) -> dict[int, psutil.Process]:
    """The live processes among ``roots`` and their descendants, by pid."""
    found = {}
    for root in filter(running, roots):
        with contextlib.suppress(psutil.Error):
            found.update({p.pid: p for p in [root, *root.children(recursive=True)] if running(p)})
    return found


if __name__ == "__main__":
    if sys.argv[1] == "--reap":
        sys.exit(reap(int(sys.argv[2]), [int(pid) for pid in sys.argv[3:]]))
    sys.exit(guard(int(sys.argv[1]), sys.argv[2:]))

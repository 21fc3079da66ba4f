"""Processes that end with what started them: nothing sddkit starts trains or serves on after a kill -9.

Linux sends a child a signal of its choosing when its parent dies (``prctl(PR_SET_PDEATHSIG)``). We choose
SIGTERM and make SIGTERM stop a process the way Ctrl-C does (KeyboardInterrupt), so a trajectory being
trained is marked KILLED and its lease released, exactly as after Ctrl-C. The users:

- replicate workers (``sddkit run --seeds … --jobs N``) die with the parent that runs them;
- ``sddkit run`` inside a DVC stage dies with its parent and also watches the ``dvc`` process further up,
  since a shell between them outlives dvc's kill -9 (``follow_dvc``);
- ``sddkit ui`` starts mlflow server under a guard, this file run as a script (``python -P lifeline.py
  PARENT_PID COMMAND…``), which ends the server's whole process group when its parent dies (``guard``);
- ``sddkit sweep`` starting a Ray here starts a reaper beside it (``python -P lifeline.py --reap PARENT_PID
  PID…``), which ends every process that Ray started when the sweep ends or dies (``reap``).

Elsewhere than Linux these calls do nothing. Imports nothing of sddkit: the guard runs as a plain script.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

LINUX = sys.platform.startswith("linux")
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
WATCH_POLL_S = 1.0
GRACE_S = 10.0  # how long a guarded group gets to stop on SIGTERM before SIGKILL


def stop_like_ctrl_c(*signals: int) -> None:
    """Let each of ``signals`` raise KeyboardInterrupt, as SIGINT does (from the main thread only: Python
    refuses handlers elsewhere, and signals reach only the main thread anyway)."""
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
    """Have the kernel send ``sig`` to this process when ``parent``, the process that started it, ends.

    (Strictly, when the parent's thread that started it ends: every caller here is started by its parent's
    main thread.)"""
    if not LINUX:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(ctypes.get_errno())}")
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)  # the parent ended before the line above, so the kernel never will


# ---------------------------------------------------------------- a DVC stage

def follow_dvc() -> threading.Thread | None:
    """Inside a DVC stage (``DVC_STAGE`` set; not ``DVC_ROOT`` alone, which a user may export, and then a
    ``nohup sddkit run`` would die with its shell), get SIGTERM when the ``dvc`` running it ends.

    The direct parent (dvc, or the shell dvc started) by the parent-death signal; a ``dvc`` further up by a
    watcher thread (returned), because a shell in between survives dvc's kill -9 and waits on us."""
    if not LINUX or not os.environ.get("DVC_STAGE"):
        return None
    parent = os.getppid()
    die_with_parent(parent)
    dvc = dvc_ancestor(parent)
    if dvc is None or dvc == parent:
        return None
    return watch(dvc, lambda: os.kill(os.getpid(), signal.SIGTERM))


def dvc_ancestor(pid: int) -> int | None:
    """The nearest process running ``dvc`` among ``pid`` and its ancestors, or None."""
    for _ in range(64):  # a bound, in case /proc changes under us
        if pid <= 1:
            return None
        if is_dvc(cmdline(pid)):
            return pid
        pid = int((stat(pid) or ["", "0"])[1])
    return None


def is_dvc(argv: list[str]) -> bool:
    """``dvc …``, ``python …/bin/dvc …`` (an entry-point script) or ``python -m dvc …``."""
    if any(Path(a).name in ("dvc", "dvc.exe") for a in argv[:2]):
        return True
    return any(a == "-m" and b == "dvc" for a, b in zip(argv, argv[1:]))


def watch(pid: int, on_end: Callable[[], None], poll: float = WATCH_POLL_S) -> threading.Thread:
    """A daemon thread that calls ``on_end`` once process ``pid`` has ended (polling /proc)."""
    born = started_at(pid)

    def run() -> None:
        while born is not None and started_at(pid) == born:  # a reused pid starts at another time
            time.sleep(poll)
        on_end()

    thread = threading.Thread(target=run, name="sddkit-lifeline", daemon=True)
    thread.start()
    return thread


def stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, pgrp, …), or None if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def started_at(pid: int) -> str | None:
    """The start time of a live process (None once it has ended or is a zombie)."""
    fields = stat(pid)
    return fields[19] if fields and fields[0] != "Z" else None


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


# ---------------------------------------------------------------- the guard of a process group

def group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid`` (zombies excluded; none known without /proc)."""
    members = []
    for entry in Path("/proc").iterdir() if LINUX else ():
        if entry.name.isdigit():
            fields = stat(int(entry.name))
            if fields and fields[0] != "Z" and int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members


def guard(parent: int, command: list[str]) -> int:
    """Run ``command``, then end our whole process group: when it exits, on SIGTERM, SIGHUP or SIGINT, or
    when ``parent`` dies. Returns the command's exit code (128 + SIGTERM when stopped)."""
    if os.getpgrp() != os.getpid():
        os.setpgid(0, 0)  # lead a group of our own: end_group must never reach the parent's
    stop_like_ctrl_c(signal.SIGTERM, signal.SIGHUP)
    code = 128 + signal.SIGTERM
    try:
        die_with_parent(parent)
        code = subprocess.Popen(command).wait()
    except KeyboardInterrupt:
        pass
    end_group()
    return code


def end_group(grace: float = GRACE_S) -> None:
    """SIGTERM to the rest of our process group (a server and the workers it started), SIGKILL to what is
    left after ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)  # our own killpg reaches us too
    me, group = os.getpid(), os.getpgrp()
    os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while (others := [p for p in group_members(group) if p != me]) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in others:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------- the reaper of a parent's descendants

REAP_POLL_S = 1.0
REAP_GRACE_S = 5.0


def start_reaper(roots: set[int]) -> subprocess.Popen | None:
    """A reaper (``reap``) of the processes ``roots`` (this process's children) and theirs, this file run as a
    script in a session of its own (a Ctrl-C in the terminal is this process's to handle, not the reaper's);
    None elsewhere than Linux, or with no roots."""
    if not LINUX or not roots:
        return None
    return subprocess.Popen([sys.executable, "-P", __file__, "--reap", str(os.getpid()), *map(str, sorted(roots))],
                            start_new_session=True, stdin=subprocess.DEVNULL)


def stop_reaper(reaper: subprocess.Popen | None) -> None:
    """End the reaper now: it ends what is left of its processes first (returns once it has)."""
    if reaper is None or reaper.poll() is not None:
        return
    reaper.terminate()
    try:
        reaper.wait(timeout=REAP_GRACE_S + 5)
    except subprocess.TimeoutExpired:
        reaper.kill()


def reap(parent: int, roots: list[int], poll: float = REAP_POLL_S) -> int:
    """Note the processes ``roots`` and their descendants every ``poll`` seconds; once ``parent`` ends (kill -9
    included) or on SIGTERM, end those still alive: SIGTERM, SIGKILL after ``REAP_GRACE_S``.

    For a Ray that ``sddkit sweep`` starts (the roots: the processes ray.init started): its raylet and GCS die
    with the driver, but the agents the raylet started outlived a killed driver by one to two minutes. Once
    orphaned they are nobody's descendants, so they are known from the last look taken while the driver lived."""
    # A flag, not KeyboardInterrupt: the parent's death is seen by getppid or by the signal, in either order,
    # and a signal arriving once the ending has begun must not cut it short.
    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: stopping.append(signum))
    die_with_parent(parent)
    known: dict[int, str] = {}
    while True:
        known = {pid: born for pid, born in known.items() if started_at(pid) == born}  # drop the ended
        known.update(family(roots))
        if stopping or os.getppid() != parent:
            break
        time.sleep(poll)
    end_processes(known)
    return 0


def children(pid: int) -> set[int]:
    """The live child processes of ``pid``."""
    return {child for child, (ppid, _) in processes().items() if ppid == pid}


def processes() -> dict[int, tuple[int, str]]:
    """Every live process: pid -> (its parent's pid, its start time)."""
    found = {}
    for entry in Path("/proc").iterdir() if LINUX else ():
        fields = stat(int(entry.name)) if entry.name.isdigit() else None
        if fields and fields[0] != "Z":
            found[int(entry.name)] = (int(fields[1]), fields[19])
    return found


def family(roots: list[int]) -> dict[int, str]:
    """The live processes among ``roots`` and their descendants, each with its start time (which tells it from
    a later process that reuses its pid)."""
    table = processes()
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    found: dict[int, str] = {}
    todo = [pid for pid in roots if pid in table]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found[pid] = table[pid][1]
            todo.extend(kids.get(pid, ()))
    return found


def end_processes(known: dict[int, str], grace: float = REAP_GRACE_S) -> None:
    """SIGTERM to each process of ``known`` still alive (the same start time: never a reused pid), SIGKILL to
    those left after ``grace`` seconds."""
    def alive() -> list[int]:
        return [pid for pid, born in known.items() if started_at(pid) == born]

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in alive():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while alive() and time.monotonic() < deadline:
            time.sleep(0.1)


if __name__ == "__main__":
    if sys.argv[1] == "--reap":
        sys.exit(reap(int(sys.argv[2]), [int(pid) for pid in sys.argv[3:]]))
    sys.exit(guard(int(sys.argv[1]), sys.argv[2:]))

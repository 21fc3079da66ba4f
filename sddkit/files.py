"""Files shared with others, at the bottom of the package (it imports nothing of sddkit): ``write_atomic``, the
one way sddkit writes a file others read, probes and locks, and ``DatasetError`` for unusable input data."""
from __future__ import annotations

import contextlib
import fcntl
import os
import uuid
from pathlib import Path
from typing import BinaryIO, Callable


class DatasetError(RuntimeError):
    """A dataset that cannot be loaded or used; the message says what to download and where."""


def write_atomic(path: Path, content: bytes | Callable[[BinaryIO], object]) -> None:
    """Write ``content`` (bytes, or a function writing into a binary file) to ``path`` through a temporary file
    and a rename: readers see the old file or the whole new one; a failed write leaves the old one."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")  # unique: concurrent writers never share one
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # like mkstemp, but honours the umask
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(content, bytes):
                f.write(content)
            else:
                content(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # gone already after a successful rename


def unwritable(folder: Path) -> str | None:
    """Why nothing can be written into ``folder`` (or where it would be created), or None. Probes with a real
    write: permission bits say nothing to root, and a read-only mount or a full disk only shows on one."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # not there yet: probe where it would be created, and create nothing
    probe = folder / f".sddkit-probe-{uuid.uuid4().hex[:12]}"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)  # a block: a full disk refuses it, an empty file might still be created
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        return exc.strerror or exc.__class__.__name__
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass  # a read-only folder never held it
    return None


def unwritable_file(path: Path) -> str | None:
    """Why ``path`` does not open for writing (nothing is written), or None."""
    try:
        os.close(os.open(path, os.O_WRONLY))
    except OSError as exc:
        return exc.strerror or exc.__class__.__name__
    return None


@contextlib.contextmanager
def locked(path: Path, required: bool = True):
    """An exclusive ``flock`` on ``path`` (created if need be) for the ``with`` block. ``required=False``: where
    the lock file cannot be created (a read-only folder), run the block without it."""
    try:
        handle = open(path, "a+b")
    except OSError:
        if required:
            raise
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

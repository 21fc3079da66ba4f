"""Files sddkit shares with others, at the bottom of the package (it imports nothing of sddkit), so that the
modules reading datasets and writing results can all use it: ``write_atomic``, the one way sddkit writes a file
others read (DVC, later runs), and ``DatasetError``, raised for input data that is missing, damaged or unusable."""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import BinaryIO, Callable


class DatasetError(RuntimeError):
    """A dataset that cannot be loaded or used; the message says what to download and where to put it."""


def write_atomic(path: Path, content: bytes | Callable[[BinaryIO], object]) -> None:
    """Write ``content`` (bytes, or a function writing into a binary file: no copy of large arrays) to ``path``
    through a temporary file beside it and a rename: readers (DVC, a concurrent run) see the old file or the
    whole new one; a failed write leaves the old file and no temporary one."""
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

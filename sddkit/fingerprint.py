"""The fingerprint of the code that runs: part of a trajectory's identity, beside its config hash.

It hashes the source of the sddkit package *as imported* (every ``.py`` file under the folder Python loaded
``sddkit`` from), so an edit in an editable install, or a copy of the project run with its own package on
``PYTHONPATH``, gives another fingerprint, and results are never reported for code that did not make them.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path


def package_folder() -> Path:
    return Path(__file__).resolve().parent


@functools.cache
def code_hash() -> str:
    """sha256 over (relative path, sha256 of content) of every .py file of the package, sorted; 16 hex digits.

    Computed once per process: the code a process runs cannot change under it (modules are imported once)."""
    return source_hash(package_folder())


def source_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts):
        relative = path.relative_to(folder).as_posix()
        digest.update(f"{relative}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    return digest.hexdigest()[:16]

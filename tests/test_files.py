"""files: write_atomic, the one way sddkit writes a file that DVC or a later run reads, and DatasetError."""
from __future__ import annotations

import os

import pytest

from sddkit import files, noise, sources


def test_write_atomic_writes_bytes_or_through_a_writer(tmp_path):
    files.write_atomic(tmp_path / "a.json", b'{"x": 1}')
    files.write_atomic(tmp_path / "b.bin", lambda f: f.write(b"\x00\x01"))
    assert (tmp_path / "a.json").read_bytes() == b'{"x": 1}' and (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.bin"]  # no temporary file left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_one(tmp_path):
    target = tmp_path / "splits.npz"
    target.write_bytes(b"old")

    def half_then_fail(f):
        f.write(b"half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        files.write_atomic(target, half_then_fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["splits.npz"]


def test_write_atomic_honours_the_umask_like_a_plain_write(tmp_path):
    files.write_atomic(tmp_path / "atomic", b"x")
    (tmp_path / "plain").write_bytes(b"x")
    assert os.stat(tmp_path / "atomic").st_mode == os.stat(tmp_path / "plain").st_mode


def test_dataset_error_is_one_class_wherever_it_is_raised():
    # Defined in files so that noise can raise it without importing sources; callers still catch it from sources.
    assert sources.DatasetError is files.DatasetError is noise.DatasetError

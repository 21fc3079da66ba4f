"""results.write_atomic: the one way sddkit writes a file that DVC or a later run reads."""
from __future__ import annotations

import os

import pytest

from sddkit import results


def test_write_atomic_writes_bytes_or_through_a_writer(tmp_path):
    results.write_atomic(tmp_path / "a.json", b'{"x": 1}')
    results.write_atomic(tmp_path / "b.bin", lambda f: f.write(b"\x00\x01"))
    assert (tmp_path / "a.json").read_bytes() == b'{"x": 1}' and (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.bin"]  # no temporary file left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_one(tmp_path):
    target = tmp_path / "splits.npz"
    target.write_bytes(b"old")

    def half_then_fail(f):
        f.write(b"half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        results.write_atomic(target, half_then_fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["splits.npz"]


def test_write_atomic_honours_the_umask_like_a_plain_write(tmp_path):
    results.write_atomic(tmp_path / "atomic", b"x")
    (tmp_path / "plain").write_bytes(b"x")
    assert os.stat(tmp_path / "atomic").st_mode == os.stat(tmp_path / "plain").st_mode


def test_write_folder_creates_the_folder_and_replaces_files(tmp_path):
    folder = tmp_path / "results" / "lottery"
    results.write_folder(folder, {"summary.json": b"1", "curve.png": b"png"})
    results.write_folder(folder, {"summary.json": b"2"})
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == {"summary.json": b"2", "curve.png": b"png"}

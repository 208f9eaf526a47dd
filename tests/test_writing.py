"""Atomic output: complete files only, right modes, no temp file left, no needless writes."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from controlplane import writing
from controlplane.errors import OutputError
from controlplane.writing import TEMP_PREFIX, remove_stale_temps, write_atomic


def test_write_is_a_rename_with_mode_0644(tmp_path: Path) -> None:
    """A new inode replaces the old one (what Envoy watches for), mode 0644."""
    target = tmp_path / "cds.json"
    assert write_atomic(target, b"one")
    first = target.stat().st_ino
    assert write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert target.stat().st_ino != first
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_unchanged_content_is_not_rewritten(tmp_path: Path) -> None:
    """Same bytes: no rename, so Envoy sees no reload."""
    target = tmp_path / "cds.json"
    write_atomic(target, b"same")
    inode = target.stat().st_ino
    assert not write_atomic(target, b"same")
    assert target.stat().st_ino == inode


def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    """When the rename fails, the old file is intact and the temp file is gone."""
    target = tmp_path / "cds.json"
    target.mkdir()  # os.replace(file, directory) fails
    with pytest.raises(OutputError, match="cannot write"):
        write_atomic(target, b"new")
    assert target.is_dir()
    assert [p.name for p in tmp_path.iterdir()] == ["cds.json"]


def test_missing_folder_is_an_output_error(tmp_path: Path) -> None:
    """No folder: a clear OutputError, nothing created elsewhere."""
    with pytest.raises(OutputError, match="cannot create a temp file"):
        write_atomic(tmp_path / "missing" / "cds.json", b"x")


def test_stale_temps_are_removed(tmp_path: Path) -> None:
    """Temp files a killed process left are removed; other files are not."""
    (tmp_path / f"{TEMP_PREFIX}cds.json.abc").write_text("torn")
    (tmp_path / "cds.json").write_text("{}")
    remove_stale_temps(tmp_path)
    assert os.listdir(tmp_path) == ["cds.json"]


def test_a_folder_in_memory_is_known_as_such(tmp_path: Path) -> None:
    """/dev/shm is tmpfs on Linux: fsync there buys nothing; the repository's own
    folder, and a missing one, count as disks (their writes stay fsync'd)."""
    assert writing.in_memory(Path("/dev/shm"))
    assert not writing.in_memory(Path(__file__).parent)
    assert not writing.in_memory(tmp_path / "missing")
    shm = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        assert writing.write_atomic(shm / "a.json", b"{}")
        assert (shm / "a.json").read_bytes() == b"{}"
    finally:
        shutil.rmtree(shm)

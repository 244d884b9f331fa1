"""Atomic writes get the mode a plain open() would, under the umask in force at the time."""

import os

from slimkit import atomic


def test_files_get_the_current_umask_not_the_one_at_import(tmp_path):
    # the umask was read once at import, so a caller's later 077 still gave 0644 files
    old = os.umask(0o077)
    try:
        atomic.write_text(tmp_path / "private.txt", "x")
        os.umask(0o022)
        atomic.write_text(tmp_path / "shared.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "private.txt").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "shared.txt").stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["private.txt", "shared.txt"]

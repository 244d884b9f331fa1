"""Atomic writes get the mode a plain open() would, under the umask in force at the time, and a
folder they could not write into is refused up front, naming it."""

import os

import pytest

from slimkit import atomic
from slimkit.errors import ConfigError


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


@pytest.mark.parametrize(
    "write",
    [
        lambda path: atomic.check_writable(path),  # what long commands call on --out up front
        lambda path: atomic.write_json(path, {"a": 1}),  # atomic_path: check_writable(create=True)
    ],
    ids=["check_writable", "write_json"],
)
def test_a_folder_that_is_not_writable_is_refused_naming_it_and_nothing_is_written(
    tmp_path, monkeypatch, write
):
    # Only the prune-scan --plot path checked this; every other --out was refused at the write,
    # after the training or the scan it would have saved.
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    # Tests may run as root, for whom every folder is writable: deny 'locked' by hand.
    monkeypatch.setattr(
        atomic.os, "access", lambda p, mode: False if p == locked else real_access(p, mode)
    )
    target = locked / "run" / "model.json"  # its own folder is missing: 'locked' is checked
    with pytest.raises(ConfigError) as info:
        write(target)
    assert str(info.value) == (
        f"cannot write {str(target)!r}: the folder {str(locked)!r} is not writable; "
        "choose another path"
    )
    assert list(locked.iterdir()) == []  # no 'run' folder, no temp file

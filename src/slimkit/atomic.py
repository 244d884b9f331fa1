"""Atomic file writes: temp file in the same folder + fsync + rename, so a crash never leaves a
half-written artifact under the final name."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from slimkit.errors import ConfigError


def output_dir(
    path: str | os.PathLike[str], target: Path | None = None, *, create: bool = True
) -> Path:
    """Create folder ``path`` (and its parents) for output; a ConfigError naming the file in the
    way, the folder this process may not write into, or the OS's reason, instead of
    FileExistsError / NotADirectoryError / PermissionError. ``target``: the file being written
    there, for the message; ``create=False`` only checks (writes nothing)."""
    folder = Path(path)
    what = str(target if target is not None else folder)
    blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ConfigError(
            f"cannot write {what!r}: {str(blocker)!r} is a file, not a folder; choose another path"
        )
    # The nearest folder that exists is where the file (or its missing folders) gets created.
    # Checked before the mkdir, so a refusal creates no folder; root passes whatever the bits.
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"cannot write {what!r}: the folder {str(existing)!r} is not writable; "
            "choose another path"
        )
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # no permission, read-only disk, ...
            raise ConfigError(
                f"cannot write {what!r}: {exc.strerror}; choose another path"
            ) from exc
    return folder


RUN_MARKER = ".slimkit-run"  # written into every run folder; only slimkit writes this name


def mark_run_folder(path: str | os.PathLike[str]) -> None:
    """Mark ``path`` as a slimkit run folder, so a later run may write into it again."""
    marker = Path(path) / RUN_MARKER
    if not marker.exists():
        write_json(marker, {"written_by": "slimkit", "note": "a slimkit run folder"})


def _is_run_folder(folder: Path) -> bool:
    if (folder / RUN_MARKER).is_file():
        return True
    try:  # a run from before the marker: its state.json is a mapping with the recipe digest
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and "digest" in state and "finished" in state


def refuse_foreign_folder(path: str | os.PathLike[str], flag: str = "--out") -> None:
    """A run writes fixed names (model.onnx, checkpoints/, ...) into its folder. A folder that
    holds files but is not a slimkit run folder (``RUN_MARKER``) is the user's: refused, so
    their own model.onnx or checkpoints are not replaced. New and empty folders pass."""
    folder = Path(path)
    if not folder.is_dir() or _is_run_folder(folder):
        return
    names = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    if names:
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        raise ConfigError(
            f"{flag} {str(folder)!r} already holds files slimkit did not write ({shown}); a run "
            "writes model.onnx, metrics.json, checkpoints/ and more there and would replace "
            "them. Choose a new or empty folder"
        )


def check_writable(path: str | os.PathLike[str], *, create: bool = False) -> Path:
    """Refuse, before any work, a file path that :func:`atomic_path` could not write (a folder,
    a file in the way of its folder, or a folder this process may not write into). Writes
    nothing unless ``create`` (make its folder); long commands call this up front, atomic_path
    with ``create=True``."""
    final = Path(path)
    if final.is_dir():
        raise ConfigError(f"cannot write {str(final)!r}: it is a folder; name a file inside it")
    output_dir(final.parent, final, create=create)
    return final


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success fsync it and rename it over ``path``."""
    final = check_writable(path, create=True)
    try:
        tmp_path = _new_temp(final)
    except OSError as exc:  # no permission, read-only disk, ...
        raise ConfigError(
            f"cannot write {str(final)!r}: {exc.strerror}; choose another path"
        ) from exc
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, final)
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _new_temp(final: Path) -> Path:
    """A new empty file beside ``final``. Created with mode 0666 so the kernel applies the
    process's umask at that moment, as a plain open() would (mkstemp forces 0600)."""
    for _ in range(100):
        tmp = final.parent / f".{final.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary name beside {final}")


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")

"""What every run directory shares: one process at a time, files checked before they are
trusted, and no silent resume of a changed recipe.

- :class:`RunLock`: an exclusive ``flock`` on ``DIR/.lock``. The kernel drops the lock of a
  process that dies, however it dies, so a lock is never stale; the file names the holder
  (pid, host, start time) for the message a second run gets.
- :func:`record` / :func:`check_files`: a state file keeps the size and SHA-256 of every file
  it vouches for; a file edited, truncated or removed since is reported by name, never used.
- :func:`changes`: the recipe a run directory was made for against the one run now, entry by
  entry, for a message that says what changed.
- :func:`remove_strays`: temporaries that a write killed half-way left behind (atomic writes
  go through ``.NAME.XXXXXXXX`` files, :mod:`pcdsl.io.atomic`).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pcdsl.io.atomic import fsync_directory

LOCK = ".lock"


class RunDirError(Exception):
    """A run directory that cannot be used as it is; the message says why and what to do."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record(path: Path) -> dict[str, Any]:
    """What a state file keeps of a file it vouches for: its size and SHA-256."""
    return {"size": path.stat().st_size, "sha256": sha256_file(path)}


def damage(folder: Path, records: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per file of `records` that is no longer as recorded (missing, truncated, edited)."""
    out = []
    for name, want in sorted(records.items()):
        path = folder / name
        if not path.is_file():
            out.append(f"{name} is missing")
            continue
        size = path.stat().st_size
        if size != want["size"]:
            out.append(f"{name} has {size} bytes where {want['size']} were written "
                       f"({'truncated' if size < want['size'] else 'grown'})")
        elif sha256_file(path) != want["sha256"]:
            out.append(f"{name} was changed after it was written (its SHA-256 differs)")
    return out


def check_files(folder: Path, records: Mapping[str, Mapping[str, Any]]) -> None:
    """Raise a :class:`RunDirError` naming every file of `records` that is not as recorded."""
    problems = damage(folder, records)
    if problems:
        raise RunDirError(f"the run directory '{folder}' was changed outside pcdsl: " + "; ".join(problems) +
                          ". Its files cannot be trusted: restore them, or remove the directory (or choose another "
                          "--out) to start afresh")


def read_state(path: Path) -> dict[str, Any] | None:
    """A JSON state file, None when there is none; a damaged one is a :class:`RunDirError`."""
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path} is damaged ({exc}); remove the run directory '{path.parent}' (or choose "
                          "another --out) to start afresh") from None
    if not isinstance(value, dict):
        raise RunDirError(f"{path} is not a pcdsl state file; remove the run directory '{path.parent}' (or choose "
                          "another --out) to start afresh")
    return value


def changes(old: Mapping[str, str], new: Mapping[str, str]) -> list[str]:
    """What differs between two descriptions (entry -> text), one line per entry."""
    out = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key, "(none)"), new.get(key, "(none)")
        if before != after:
            out.append(f"{key}: {before} -> {after}")
    return out


def refuse_changed(folder: Path, old: Mapping[str, str], new: Mapping[str, str]) -> None:
    """Raise a :class:`RunDirError` when the run in `folder` was made for another description."""
    lines = changes(old, new)
    if lines:
        raise RunDirError(f"the run directory '{folder}' holds a run of a different recipe or options, so it is not "
                          "resumed:\n  " + "\n  ".join(lines) + "\nRun with what it was made for to resume it, or "
                          "remove the directory (or choose another --out) to start afresh")


def remove_strays(folder: Path, keep: Iterable[str] = ()) -> list[str]:
    """Delete the temporaries of atomic writes that a crash cut short; returns their names."""
    kept = set(keep) | {LOCK}
    gone = []
    for path in folder.glob(".*"):
        if path.is_file() and path.name not in kept and path.name.count(".") >= 2:
            path.unlink(missing_ok=True)
            gone.append(path.name)
    return gone


class RunLock:
    """An exclusive lock on a run directory, held from :meth:`acquire` to :meth:`release` (or
    the end of a ``with`` block, or the death of the process)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunDirError(f"the run directory '{self.folder}' is in use by {holder}; wait for that run to "
                              "finish or stop it (a run that died leaves no lock behind), or choose another --out") \
                from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pcdsl (pid {os.getpid()} on {socket.gethostname()}, since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')})\n".encode(), 0)
        fsync_directory(self.folder)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

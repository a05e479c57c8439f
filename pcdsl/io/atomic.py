"""Atomic, durable file writes: readers see the old file or the whole new one, never half of
one, and a file is on disk (its directory entry too) before the call returns, so a power loss
right after a write cannot undo it."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from pcdsl.io import faults


def fsync_directory(path: Path | str) -> None:
    """Flush a directory's entries (a rename or a new file in it) to disk."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # a platform (or file system) without directory handles: nothing to flush
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a directory; the rename is still atomic
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: Path | str, suffix: str = "") -> Iterator[BinaryIO]:
    """A binary file to write `path` through: a temporary file in the same folder that replaces
    `path` once the block ends (flushed to disk, mode 0644, the folder's entry flushed too), or
    is removed if it raises."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        faults.point("write", path.name)  # a crash here leaves the whole old file and a stray temporary
        os.chmod(tmp, 0o644)  # mkstemp makes private files; these are ordinary outputs
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_directory(folder)


def write_atomic(path: Path | str, data: bytes) -> None:
    """Write `data` to `path` atomically (see :func:`atomic_file`)."""
    with atomic_file(path) as f:
        f.write(data)


def write_json(path: Path | str, value: object) -> None:
    """`value` as indented, key-sorted JSON, written atomically."""
    import json

    write_atomic(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def append_durably(path: Path | str, data: bytes) -> None:
    """Append `data` to `path` and flush it to disk. Not atomic: a reader that must not see a
    half-written tail keeps the length it trusts elsewhere (a run's state file does)."""
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())

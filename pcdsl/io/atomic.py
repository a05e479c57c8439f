"""Atomic file writes: readers see the old file or the whole new one, never half of one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def atomic_file(path: Path | str, suffix: str = "") -> Iterator[BinaryIO]:
    """A binary file to write `path` through: a temporary file in the same folder that replaces
    `path` once the block ends (flushed to disk, mode 0644), or is removed if it raises."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent if str(path.parent) else ".")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes private files; these are ordinary outputs
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: Path | str, data: bytes) -> None:
    """Write `data` to `path` atomically (see :func:`atomic_file`)."""
    with atomic_file(path) as f:
        f.write(data)


def write_json(path: Path | str, value: object) -> None:
    """`value` as indented, key-sorted JSON, written atomically."""
    import json

    write_atomic(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())

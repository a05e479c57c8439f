"""A small on-disk cache for results that are slow to compute and cheap to store (learned
Chow-Liu trees). Entries are JSON files named by a hash of everything the result depends on,
under ``$PCDSL_CACHE`` (``off`` disables the cache) or ``~/.cache/pcdsl``, written atomically.
A cache that cannot be read or written is skipped silently: it only ever saves time.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pcdsl.io.atomic import write_atomic


def cache_dir() -> Path | None:
    """The cache folder, or None when ``PCDSL_CACHE=off``."""
    chosen = os.environ.get("PCDSL_CACHE")
    if chosen is not None and chosen.strip().lower() in ("off", "0", "none", ""):
        return None
    if chosen:
        return Path(chosen).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pcdsl"


def cache_key(*parts: bytes | str) -> str:
    """A hex digest of ``parts`` (each length-prefixed, so different splits never collide)."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def cache_path(kind: str, key: str) -> Path | None:
    folder = cache_dir()
    return None if folder is None else folder / kind / f"{key}.json"


def read_cached(kind: str, key: str) -> Any | None:
    """The cached value of (kind, key), or None when absent or unreadable."""
    path = cache_path(kind, key)
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_cached(kind: str, key: str, value: Any) -> None:
    """Store ``value`` (JSON-serialisable) for (kind, key); failures are ignored."""
    path = cache_path(kind, key)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(value, separators=(",", ":")).encode())
    except OSError:
        pass

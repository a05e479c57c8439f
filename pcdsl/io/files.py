"""Which kind of file a user handed over: `.pc` source text or a native model file.

Told by the name and, failing that, by the first bytes, so a model file renamed ``.pc`` is still
read as what it is, and every command can say which it read.
"""

from __future__ import annotations

from pathlib import Path

SOURCE, MODEL = ".pc source", "model file"
MODEL_SUFFIXES = (".safetensors",)


def file_kind(path: str | Path) -> str:
    """MODEL for a file named ``.safetensors`` or holding one (an 8-byte header length, then a JSON
    object), else SOURCE. A broken model file still counts as one: its reader says what is wrong."""
    path = Path(path)
    if path.suffix.lower() in MODEL_SUFFIXES:
        return MODEL
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        size = path.stat().st_size
    except OSError:
        return SOURCE
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= size - 8:
        return MODEL
    return SOURCE


def is_text(path: str | Path, probe: int = 4096) -> bool:
    """The file's first bytes are UTF-8 text (a model file is binary)."""
    try:
        with open(path, "rb") as f:
            head = f.read(probe)
    except OSError:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= probe - 3  # a character cut by the probe's end
    return b"\0" not in head

"""IDX files (the format of MNIST and Fashion-MNIST), read without trusting them.

Layout: two zero bytes, a type code (0x08 unsigned byte, 0x09 signed byte, 0x0B int16,
0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions, each dimension as a
big-endian uint32, then the values, big-endian, row-major. A file may be gzip-compressed
(``.gz``). Every size is checked against the bytes actually present before an array is made,
and a compressed file is never inflated beyond ``MAX_IDX_BYTES``.
"""

from __future__ import annotations

import gzip
import io
import math
import zlib
from pathlib import Path

import numpy as np

MAX_IDX_BYTES = 1 << 32  # 4 GiB of values, inflated
TYPES: dict[int, np.dtype] = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
                              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class IdxError(ValueError):
    """An IDX file that cannot be read; the message says why."""


def is_idx(path: str | Path) -> bool:
    """Whether a file name looks like IDX: ``*.idx``, ``*-ubyte`` / ``*.idx3-ubyte``, optionally ``.gz``."""
    name = Path(path).name.lower().removesuffix(".gz")
    return name.endswith((".idx", "-ubyte")) or "-idx" in name


def _bytes(path: Path) -> bytes:
    if path.stat().st_size > MAX_IDX_BYTES:
        raise IdxError(f"{path.stat().st_size} bytes; an IDX file is at most {MAX_IDX_BYTES}")
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":  # not gzip
        return raw
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
            data = f.read(MAX_IDX_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise IdxError(f"a broken gzip stream ({exc})") from None
    if len(data) > MAX_IDX_BYTES:
        raise IdxError(f"inflates to more than {MAX_IDX_BYTES} bytes")
    return data


def read_idx(path: str | Path) -> np.ndarray:
    """The array of an IDX file, in native byte order, shape as stored."""
    raw = _bytes(Path(path))
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise IdxError("no IDX magic number (two zero bytes, a type code, the number of dimensions)")
    code, ndim = raw[2], raw[3]
    if code not in TYPES:
        raise IdxError(f"unknown IDX type code 0x{code:02x} (known: {', '.join(f'0x{c:02x}' for c in TYPES)})")
    if not 1 <= ndim <= 8:
        raise IdxError(f"{ndim} dimensions (1 to 8 are read)")
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise IdxError(f"the header needs {start} bytes, the file has {len(raw)}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    size = math.prod(shape) * TYPES[code].itemsize
    if size != len(raw) - start:
        raise IdxError(f"dimensions {shape} of {TYPES[code].name} need {size} bytes of values, the file has "
                       f"{len(raw) - start}")
    return np.frombuffer(raw, dtype=TYPES[code], offset=start).reshape(shape).astype(TYPES[code].newbyteorder("="))

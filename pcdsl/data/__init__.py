"""Data sources named in .pc files, and loading them as integer matrices.

Formats (chosen by extension):

- ``.data``, ``.csv``, ``.txt``: one sample per line, comma-separated integers
  (the DEBD convention); an empty field or ``?`` marks a missing value (-1);
- ``.npy``: a 2-D integer array; ``.npz``: its first array;
- image files (:mod:`pcdsl.data.images`): IDX (plain or gzip), CIFAR-10 ``.bin`` batches,
  downsampled-ImageNet ``.npz`` and ``.npy``/``.npz`` arrays (N, H, W) or (N, H, W, C), read as one
  row per image (pixels row-major, each pixel's channels adjacent).

Rows are samples, columns are variables in declaration order; -1 marks a
missing value. Nothing in a file is trusted: sizes are checked against the
bytes present before any array is made, and :func:`check_values` checks a
dataset against a circuit's variables.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path
from tokenize import TokenError
from typing import IO, Any

import numpy as np

from pcdsl.data.idx import IdxError, is_idx, read_idx
from pcdsl.diagnostics import MessageError
from pcdsl.numerics import MAX_MAGNITUDE

FORMATS = (".data", ".csv", ".txt", ".npy", ".npz", "IDX")
MAX_DATA_BYTES = 1 << 34  # 16 GiB: an array file's values, or a text file


class DataError(MessageError):
    """A data file that cannot be read; the message says why."""

    code = "E0501"


def load_matrix(path: str | Path) -> np.ndarray:
    """A data file as an int64 matrix (samples, variables), -1 = missing; DataError if unreadable."""
    path = Path(path)
    images = _image_rows(path, None)
    if images is not None:
        return images
    suffix = path.suffix.lower()
    if suffix not in FORMATS and not is_idx(path):
        raise DataError(f"unknown data format '{suffix}' (known: {', '.join(FORMATS)})")
    if suffix in (".npy", ".npz") or is_idx(path):
        return _as_matrix(_array(path), path)
    try:
        return _read_text(path)
    except OSError as exc:
        raise DataError(f"cannot read '{path}': {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"'{path}' is not a valid {suffix or 'IDX'} file: {exc}") from None


def _array(path: Path) -> np.ndarray:
    """The array of a .npy, .npz (first member) or IDX file (2-D: samples, values), sizes checked
    first; DataError for a file that cannot be read."""
    try:
        return _read_array(path)
    except (OSError, ValueError) as exc:  # a forged zip directory, a pickled member, ...
        raise DataError(f"cannot read '{path}': {exc}") from None


def _read_array(path: Path) -> np.ndarray:
    if is_idx(path):
        try:
            array = read_idx(path)
        except IdxError as exc:
            raise DataError(f"'{path}' is not a valid IDX file: {exc}") from None
        return array.reshape(array.shape[0], -1) if array.ndim > 1 else array[:, None]
    if path.suffix.lower() == ".npy":
        with open(path, "rb") as f:
            _npy_header(f, path.stat().st_size, path)
        return np.load(path, allow_pickle=False)  # type: ignore[no-any-return]
    with open(path, "rb") as f:  # numpy takes a file that does not start as a zip for a pickle
        if f.read(4) not in (b"PK\x03\x04", b"PK\x05\x06"):  # a member first, or an empty archive
            raise DataError(f"'{path}' is not a valid .npz file: it does not start with a zip header")
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if m.filename.endswith(".npy")]
            if not members:
                raise DataError(f"'{path}' holds no array")
            with archive.open(members[0]) as f:
                _npy_header(f, members[0].file_size, path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as exc:
        raise DataError(f"'{path}' is not a valid .npz file: {exc}") from None
    with np.load(path, allow_pickle=False) as archive:
        return archive[members[0].filename.removesuffix(".npy")]  # type: ignore[no-any-return]


def _npy_header(f: IO[bytes], size: int, path: Path) -> None:
    """Refuse an .npy stream whose header promises more values than it holds, or non-numbers."""
    read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        version = np.lib.format.read_magic(f)
        if version not in read:
            raise DataError(f"'{path}': .npy format version {version} is not read (1.0 and 2.0 are)")
        shape, _, dtype = read[version](f, max_header_size=1 << 16)
    except (ValueError, SyntaxError, TokenError, TypeError, KeyError, EOFError, OverflowError) as exc:
        raise DataError(f"'{path}' has no valid .npy header: {exc}") from None
    if dtype.kind not in "biuf":
        raise DataError(f"'{path}' holds {dtype} values, not numbers")
    need = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if need > MAX_DATA_BYTES or need != size - f.tell():
        raise DataError(f"'{path}': shape {shape} of {dtype} needs {need} bytes, the file holds {size - f.tell()}")


def load_values(path: str | Path, image_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A data file as float64 (batch, variables): integers for discrete variables, reals for
    real ones; a missing value is NaN (`?` or an empty field in text files).

    Image files give one row per image; ``image_shape`` (the circuit's variable array, e.g.
    (28, 28) or (3, 32, 32)) orders each row's pixels to match it.
    """
    path = Path(path)
    images = _image_rows(path, image_shape)
    if images is not None:
        return images.astype(np.float64)
    suffix = path.suffix.lower()
    if suffix in (".npy", ".npz") or is_idx(path):
        array = _array(path)
        if array.ndim != 2:
            raise DataError(f"'{path}' must hold a 2-D array (samples x variables) or images (N, H, W[, C]), "
                            f"found shape {array.shape}")
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
            raise DataError(f"'{path}' holds {array.dtype} values; data must be numbers")
        return array.astype(np.float64)
    if suffix not in FORMATS:
        raise DataError(f"unknown data format '{path.suffix}' (known: {', '.join(FORMATS)}, and image files: "
                        "IDX, CIFAR-10 .bin)")
    _text_size(path)
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    rows.append(_parse_row(line, path, number))
    except OSError as exc:
        raise DataError(f"cannot read '{path}': {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise DataError(f"'{path}' is not a text file (binary formats: .npy, .npz, IDX, CIFAR-10 .bin)") from None
    if not rows:
        raise DataError(f"'{path}' holds no samples")
    if len({len(r) for r in rows}) != 1:
        raise DataError(f"'{path}': rows have different numbers of values")
    return np.asarray(rows, dtype=np.float64)


def _image_rows(path: Path, image_shape: tuple[int, ...] | None) -> np.ndarray | None:
    """The images of an image file as int64 rows, or None when ``path`` is no image file."""
    from pcdsl.data.images import image_file_format, read_image_file
    from pcdsl.data.layout import images_as_rows

    if not path.is_file():
        raise DataError(f"no such file: '{path}'" if not path.exists() else f"'{path}' is not a file")
    if image_file_format(path) is None:
        return None
    try:
        return images_as_rows(read_image_file(path), image_shape)
    except ValueError as exc:
        raise DataError(f"'{path}': {exc}") from None


def format_row(row: np.ndarray, discrete: list[bool]) -> str:
    """One sample as a text line: integers for discrete variables (-1: missing or undefined), reals
    as they are."""
    return ",".join((str(int(x)) if x == x else "-1") if d else repr(float(x))
                    for x, d in zip(row, discrete, strict=True))


def save_values(path: Path, values: np.ndarray, discrete: list[bool]) -> None:
    """Write samples atomically as .npy (int64 when every column is discrete, -1 for NaN) or as
    comma-separated text (integers where discrete)."""
    from pcdsl.io.atomic import atomic_file

    suffix = path.suffix.lower()
    if suffix not in (".npy", ".csv", ".data", ".txt"):
        raise ValueError(f"unknown output format '{suffix}' (use .csv or .npy)")
    if discrete and all(discrete):
        values = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=-1.0).astype(np.int64)
    with atomic_file(path, suffix) as f:
        if suffix == ".npy":
            np.save(f, values)
        else:
            for row in values:
                f.write((format_row(row, discrete) + "\n").encode())


def _parse_row(line: str, path: Path, number: int) -> list[float]:
    try:
        return [float(x) if x.strip() not in ("", "?") else float("nan") for x in line.strip().split(",")]
    except ValueError:
        raise DataError(f"{path}:{number}: expected comma-separated numbers") from None


def _text_size(path: Path) -> None:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(f"cannot read '{path}': {exc.strerror or exc}") from None
    if size > MAX_DATA_BYTES:
        raise DataError(f"'{path}': {size} bytes; a data file is at most {MAX_DATA_BYTES}")


def check_values(values: np.ndarray, variables: Sequence[Any], path: str | Path) -> None:
    """Refuse data that does not fit a circuit's variables (``Variable``: name, domain): the wrong
    number of columns, a discrete value that is not one of 0..k-1 (or -1 / NaN: missing), a real
    value that is infinite or beyond ``MAX_MAGNITUDE`` (NaN: missing)."""
    if values.ndim != 2 or values.shape[1] != len(variables):
        raise DataError(f"'{path}' has {values.shape[-1] if values.ndim else 0} columns, but the circuit has "
                        f"{len(variables)} variables")
    for v, var in enumerate(variables):
        column = values[:, v]
        size = var.domain.size
        if size is None:
            bad = np.abs(column) > MAX_MAGNITUDE  # inf too; NaN (missing) compares False
        else:
            missing = np.isnan(column) | (column == -1)
            bad = ~missing & ((column < 0) | (column >= size) | (column != np.floor(column)))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            allowed = (f"a number of magnitude at most {MAX_MAGNITUDE:g} (NaN: missing)" if size is None
                       else f"one of 0..{size - 1} (missing: -1)")
            raise DataError(f"'{path}', row {row + 1}, column {v + 1} ('{var.name}'): {column[row]:g} is not "
                            f"{allowed}")


def _read_text(path: Path) -> np.ndarray:
    _text_size(path)
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append([int(x) if x.strip() not in ("", "?") else -1 for x in line.split(",")])
            except ValueError:
                raise DataError(f"{path}:{number}: expected comma-separated integers") from None
            if len(rows[-1]) != len(rows[0]):
                raise DataError(f"{path}:{number}: {len(rows[-1])} values, but line 1 has {len(rows[0])}")
    if not rows:
        raise DataError(f"'{path}' holds no samples")
    return np.asarray(rows, dtype=np.int64)


def _as_matrix(array: np.ndarray, path: Path) -> np.ndarray:
    """A 2-D array of whole numbers as int64: integers, bools, or floats that hold whole numbers
    (NaN: missing, -1), as `pcdsl sample -o x.npy` writes them for mixed circuits."""
    if array.ndim != 2 or array.dtype.kind not in "biuf" or array.dtype == np.uint64:
        raise DataError(f"'{path}' must hold a 2-D array of whole numbers, found {array.dtype} with shape "
                        f"{array.shape}")
    if array.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            present = ~np.isnan(array)
            bad = present & ((array != np.floor(array)) | (np.abs(array) > 2.0**62))
        if bad.any():
            r, c = (int(i) for i in np.argwhere(bad)[0])
            raise DataError(f"'{path}', row {r + 1}, column {c + 1}: {array[r, c]:g} is not a whole number")
        return np.where(present, array, -1).astype(np.int64)
    return array.astype(np.int64, copy=False)

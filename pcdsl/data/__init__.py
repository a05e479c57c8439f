"""Data sources named in .pc files, and loading them as integer matrices.

Formats (chosen by extension):

- ``.data``, ``.csv``, ``.txt``: one sample per line, comma-separated integers
  (the DEBD convention); an empty field or ``?`` marks a missing value (-1);
- ``.npy``: a 2-D integer array; ``.npz``: its first array;
- image files (:mod:`pcdsl.data.images`): IDX (plain or gzip), CIFAR-10 ``.bin`` batches,
  downsampled-ImageNet ``.npz`` and ``.npy``/``.npz`` arrays (N, H, W) or (N, H, W, C), read as one
  row per image (pixels row-major, each pixel's channels adjacent).

Rows are samples, columns are variables in declaration order; -1 marks a
missing value.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

FORMATS = (".data", ".csv", ".txt", ".npy", ".npz")


class DataError(Exception):
    """A data file that cannot be read; the message says why."""


def load_matrix(path: str | Path) -> np.ndarray:
    """A data file as an int64 matrix (samples, variables), -1 = missing; DataError if unreadable."""
    path = Path(path)
    images = _image_rows(path, None)
    if images is not None:
        return images
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"unknown data format '{suffix}' (known: {', '.join(FORMATS)})")
    if suffix in (".npy", ".npz"):
        return _as_matrix(_load_array(path), path)
    try:
        return _read_text(path)
    except OSError as exc:
        raise DataError(f"cannot read '{path}': {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"'{path}' is not a valid {suffix} file: {exc}") from None


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
    if suffix in (".npy", ".npz"):
        array = _load_array(path)
        if array.ndim != 2:
            raise DataError(f"'{path}' must hold a 2-D array (samples x variables) or images (N, H, W[, C]), "
                            f"found shape {array.shape}")
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
            raise DataError(f"'{path}' holds {array.dtype} values; data must be numbers")
        return array.astype(np.float64)
    if suffix not in FORMATS:
        raise DataError(f"unknown data format '{path.suffix}' (known: {', '.join(FORMATS)}, and image files: "
                        "IDX, CIFAR-10 .bin)")
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


def _load_array(path: Path) -> np.ndarray:
    """The array of a .npy file, or the first array of a .npz file (never unpickled)."""
    import zipfile

    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as archive:
            if not archive.files:
                raise DataError(f"'{path}' holds no arrays")
            return archive[archive.files[0]]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read '{path}': {getattr(exc, 'strerror', None) or exc}") from None


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
    """One sample as a text line: integers for discrete variables, reals as they are."""
    return ",".join(str(int(x)) if d else repr(float(x)) for x, d in zip(row, discrete, strict=True))


def save_values(path: Path, values: np.ndarray, discrete: list[bool]) -> None:
    """Write samples atomically as .npy or as comma-separated text (integers where discrete)."""
    from pcdsl.io.atomic import atomic_file

    suffix = path.suffix.lower()
    if suffix not in (".npy", ".csv", ".data", ".txt"):
        raise ValueError(f"unknown output format '{suffix}' (use .csv or .npy)")
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


def _read_text(path: Path) -> np.ndarray:
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
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"'{path}' must hold a 2-D integer array, found {array.dtype} with shape {array.shape}")
    return array.astype(np.int64, copy=False)

"""Image files: IDX (MNIST family), CIFAR-10 binary batches, downsampled-ImageNet ``.npz`` and
``.npy`` arrays, read as uint8 arrays (N, H, W, C) with C = 1 for greyscale.

Every reader checks the file against what its header (or format) declares and raises
:class:`ImageFileError` (a :class:`~pcdsl.data.DataError`) naming the path and what is wrong.
``peek_image_file`` reads headers only (cheap enough for ``pcdsl check``); ``read_image_file``
reads the pixels. Nothing is unpickled: ``np.load(..., allow_pickle=False)`` everywhere.
"""

from __future__ import annotations

import gzip
import math
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from tokenize import TokenError
from typing import BinaryIO

import numpy as np

from pcdsl.data import DataError

IMAGE_SOURCES = ("fashion_mnist", "mnist", "cifar10", "imagenet", "images")  # the .pc sources of images
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
CIFAR_RECORD = 1 + 3 * 32 * 32  # a label byte, then the red, green and blue planes (32x32 each)
IDX_TYPES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "short", 0x0C: "int",
             0x0D: "float", 0x0E: "double"}
IMAGENET_WIDTHS = {3 * s * s: s for s in (8, 16, 32, 64)}  # the official 8x8 .. 64x64 sets
_IDX_NAME = re.compile(r"(idx\d-ubyte|\.idx\d?)(\.gz)?$", re.IGNORECASE)
# numpy parses an .npy header as a Python literal: a forged one raises any of the last four
_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, zipfile.BadZipFile, KeyError,
                SyntaxError, TokenError, TypeError, OverflowError)


class ImageFileError(DataError):
    """An image file that cannot be read; the message names the path and the problem."""


@dataclass(frozen=True)
class ImageInfo:
    """What a header declares: the number of images and the shape (H, W, C) of each."""

    count: int
    shape: tuple[int, int, int]


def image_file_format(path: str | Path) -> str | None:
    """``idx``, ``cifar``, ``npz`` or ``npy`` when ``path`` holds images, else None.

    ``.npy`` counts when it holds a 3-D or 4-D array, ``.npz`` when it has a ``data`` array
    (downsampled ImageNet) or a first array of 3 or 4 dimensions; 2-D arrays are data
    matrices, not images. ``.bin`` is a CIFAR batch; other names are IDX when they end in
    ``idx3-ubyte``, ``.idx`` (optionally ``.gz``) or start with the IDX magic bytes.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".bin":
        return "cifar"
    if suffix in (".npy", ".npz"):
        try:
            ndim = len(_npy_header(path)[0]) if suffix == ".npy" else _npz_image_ndim(path)
        except _READ_ERRORS:
            return None  # the matrix reader reports what is wrong with it
        return suffix[1:] if ndim in (3, 4) else None
    if _IDX_NAME.search(path.name):
        return "idx"
    if suffix in ("", ".gz", ".ubyte"):
        try:
            with _open_maybe_gz(path) as f:
                magic = f.read(4)
        except _READ_ERRORS:
            return None
        return "idx" if len(magic) == 4 and magic[:2] == b"\0\0" and magic[2] in IDX_TYPES else None
    return None


def peek_image_file(path: str | Path) -> ImageInfo:
    """The image count and shape from the file's header, without reading the pixels."""
    path = Path(path)
    kind = _require_format(path)
    try:
        if kind == "idx":
            dims, offset = _idx_header(path)
            shape = _hwc(dims[1:], path)
            _check_idx_size(path, dims, offset)
            return ImageInfo(dims[0], shape)
        if kind == "cifar":
            return ImageInfo(_cifar_count(path), (32, 32, 3))
        if kind == "npy":
            dims, _ = _npy_header(path)
            return ImageInfo(dims[0], _hwc(dims[1:], path))
        return _npz_info(path)
    except ImageFileError:
        raise
    except _READ_ERRORS as exc:
        raise ImageFileError(f"cannot read '{path}': {_reason(exc)}") from None


def read_image_file(path: str | Path) -> np.ndarray:
    """All images of one file as uint8 (N, H, W, C)."""
    path = Path(path)
    kind = _require_format(path)
    readers = {"idx": read_idx, "cifar": read_cifar, "npz": read_npz_images, "npy": read_npy_images}
    try:
        return readers[kind](path)
    except ImageFileError:
        raise
    except MemoryError:
        raise ImageFileError(f"'{path}' does not fit in memory") from None
    except _READ_ERRORS as exc:
        raise ImageFileError(f"cannot read '{path}': {_reason(exc)}") from None


def read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes with 3 dimensions (N, H, W) or 4 (N, H, W, C)."""
    dims, offset = _idx_header(path)
    _hwc(dims[1:], path)
    with _open_maybe_gz(path) as f:
        raw = f.read()
    _idx_size_error(path, dims, len(raw) - offset)
    images = np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)
    return _with_channels(images).copy()


def read_cifar(path: Path) -> np.ndarray:
    """A CIFAR-10 binary batch: 3073-byte records (label 0..9, then R, G, B planes of 32x32)."""
    count = _cifar_count(path)
    records = np.fromfile(path, dtype=np.uint8).reshape(count, CIFAR_RECORD)
    labels = records[:, 0]
    if labels.max(initial=0) > 9:
        bad = int(np.argmax(labels > 9))
        raise ImageFileError(f"'{path}' is not a CIFAR-10 batch: record {bad} has label {labels[bad]}, "
                             "outside 0..9 (CIFAR-100 batches have 3074-byte records and are not read)")
    return np.ascontiguousarray(records[:, 1:].reshape(count, 3, 32, 32).transpose(0, 2, 3, 1))


def read_npz_images(path: Path) -> np.ndarray:
    """A downsampled-ImageNet ``.npz`` (``data``: (N, 3*S*S) channel-planar) or an archive whose
    first array is (N, H, W) or (N, H, W, C)."""
    with np.load(path, allow_pickle=False) as archive:
        if not archive.files:
            raise ImageFileError(f"'{path}' holds no arrays")
        name = "data" if "data" in archive.files else archive.files[0]
        array = archive[name]
    if name == "data" and array.ndim == 2:
        side = _imagenet_side(tuple(array.shape), path)
        planes = _pixels(array, path).reshape(len(array), 3, side, side)
        return np.ascontiguousarray(planes.transpose(0, 2, 3, 1))
    return _image_array(array, path)


def read_npy_images(path: Path) -> np.ndarray:
    """A ``.npy`` array (N, H, W) or (N, H, W, C) of pixels 0..255."""
    return _image_array(np.load(path, allow_pickle=False), path)


# ---- headers ----------------------------------------------------------------------------------


def _require_format(path: Path) -> str:
    if not path.exists():
        raise ImageFileError(f"no such file: '{path}'")
    kind = image_file_format(path)
    if kind is None:
        raise ImageFileError(f"'{path}' is not an image file (IDX, CIFAR-10 .bin, .npz with 'data' or "
                             "(N, H, W[, C]) arrays, or such a .npy)")
    return kind


def _open_maybe_gz(path: Path) -> BinaryIO:
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")  # type: ignore[return-value]


def _idx_header(path: Path) -> tuple[tuple[int, ...], int]:
    """The declared dimensions and where the pixels start; unsigned-byte files only."""
    with _open_maybe_gz(path) as f:
        magic = f.read(4)
        if len(magic) < 4 or magic[:2] != b"\0\0" or magic[2] not in IDX_TYPES:
            raise ImageFileError(f"'{path}' is not an IDX file: bad magic number {magic.hex() or '(empty)'} "
                                 "(expected 0000 08 NN: two zero bytes, the type code, the dimensions)")
        if magic[2] != 0x08:
            raise ImageFileError(f"'{path}' holds IDX values of type {IDX_TYPES[magic[2]]}; "
                                 "images must be unsigned bytes (type code 0x08)")
        ndim = magic[3]
        raw = f.read(4 * ndim)
    if len(raw) < 4 * ndim:
        raise ImageFileError(f"'{path}' is truncated inside its IDX header ({ndim} dimensions declared)")
    return tuple(int(d) for d in np.frombuffer(raw, dtype=">u4")), 4 + 4 * ndim


def _check_idx_size(path: Path, dims: tuple[int, ...], offset: int) -> None:
    """An uncompressed file's size against its header (a gzip file is checked when read)."""
    with open(path, "rb") as f:
        if f.read(2) == b"\x1f\x8b":
            return
    _idx_size_error(path, dims, path.stat().st_size - offset)


def _idx_size_error(path: Path, dims: tuple[int, ...], actual: int) -> None:
    declared = math.prod(dims)
    if actual != declared:
        problem = "is truncated" if actual < declared else "has trailing bytes"
        raise ImageFileError(f"'{path}' {problem}: its IDX header declares {'x'.join(map(str, dims))} = "
                             f"{declared} pixel bytes, the file holds {actual}")


def _cifar_count(path: Path) -> int:
    size = path.stat().st_size
    if size == 0 or size % CIFAR_RECORD:
        raise ImageFileError(f"'{path}' is not a CIFAR-10 batch: {size} bytes is not a whole number of "
                             f"{CIFAR_RECORD}-byte records (1 label byte + 3072 pixels); truncated?")
    return size // CIFAR_RECORD


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    with open(path, "rb") as f:
        shape, dtype, data_start = _read_npy_header(f)
        size = path.stat().st_size
    _check_size(path, shape, dtype, size - data_start)
    return shape, dtype


def _read_npy_header(f: BinaryIO) -> tuple[tuple[int, ...], np.dtype, int]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f".npy format version {version[0]}.{version[1]} is not read (1.0 and 2.0 are)")
    return tuple(shape), dtype, f.tell()


def _check_size(path: Path, shape: tuple[int, ...], dtype: np.dtype, actual: int) -> None:
    declared = math.prod(shape) * dtype.itemsize
    if dtype.hasobject:
        raise ImageFileError(f"'{path}' holds Python objects; only numeric arrays are read (no pickle)")
    if actual < declared:
        raise ImageFileError(f"'{path}' is truncated: its header declares shape {shape} of {dtype} "
                             f"({declared} bytes), the file holds {actual}")


def _npz_header(path: Path) -> tuple[str, tuple[int, ...], np.dtype, int]:
    """The member holding the images (``data``, else the first), its shape, dtype and the number
    of bytes after its header."""
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.endswith(".npy")]
        if not names:
            raise ImageFileError(f"'{path}' holds no arrays")
        member = "data.npy" if "data.npy" in names else names[0]
        with archive.open(member) as f:
            shape, dtype, start = _read_npy_header(f)  # type: ignore[arg-type]
        return member[:-4], shape, dtype, archive.getinfo(member).file_size - start


def _is_imagenet(name: str, shape: tuple[int, ...], dtype: np.dtype) -> bool:
    """The official downsampled-ImageNet layout: ``data``, uint8 rows of 3 * S * S pixels."""
    return name == "data" and len(shape) == 2 and dtype == np.uint8 and shape[1] in IMAGENET_WIDTHS


def _npz_image_ndim(path: Path) -> int:
    name, shape, dtype, _ = _npz_header(path)
    return 4 if _is_imagenet(name, shape, dtype) else len(shape)


def _npz_info(path: Path) -> ImageInfo:
    name, shape, dtype, size = _npz_header(path)
    _check_size(path, shape, dtype, size)
    if name == "data" and len(shape) == 2:
        side = _imagenet_side(shape, path)
        return ImageInfo(shape[0], (side, side, 3))
    return ImageInfo(shape[0], _hwc(shape[1:], path))


# ---- shapes and values ------------------------------------------------------------------------


def _hwc(dims: tuple[int, ...], path: Path) -> tuple[int, int, int]:
    if len(dims) == 2:
        return (dims[0], dims[1], 1)
    if len(dims) == 3:
        return (dims[0], dims[1], dims[2])
    raise ImageFileError(f"'{path}' holds {len(dims) + 1}-D data; images are (N, H, W) or (N, H, W, C)"
                         + (" (1-D IDX files hold labels, not images)" if not dims else ""))


def _imagenet_side(shape: tuple[int, ...], path: Path) -> int:
    width = shape[1] if len(shape) == 2 else -1
    side = math.isqrt(max(width, 0) // 3)
    if len(shape) != 2 or width != 3 * side * side or side == 0:
        raise ImageFileError(f"'{path}': 'data' has shape {shape}; downsampled ImageNet rows hold "
                             "3 * S * S channel-planar pixels (3072 for 32x32, 12288 for 64x64)")
    return side


def _pixels(array: np.ndarray, path: Path) -> np.ndarray:
    """``array`` as uint8: integer values 0..255 only."""
    if array.dtype == np.uint8:
        return array
    if not np.issubdtype(array.dtype, np.integer):
        raise ImageFileError(f"'{path}' holds {array.dtype} values; pixels must be integers 0..255 (uint8)")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ImageFileError(f"'{path}' holds values {array.min()}..{array.max()}; pixels must lie in 0..255")
    return array.astype(np.uint8)


def _image_array(array: np.ndarray, path: Path) -> np.ndarray:
    if array.ndim not in (3, 4):
        raise ImageFileError(f"'{path}' holds an array of shape {array.shape}; images are (N, H, W) or "
                             "(N, H, W, C)")
    return np.ascontiguousarray(_with_channels(_pixels(array, path)))


def _with_channels(images: np.ndarray) -> np.ndarray:
    return images[..., None] if images.ndim == 3 else images


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, EOFError):
        return f"the compressed stream ends early (truncated?): {exc}"
    return str(exc) or type(exc).__name__

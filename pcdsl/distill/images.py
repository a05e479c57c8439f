"""Image data for distillation: the image sources, the validation split, patch grids, colour
transforms and PNG grids (the last two live in :mod:`pcdsl.distill.colour` and
:mod:`pcdsl.io.png` and are re-exported here).

Images are uint8 arrays (N, H, W, C), C = 1 for greyscale. A source is a kind (``fashion_mnist``,
``mnist``, ``cifar10``, ``imagenet``, ``images``) and its arguments as a ``.pc`` file binds them;
relative paths are relative to ``base_dir`` (the folder of that file). ``docs/data.md`` lists
the layouts each kind reads.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pcdsl.data import DataError
from pcdsl.data.images import (
    FASHION_MNIST_ROOT,
    IMAGE_SOURCES,
    ImageFileError,
    ImageInfo,
    peek_image_file,
    read_image_file,
)
from pcdsl.distill.colour import TRANSFORMS, inverse, levels, transform
from pcdsl.io.png import write_png_grid

__all__ = [
    "IMAGE_SOURCES", "TRANSFORMS", "ImageFileError", "ImageInfo", "PatchError", "PatchGrid", "image_files",
    "image_source_problem", "inverse", "levels", "load_images", "peek_images", "split_valid", "transform",
    "write_png_grid",
]

SPLITS = ("train", "valid", "test")
_DEFAULT_FOLDERS = {"mnist": ("mnist", "/usr/share/datasets/mnist"),
                    "cifar10": ("cifar-10-batches-bin", None)}


# ---- which files a source reads --------------------------------------------------------------


def image_files(kind: str, args: Mapping[str, Any], base_dir: str, split: str) -> list[Path]:
    """The files holding ``split`` of an image source (``valid`` is carved from train's files).

    Raises DataError naming every place looked in when they are missing.
    """
    if kind not in IMAGE_SOURCES:
        raise DataError(f"'{kind}' is not an image source (image sources: {', '.join(IMAGE_SOURCES)})")
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}' (splits: {', '.join(SPLITS)})")
    part = "test" if split == "test" else "train"
    if kind in ("fashion_mnist", "mnist"):
        return [_first(_idx_candidates(root, part)) for root in [_one_root(kind, args, base_dir, part)]]
    if kind == "cifar10":
        root = _one_root(kind, args, base_dir, part)
        names = ["test_batch.bin"] if part == "test" else [f"data_batch_{i}.bin" for i in range(1, 6)]
        return [root / name for name in names]
    if kind == "imagenet":
        return _imagenet_files(_resolve(base_dir, str(args["root"])), part)
    return _named_files(args, base_dir, part)


def _resolve(base_dir: str, path: str) -> Path:
    return Path(os.path.expanduser(path)) if os.path.isabs(os.path.expanduser(path)) else Path(base_dir, path)


def _first(candidates: list[Path]) -> Path:
    for path in candidates:
        if path.is_file():
            return path
    raise DataError(f"no data file found (looked for {', '.join(repr(str(p)) for p in candidates)})")


def _idx_candidates(root: Path, part: str) -> list[Path]:
    prefix = "t10k" if part == "test" else "train"
    stems = [f"{prefix}-images-idx3-ubyte", f"{prefix}-images.idx3-ubyte"]
    return [root / (stem + gz) for stem in stems for gz in (".gz", "")]


def _one_root(kind: str, args: Mapping[str, Any], base_dir: str, part: str) -> Path:
    """The folder that holds the source's files: ``root``, else the first default that does."""
    if args.get("root"):
        root = _resolve(base_dir, str(args["root"]))
        roots = [root, root / "cifar-10-batches-bin"] if kind == "cifar10" else [root]
    elif kind == "fashion_mnist":
        roots = [Path(FASHION_MNIST_ROOT)]
    else:
        folder, system = _DEFAULT_FOLDERS[kind]
        env = [Path(p, folder) for p in os.environ.get("PCDSL_DATA", "").split(os.pathsep) if p]
        roots = [*env, Path(base_dir, "data", folder), *([Path(system)] if system else [])]
    for root in roots:
        first = _idx_candidates(root, part) if kind != "cifar10" else [root / "test_batch.bin",
                                                                        root / "data_batch_1.bin"]
        if any(p.is_file() for p in first):
            return root
    what = "ROOT/test_batch.bin, ROOT/data_batch_N.bin" if kind == "cifar10" else \
        "ROOT/train-images-idx3-ubyte[.gz], ROOT/t10k-images-idx3-ubyte[.gz]"
    raise DataError(f"no {kind} files found ({what}) in {', '.join(repr(str(r)) for r in roots)}"
                    + ("" if args.get("root") else "; set `root = \"...\"` or $PCDSL_DATA"))


def _imagenet_files(root: Path, part: str) -> list[Path]:
    """Official layout (train_data_batch_N.npz, val_data.npz) or train/ and val/ folders of .npz."""
    if root.is_file():
        if part == "test":
            raise DataError(f"'{root}' is one file, so it has no test split; point imagenet(...) at the "
                            "folder that holds val_data.npz, or use images(\"train.npz\", test = \"val.npz\")")
        return [root]
    if not root.is_dir():
        raise DataError(f"no ImageNet folder or file '{root}'")
    if part == "test":
        found = [root / "val_data.npz"] if (root / "val_data.npz").is_file() else _npz_in(root / "val")
    else:
        found = sorted(root.glob("train_data_batch_*.npz"), key=_number) or _npz_in(root / "train")
    if not found:
        wanted = "val_data.npz or val/*.npz" if part == "test" else "train_data_batch_N.npz or train/*.npz"
        raise DataError(f"no downsampled-ImageNet {part} files in '{root}' (looked for {wanted})")
    return found


def _npz_in(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.npz"), key=_number) if folder.is_dir() else []


def _number(path: Path) -> tuple[int, str]:
    digits = re.findall(r"\d+", path.stem)
    return (int(digits[-1]) if digits else -1, path.name)


def _named_files(args: Mapping[str, Any], base_dir: str, part: str) -> list[Path]:
    key = "test" if part == "test" else "path"
    if args.get(key) is None:
        raise DataError("images(...) was given no test file; add `test = \"file\"`")
    path = _resolve(base_dir, str(args[key]))
    if not path.is_file():
        raise DataError(f"no data file found (looked for '{path}')")
    return [path]


# ---- loading and splitting -------------------------------------------------------------------


def load_images(kind: str, args: Mapping[str, Any], base_dir: str, split: str) -> np.ndarray:
    """The images of one split as uint8 (N, H, W, C).

    ``train`` and ``valid`` come from the training files: the first ``limit`` images (all when
    ``limit`` is None), of which ``valid`` are held out by :func:`split_valid` with ``seed``.
    ``test`` is the test files' first ``limit`` images. Bad files raise DataError.
    """
    files = image_files(kind, args, base_dir, split)
    limit = args.get("limit")
    parts: list[np.ndarray] = []
    total = 0
    for path in files:
        if limit is not None and total >= limit:
            break
        images = read_image_file(path)
        if parts and images.shape[1:] != parts[0].shape[1:]:
            raise ImageFileError(f"'{path}' holds {_shape(images.shape[1:])} images, but '{files[0]}' holds "
                                 f"{_shape(parts[0].shape[1:])}")
        parts.append(images)
        total += len(images)
    images = parts[0] if len(parts) == 1 else np.concatenate(parts)
    images = images if limit is None else images[:limit]
    _check_side(kind, args, images.shape[1:], files[0])
    return _split(images, args, split)


def peek_images(kind: str, args: Mapping[str, Any], base_dir: str, split: str) -> ImageInfo:
    """The number of images of ``split`` and their shape (H, W, C), from the file headers only."""
    files = image_files(kind, args, base_dir, split)
    infos = [peek_image_file(p) for p in files]
    for path, info in zip(files, infos, strict=True):
        if info.shape != infos[0].shape:
            raise ImageFileError(f"'{path}' holds {_shape(info.shape)} images, but '{files[0]}' holds "
                                 f"{_shape(infos[0].shape)}")
    _check_side(kind, args, infos[0].shape, files[0])
    count = sum(i.count for i in infos)
    count = count if args.get("limit") is None else min(count, int(args["limit"]))
    valid = int(args.get("valid") or 0)
    if split != "test":
        _check_valid(valid, count, split)
        count = valid if split == "valid" else count - valid
    return ImageInfo(count, infos[0].shape)


def image_source_problem(source: Any, splits: tuple[str, ...] | None = None) -> str | None:
    """What stops an image source from loading, or None: missing files, bad headers, a ``valid``
    split larger than train, a wrong ``size``. Reads headers only (cheap enough for check time).

    ``source`` is a :class:`~pcdsl.syntax.sources.DataSource`; other kinds than image sources
    give None. ``splits`` defaults to train and the source's own ``split``.
    """
    if source.kind not in IMAGE_SOURCES:
        return None
    own = str(source.args.get("split") or "train")
    for split in splits or tuple(dict.fromkeys(("train", own))):
        try:
            peek_images(source.kind, source.args, source.base_dir, split)
        except DataError as exc:
            return str(exc)
    return None


def split_valid(train: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rest, valid): ``count`` rows of ``train`` chosen at random with ``seed`` are held out; both
    parts keep the original order. The same (train, count, seed) always gives the same split."""
    if isinstance(count, bool) or not 0 <= count < len(train):
        raise ValueError(f"a validation split of {count} needs 0 <= valid < {len(train)} (the training images)")
    order = np.random.default_rng(seed).permutation(len(train))
    held = np.zeros(len(train), dtype=bool)
    held[order[:count]] = True
    return train[~held], train[held]


def _split(images: np.ndarray, args: Mapping[str, Any], split: str) -> np.ndarray:
    if split == "test":
        return images
    valid = int(args.get("valid") or 0)
    _check_valid(valid, len(images), split)
    rest, held = split_valid(images, valid, int(args.get("seed") or 0))
    return held if split == "valid" else rest


def _check_valid(valid: int, count: int, split: str) -> None:
    if split == "valid" and valid == 0:
        raise DataError("no validation split: the source has valid = 0 (give `valid = N`)")
    if valid >= count:
        raise DataError(f"valid = {valid} leaves no training images: the training files hold {count}")


def _check_side(kind: str, args: Mapping[str, Any], shape: tuple[int, ...], path: Path) -> None:
    size = args.get("size")
    if kind == "imagenet" and size is not None and tuple(shape) != (size, size, 3):
        raise ImageFileError(f"'{path}' holds {_shape(shape)} images, but the source says size = {size}")


def _shape(shape: tuple[int, ...]) -> str:
    h, w, c = shape
    return f"{h}x{w}" + ("" if c == 1 else f"x{c}")


# ---- patches ---------------------------------------------------------------------------------


class PatchError(ValueError):
    """A patch grid that does not fit the image; the message says how to fix it."""


@dataclass(frozen=True)
class PatchGrid:
    """Non-overlapping ``patch`` = (ph, pw) tiles of ``image`` = (H, W, C) images.

    Patch i is at grid row ``i // cols``, column ``i % cols``; inside a patch the pixels are
    row-major and each pixel's channels are adjacent (a patch vector has ``dims`` = ph*pw*C
    values). A grid that does not tile the image raises :class:`PatchError` when built.
    """

    image: tuple[int, int, int]
    patch: tuple[int, int]

    def __post_init__(self) -> None:
        image, patch = tuple(self.image), tuple(self.patch)
        if len(image) == 2:
            image = (*image, 1)
        object.__setattr__(self, "image", tuple(int(v) for v in image))
        object.__setattr__(self, "patch", tuple(int(v) for v in patch))
        if len(image) != 3 or min(image) < 1:
            raise PatchError(f"an image shape is (H, W) or (H, W, C) of positive sizes, got {image}")
        if len(patch) != 2 or min(patch) < 1:
            raise PatchError(f"a patch is (height, width) of positive sizes, got {patch}")
        for what, side, step in (("height", image[0], patch[0]), ("width", image[1], patch[1])):
            if side % step:
                fits = ", ".join(str(d) for d in range(1, side + 1) if side % d == 0)
                raise PatchError(f"{patch[0]}x{patch[1]} patches do not tile {image[0]}x{image[1]} images: the "
                                 f"image {what} {side} is not a multiple of {step} (patch {what}s that fit: {fits})")

    @property
    def rows(self) -> int:
        return self.image[0] // self.patch[0]

    @property
    def cols(self) -> int:
        return self.image[1] // self.patch[1]

    @property
    def count(self) -> int:
        return self.rows * self.cols

    @property
    def dims(self) -> int:
        return self.patch[0] * self.patch[1] * self.image[2]

    def to_patches(self, images: np.ndarray) -> np.ndarray:
        """Images (N, H, W, C) as patch vectors (N, count, dims)."""
        images = self._images(images)
        (ph, pw), c = self.patch, self.image[2]
        tiles = images.reshape(len(images), self.rows, ph, self.cols, pw, c).transpose(0, 1, 3, 2, 4, 5)
        return tiles.reshape(len(images), self.count, self.dims)

    def from_patches(self, patches: np.ndarray) -> np.ndarray:
        """Patch vectors (N, count, dims) back to images (N, H, W, C)."""
        patches = np.asarray(patches)
        if patches.ndim != 3 or patches.shape[1:] != (self.count, self.dims):
            raise PatchError(f"expected patches of shape (N, {self.count}, {self.dims}), got {patches.shape}")
        (ph, pw), (h, w, c) = self.patch, self.image
        tiles = patches.reshape(len(patches), self.rows, self.cols, ph, pw, c).transpose(0, 1, 3, 2, 4, 5)
        return tiles.reshape(len(patches), h, w, c)

    def pixel_columns(self, i: int) -> np.ndarray:
        """The columns of patch ``i``'s values in flattened images (N, H*W*C), in patch order."""
        if not 0 <= i < self.count:
            raise PatchError(f"patch index {i} outside 0..{self.count - 1}")
        (ph, pw), (_h, w, c) = self.patch, self.image
        top, left = (i // self.cols) * ph, (i % self.cols) * pw
        dy, dx, ch = np.meshgrid(np.arange(ph), np.arange(pw), np.arange(c), indexing="ij")
        return (((top + dy) * w + (left + dx)) * c + ch).reshape(-1).astype(np.int64)

    def _images(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim == 3 and self.image[2] == 1:
            images = images[..., None]
        if images.ndim != 4 or tuple(images.shape[1:]) != self.image:
            raise PatchError(f"expected images of shape (N, {', '.join(map(str, self.image))}), got {images.shape}")
        return images

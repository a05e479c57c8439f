"""Data sources: `data train = file("nltcs.train.data")` and friends.

A source is checked when the file is checked (name, arguments) and read only
when something needs its samples (a template learning its structure, a
recipe running). Paths are relative to the .pc file that names them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pcdsl.data import DataError, load_matrix
from pcdsl.data.images import FASHION_MNIST_ROOT, IMAGE_SOURCES
from pcdsl.diagnostics import Span
from pcdsl.syntax import ast
from pcdsl.syntax.signatures import Param, Signature, bind, lookup, read_int, read_str, read_symbol
from pcdsl.syntax.values import Values

SPLITS = ("train", "valid", "test")


def _image_source(name: str, doc: str, *where: Param) -> Signature:
    """An image source: where its files are, then the split, the validation split and a limit."""
    first, rest = [p for p in where if p.positional], [p for p in where if not p.positional]
    return Signature(name, (
        *first,
        Param("split", read_symbol(*SPLITS), "train"),
        *rest,
        Param("valid", read_int(0), 0, positional=False, doc="images held out of train as the valid split"),
        Param("seed", read_int(0), 0, positional=False, doc="seed of the validation split"),
        Param("limit", read_int(1), None, positional=False, doc="only the first N images of train (or test)"),
    ), doc)


SOURCES = {
    "file": Signature("file", (Param("path", read_str()),),
                      "samples from a .data/.csv/.npy/.npz file, relative to this .pc file"),
    "debd": Signature("debd", (Param("name", read_str()), Param("split", read_symbol(*SPLITS), "train"),
                               Param("root", read_str(), None, positional=False)),
                      "a binary density-estimation benchmark: ROOT/NAME/NAME.SPLIT.data"),
    **{sig.name: sig for sig in (
        _image_source("fashion_mnist", "Fashion-MNIST (IDX; 28x28, 256 grey levels); default root: Debian's "
                      "dataset-fashion-mnist", Param("root", read_str(), FASHION_MNIST_ROOT, positional=False)),
        _image_source("mnist", "MNIST (IDX; 28x28, 256 grey levels) in ROOT, else $PCDSL_DATA/mnist or data/mnist",
                      Param("root", read_str(), None, positional=False)),
        _image_source("cifar10", "CIFAR-10 binary batches (32x32 RGB) in ROOT, else $PCDSL_DATA/cifar-10-batches-bin "
                      "or data/cifar-10-batches-bin", Param("root", read_str(), None, positional=False)),
        _image_source("imagenet", "downsampled ImageNet .npz files: a folder (train_data_batch_N.npz, val_data.npz) "
                      "or one file", Param("root", read_str()),
                      Param("size", read_int(1), None, positional=False, doc="image side, checked (32 or 64)")),
        _image_source("images", "images of any readable format (.npy (N, H, W[, C]), .npz, IDX, CIFAR .bin)",
                      Param("path", read_str(), doc="the training images"),
                      Param("test", read_str(), None, positional=False, doc="the test images")),
    )},
}


@dataclass(frozen=True)
class DataSource:
    kind: str
    args: dict[str, object]
    base_dir: str  # directory of the .pc file that declared it
    span: Span

    def candidates(self) -> list[Path]:
        """Where the samples are looked for, in order (for image sources: the files read)."""
        if self.kind == "file":
            return [Path(self.base_dir, str(self.args["path"]))]
        if self.kind == "debd":
            name, split = str(self.args["name"]), str(self.args["split"])
            roots = [str(self.args["root"])] if self.args["root"] else _debd_roots(self.base_dir)
            return [Path(r, name, f"{name}.{split}.data") for r in roots]
        from pcdsl.distill.images import image_files

        try:
            return image_files(self.kind, self.args, self.base_dir, str(self.args["split"]))
        except DataError:
            return []

    def load(self, split: str | None = None, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """The samples as an int64 matrix; DataError when they cannot be read. Image sources
        give one row per image of ``split`` (default: the source's own), its pixels ordered as
        a circuit's variable array of ``shape`` (default: row-major, channels adjacent)."""
        if self.kind in IMAGE_SOURCES:
            from pcdsl.data.layout import images_as_rows
            from pcdsl.distill.images import load_images

            images = load_images(self.kind, self.args, self.base_dir, split or str(self.args["split"]))
            try:
                return images_as_rows(images, shape)
            except ValueError as exc:
                raise DataError(str(exc)) from None
        for path in self.candidates():
            if path.exists():
                return load_matrix(path)
        looked = ", ".join(f"'{p}'" for p in self.candidates())
        raise DataError(f"no data file found (looked for {looked})")


def _debd_roots(base_dir: str) -> list[str]:
    roots = [os.path.join(p, "debd") for p in os.environ.get("PCDSL_DATA", "").split(os.pathsep) if p]
    return [*roots, os.path.join(base_dir, "data", "debd"), os.path.join(base_dir, "data")]


def read_source(vals: Values, call: ast.Call) -> DataSource:
    sig = lookup(vals, call, SOURCES, "data source")
    bound = bind(vals, call, sig)
    base = os.path.dirname(call.span.file) if call.span.source else "."
    return DataSource(sig.name, dict(bound.values), base, call.span)

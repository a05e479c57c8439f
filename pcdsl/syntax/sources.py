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
from pcdsl.diagnostics import Span
from pcdsl.syntax import ast
from pcdsl.syntax.signatures import Param, Signature, bind, lookup, read_int, read_str, read_symbol
from pcdsl.syntax.values import Values

SPLITS = ("train", "valid", "test")

SOURCES = {
    "file": Signature("file", (Param("path", read_str()),),
                      "samples from a .data/.csv/.npy/.npz file, relative to this .pc file"),
    "debd": Signature("debd", (Param("name", read_str()), Param("split", read_symbol(*SPLITS), "train"),
                               Param("root", read_str(), None, positional=False)),
                      "a binary density-estimation benchmark: ROOT/NAME/NAME.SPLIT.data"),
    "fashion_mnist": Signature("fashion_mnist", (
        Param("split", read_symbol(*SPLITS), "train"),
        Param("valid", read_int(0), 0, positional=False),
        Param("root", read_str(), "/usr/share/datasets/fashion-mnist", positional=False)),
        "Fashion-MNIST images (28x28, 256 grey levels); `valid` samples held out of train"),
}


@dataclass(frozen=True)
class DataSource:
    kind: str
    args: dict[str, object]
    base_dir: str  # directory of the .pc file that declared it
    span: Span

    def candidates(self) -> list[Path]:
        """Where the samples are looked for, in order."""
        if self.kind == "file":
            return [Path(self.base_dir, str(self.args["path"]))]
        if self.kind == "debd":
            name, split = str(self.args["name"]), str(self.args["split"])
            roots = [str(self.args["root"])] if self.args["root"] else _debd_roots(self.base_dir)
            return [Path(r, name, f"{name}.{split}.data") for r in roots]
        return [Path(str(self.args["root"]))]

    def load(self) -> np.ndarray:
        """The samples as an int64 matrix; DataError when they cannot be read."""
        if self.kind == "fashion_mnist":
            raise DataError("Fashion-MNIST images are read by recipes, not by structure templates")
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

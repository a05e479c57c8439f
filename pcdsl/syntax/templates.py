"""Signatures of the structure templates callable from `structure = ...`.

The first argument of every template is the variables it covers (an array,
a slice of one, or a list of variables); the generators live in
:mod:`pcdsl.structures`.
"""

from __future__ import annotations

from pcdsl.syntax.signatures import Param, Signature, read_float, read_int, read_ints, read_units

_VARS = Param("vars", None, doc="the variables: an array, a slice `x[0:14, :]` or a list")


def _units(default: int | None = 16) -> Param:
    return Param("units", read_units(), default, positional=False, doc="units per region")


def _input_units() -> Param:
    return Param("input_units", read_units(), None, positional=False, doc="units per input group")


TEMPLATES = {
    "hclt": Signature("hclt", (
        _VARS,
        Param("hidden", read_units(), 16, positional=False, doc="latent units per variable"),
        Param("data", None, positional=False, doc="the data the Chow-Liu tree is learned from"),
        Param("trees", read_int(1, 64), 1, positional=False, doc="mixture of this many Chow-Liu trees"),
        Param("pseudocount", read_float(0.0), 0.1, positional=False),
        Param("bins", read_int(2), 16, positional=False, doc="bins per variable for mutual information"),
        Param("subsample", read_int(0), 5000, positional=False,
              doc="rows the tree is learned from, drawn with `seed` (0 = all rows)"),
        Param("seed", read_int(0), 0, positional=False, doc="seed of the subsample"),
    ), "hidden Chow-Liu tree (Liu & Van den Broeck 2021), learned from a subsample of the data "
       "(5,000 rows by default) and cached on disk"),
    "poon_domingos": Signature("poon_domingos", (
        _VARS, Param("delta", read_ints(1), positional=False, doc="split step(s) in pixels"),
        _units(), _input_units(),
    ), "Poon-Domingos rectangle decomposition of an image"),
    "quad_tree": Signature("quad_tree", (_VARS, _units(), _input_units()),
                           "recursive split of an image into quadrants"),
    "rat": Signature("rat", (
        _VARS, Param("depth", read_int(1, 64), 2, positional=False),
        Param("repetitions", read_int(1, 256), 1, positional=False),
        _units(), _input_units(), Param("seed", read_int(0), 0, positional=False),
    ), "random and tensorised binary region trees (Peharz et al. 2020)"),
    "fully_factorized": Signature("fully_factorized", (_VARS, _units(1)),
                                  "a product of independent leaves (a mixture when units > 1)"),
}

IMAGE_TEMPLATES = {"poon_domingos", "quad_tree"}

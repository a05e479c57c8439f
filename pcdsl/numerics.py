"""Numerical constants shared by the reference evaluator, the backends and learning.

The rules they implement are written down in ``docs/numerics.md``. In short:

- A sum unit is ``log sum_c w_c exp(x_c)``. Backends evaluate it as a batched matrix product
  shifted by one value per input column (``m``, the largest input that has a non-zero weight in
  the fold); a unit whose shifted sum comes out below :func:`underflow_guard` may have lost its
  digits to underflow (its own largest weighted term lies far below ``m``), so it is recomputed
  with its own shift, the largest *weighted* term ``max_c log w_c + x_c``. Zero weights never set
  a shift. Flows use the same test and recompute those units edge by edge.
- A parameter row whose total flow is at most :data:`ZERO_FLOW` is kept as it is by every
  learning rule (EM, SGD), in every family.
- Gaussian leaves are evaluated in float64 up to the log-density (then rounded to the model's
  dtype), and their sufficient statistics are centred on the unit's current mean.

This module imports nothing: emitted torch packages (``pcdsl compile -o``) carry a copy of it.
"""

from __future__ import annotations

ZERO_FLOW = 1e-12  # expected samples; a parameter row with no more flow than this is left unchanged
RELATIVE_STD_FLOOR = 1e-3  # default std floor of a Gaussian leaf, as a fraction of its variable's std
ROW_TOLERANCE = 1e-6  # |sum of a probability row - 1| accepted in model files (as in .pc files)
# real data values and Gaussian means and stds (and 1 / std) stay below this in magnitude, so that
# (x - mean)^2 and z^2 are finite in float64 (or +inf, a density of 0: never NaN)
MAX_MAGNITUDE = 1e150

_GUARD = {"float32": 2.0**-100, "float64": 2.0**-960}


def underflow_guard(dtype: object) -> float:
    """The smallest shifted sum trusted in `dtype`: above it, terms lost to underflow (each below
    the dtype's smallest normal number) change the sum by less than one rounding error."""
    name = str(dtype).removeprefix("torch.")
    if name not in _GUARD:
        raise ValueError(f"unsupported dtype {dtype!r} (float32 or float64)")
    return _GUARD[name]

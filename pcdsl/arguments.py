"""Checks of what users hand pcdsl's Python API and command line: counts, seeds, evidence,
queries, devices, dtypes and memory.

Every check raises :class:`InvalidArgument` (a :class:`pcdsl.PcdslError` and a ``ValueError``)
whose message names the argument, what was found and what is accepted. Both backends run the
same checks (``pcdsl.backends.api``), so the same bad call gets the same error from each.
Evidence checks work on numpy arrays and torch tensors alike, on the tensor's own device.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from pcdsl.diagnostics import MessageError
from pcdsl.numerics import MAX_MAGNITUDE
from pcdsl.syntax.names import did_you_mean

MAX_SEED = 2**63 - 1
DTYPES = ("float32", "float64")


class InvalidArgument(MessageError, ValueError):
    """A bad argument: the message names it, says what was found and what is accepted."""

    def __init__(self, code: str, message: str, help: str | None = None):
        self.code = code
        super().__init__(message, help)


def is_tensor(x: Any) -> bool:
    """A torch tensor (without importing torch when the caller never did)."""
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


# ---- numbers ---------------------------------------------------------------------------------
def integer(value: Any, name: str, low: int = 0, high: int | None = None) -> int:
    """A whole number in [low, high] (bools and floats refused: `n=2.5` is a mistake, not 2)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidArgument("E0801", f"{name} must be a whole number, found {_shown(value)}")
    value = int(value)
    if value < low or (high is not None and value > high):
        allowed = f"{low}..{high}" if high is not None else f"at least {low}"
        raise InvalidArgument("E0802", f"{name} must be {allowed}, found {value}")
    return value


def real(value: Any, name: str, low: float, high: float | None = None, *, open_low: bool = False) -> float:
    """A finite number in [low, high] (or (low, high] with `open_low`)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgument("E0801", f"{name} must be a number, found {_shown(value)}")
    value = float(value)
    above = value > low if open_low else value >= low
    if not (math.isfinite(value) and above and (high is None or value <= high)):
        left = "(" if open_low else "["
        allowed = f"in {left}{low:g}, {high:g}]" if high is not None else f"{'>' if open_low else '>='} {low:g}"
        raise InvalidArgument("E0802", f"{name} must be a finite number {allowed}, found {value:g}")
    return value


def seed(value: Any, name: str = "seed") -> int:
    return integer(value, name, 0, MAX_SEED)


def _shown(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{text} ({type(value).__name__})"


# ---- names -----------------------------------------------------------------------------------
def choice(value: Any, name: str, allowed: Sequence[str], what: str = "value") -> str:
    """One of `allowed`, with a did-you-mean for a near miss."""
    if not isinstance(value, str) or value not in allowed:
        shown = repr(value) if isinstance(value, str) else _shown(value)
        hint = did_you_mean(value, allowed) if isinstance(value, str) else None
        raise InvalidArgument("E0806", f"unknown {what} {shown} for {name} (known: {', '.join(allowed)})", hint)
    return value


def dtype(value: Any, name: str = "dtype") -> str:
    """'float32' or 'float64' (numpy and torch dtypes of those names too)."""
    text = str(value).removeprefix("torch.") if value is not None else "None"
    if text not in DTYPES:
        raise InvalidArgument("E0807", f"{name} {text!r} is not available (available: {', '.join(DTYPES)})")
    return text


def device(value: Any, backend: str) -> str:
    """A device the backend can run on here: numba runs on the CPU only; torch on the CPU and on
    the CUDA devices this machine has."""
    text = str(value)
    if backend != "torch":
        if text != "cpu":
            raise InvalidArgument("E0807", f"device {text!r} is not available to the {backend} backend, which "
                                           "runs on the CPU only (device 'cpu')",
                                  "use --backend torch for GPUs")
        return text
    import torch

    try:
        parsed = torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        raise InvalidArgument("E0807", f"device {text!r} is not a torch device (e.g. 'cpu', 'cuda', 'cuda:1')"
                              ) from None
    if parsed.type == "cpu":
        return text
    if parsed.type != "cuda" or not torch.cuda.is_available():
        why = "this torch has no CUDA" if not torch.backends.cuda.is_built() else "no CUDA device is visible"
        raise InvalidArgument("E0807", f"device {text!r} is not available: {why} (available: {_devices()})")
    count = torch.cuda.device_count()
    if parsed.index is not None and parsed.index >= count:
        raise InvalidArgument("E0807", f"device {text!r} is not available: this machine has {count} CUDA "
                                       f"device{'s' * (count != 1)} (available: {_devices()})")
    return text


def _devices() -> str:
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ", ".join(["cpu", *(f"cuda:{i}" for i in range(count))])


# ---- memory ----------------------------------------------------------------------------------
def available_memory(device: str = "cpu") -> int:
    """Bytes this process may still allocate on `device` (CPU: MemAvailable; CUDA: free memory)."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: do not refuse


def fits(need: float, what: str, device: str = "cpu") -> None:
    """Refuse work whose estimated memory `need` (bytes) exceeds what `device` has available."""
    have = available_memory(device)
    if need > have:
        raise InvalidArgument("E0808", f"{what} needs about {_bytes(need)}, but {device} has {_bytes(have)} "
                                       "available", "use smaller batches, fewer samples or a smaller circuit")


def _bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


# ---- evidence --------------------------------------------------------------------------------
def evidence(x: Any, variables: Sequence[str], cardinalities: Sequence[int | None], name: str = "x") -> Any:
    """`x` as a float64 (batch, variables) array (or tensor, on its device), every value checked:
    discrete variables take 0..k-1 (-1 or NaN: missing), real ones finite values of magnitude at
    most ``MAX_MAGNITUDE`` (NaN: missing). One row may come as a 1-D array."""
    rows = _as_rows(x, len(variables), name)
    discrete = [c is not None for c in cardinalities]
    if all(discrete) and not is_tensor(x) and np.asarray(x).dtype.kind in "biu":  # integers: whole already
        ints = np.asarray(x).reshape(rows.shape)
        if bool(((ints < -1) | (ints >= np.array(cardinalities))).any()):
            _refuse(rows, variables, cardinalities, name)
        return rows
    limits: Any
    is_discrete: Any
    if is_tensor(rows):
        import torch

        xp: Any = torch
        limits = torch.as_tensor([c if c is not None else 0 for c in cardinalities], device=rows.device)
        is_discrete = torch.as_tensor(discrete, device=rows.device)
    else:
        xp, limits, is_discrete = np, np.array([c or 0 for c in cardinalities]), np.array(discrete)
    nan = xp.isnan(rows)
    missing = nan | (is_discrete & (rows == -1))
    whole = rows == xp.floor(rows)
    outside = is_discrete & ~missing & (~whole | (rows < 0) | (rows >= limits))
    too_big = ~is_discrete & ~nan & ~(xp.abs(rows) <= MAX_MAGNITUDE)
    if bool((outside | too_big).any()):
        _refuse(_numpy(rows), variables, cardinalities, name)
    return rows


def _as_rows(x: Any, width: int, name: str) -> Any:
    """A float64 2-D array or tensor of `width` columns."""
    if is_tensor(x):
        import torch

        if x.dtype.is_complex or not (x.dtype.is_floating_point or x.dtype in _torch_ints(torch)):
            raise InvalidArgument("E0801", f"{name} must hold numbers, found a tensor of {x.dtype}")
        rows = x.detach().to(torch.float64)
    else:
        if isinstance(x, (str, bytes)) or x is None:
            raise InvalidArgument("E0801", f"{name} must be an array of numbers (batch, {width}), found "
                                           f"{_shown(x)}")
        try:
            array = np.asarray(x)
        except (ValueError, TypeError) as exc:  # ragged lists
            raise InvalidArgument("E0805", f"{name} must be a (batch, {width}) array: {exc}") from None
        if array.dtype.kind not in "biuf":
            raise InvalidArgument("E0801", f"{name} must hold numbers, found values of type {array.dtype}")
        rows = np.asarray(array, dtype=np.float64)  # no copy when it already is float64
    if rows.ndim == 1 and rows.shape[0] == width:
        rows = rows[None, :]
    if rows.ndim != 2 or rows.shape[1] != width:
        raise InvalidArgument("E0805", f"{name} must have shape (batch, {width}) (one column per variable) or "
                                       f"({width},) for one row, found {tuple(rows.shape)}")
    return rows


def _torch_ints(torch: Any) -> tuple[Any, ...]:
    """torch's integer and bool dtypes (a function: torch is imported only when a tensor comes)."""
    return (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if is_tensor(x) else np.asarray(x)


def _refuse(rows: np.ndarray, variables: Sequence[str], cardinalities: Sequence[int | None], name: str) -> None:
    """Raise for the first value of `rows` that its variable does not take."""
    for r, v in np.ndindex(rows.shape):
        value, size = rows[r, v], cardinalities[v]
        where = f"{name}[{r}, {v}] (variable '{variables[v]}')"
        if size is None:
            if not np.isnan(value) and not abs(value) <= MAX_MAGNITUDE:
                raise InvalidArgument("E0804", f"{where} is {value:g}; a real value must be finite, of magnitude "
                                               f"at most {MAX_MAGNITUDE:g} (NaN marks a missing value)")
            continue
        if np.isnan(value) or value == -1:
            continue
        domain = f"0..{size - 1}, or -1 for a missing value"
        if value != math.floor(value):
            raise InvalidArgument("E0803", f"{where} is {value:g}, not a whole number; a discrete variable "
                                           f"takes {domain}")
        if not 0 <= value < size:
            raise InvalidArgument("E0804", f"{where} is {value:g}, outside its domain {domain}")


def query(q: Any, variables: Sequence[str], name: str = "query") -> np.ndarray:
    """Query variables as sorted distinct column indices: names (one or a list), indices, or a
    boolean mask with one entry per variable."""
    if is_tensor(q):
        q = q.detach().cpu().numpy()
    if isinstance(q, str):
        q = [q]
    try:
        array = np.asarray(q)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument("E0805", f"{name} must be variable names, indices or a mask: {exc}") from None
    if array.dtype == bool:
        if array.shape != (len(variables),):
            raise InvalidArgument("E0805", f"a boolean {name} mask must have one entry per variable, shape "
                                           f"({len(variables)},), found {array.shape}")
        return np.flatnonzero(array)
    flat = array.reshape(-1)
    if array.dtype.kind in "US":
        index = {v: i for i, v in enumerate(variables)}
        for item in flat:
            if str(item) not in index:
                raise InvalidArgument("E0806", f"{name} names no variable '{item}' (variables: "
                                               f"{_listed(variables)})", did_you_mean(str(item), variables))
        return np.unique([index[str(item)] for item in flat]).astype(np.int64)
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.dtype.kind not in "iu":
        raise InvalidArgument("E0801", f"{name} must be variable names, integer indices or a boolean mask, found "
                                       f"values of type {array.dtype}")
    bad = flat[(flat < 0) | (flat >= len(variables))]
    if bad.size:
        raise InvalidArgument("E0802", f"{name} index {int(bad[0])} is outside 0..{len(variables) - 1} "
                                       f"(the circuit has {len(variables)} variables)")
    return np.unique(flat).astype(np.int64)


def _listed(names: Sequence[str], most: int = 8) -> str:
    shown = ", ".join(names[:most])
    return shown + (f", ... ({len(names)} in all)" if len(names) > most else "")


def sample_rows(n: Any, rows: Any, name: str = "evidence") -> int:
    """The number of samples: `n` with no evidence or one row of it; with many rows, there must be
    n of them (one sample each)."""
    n = integer(n, "n")
    if rows is not None and len(rows) not in (1, n):
        raise InvalidArgument("E0805", f"{name} has {len(rows)} rows, but n = {n}: give one row (n samples "
                                       "from it) or n rows (one sample each)")
    return n

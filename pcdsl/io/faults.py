"""Named crash points, for tests that kill a run at a chosen moment.

A run passes :func:`point` at the moments worth crashing at (after a mini-batch, inside a file
write, after an early stop, ...). With ``PCDSL_FAULT`` unset (always, outside tests) a point is
a dictionary look-up and nothing else. ``PCDSL_FAULT="NAME[=DETAIL]:COUNT[@RANK]"`` kills the
process with SIGKILL, as power loss would, the COUNT-th time it passes the point NAME (whose
detail starts with DETAIL, when given), on the worker of that RANK only when given. Killing by
count, not by time, makes every crash test deterministic.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass


@dataclass(frozen=True)
class _Fault:
    name: str
    detail: str
    count: int
    rank: int | None


def _parse(text: str) -> _Fault | None:
    if not text:
        return None
    spec, _, rank = text.partition("@")
    where, _, count = spec.rpartition(":")
    name, _, detail = where.partition("=")
    if not name or not count.isdigit() or (rank and not rank.isdigit()):
        raise ValueError(f"PCDSL_FAULT='{text}' is not NAME[=DETAIL]:COUNT[@RANK]")
    return _Fault(name, detail, int(count), int(rank) if rank else None)


_seen: dict[str, int] = {}


def point(name: str, detail: str = "") -> None:
    """A moment a test may crash the process at (see the module docstring)."""
    fault = _parse(os.environ.get("PCDSL_FAULT", ""))
    if fault is None or fault.name != name or not detail.startswith(fault.detail):
        return
    if fault.rank is not None and fault.rank != int(os.environ.get("RANK", "0")):
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] == fault.count:
        os.kill(os.getpid(), signal.SIGKILL)

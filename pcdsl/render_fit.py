"""Choosing what of a circuit to draw so the picture stays readable.

A picture is cut by depth (distance from the root) and by a number of drawn nodes, and the
widest row is kept under a width budget: the deepest cut that fits is taken. What is cut is not
hidden silently: each drawn node whose children were cut gets a dashed placeholder saying how
many, and the picture and the command say what was collapsed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from pcdsl.render_items import Item

WIDTH_BUDGET = 7000  # pixels at 96 dpi: the widest row drawn at its natural size (the cap is 8,000)
DEFAULT_MAX_NODES = 250
PLACEHOLDER_WIDTH = 110


@dataclass(frozen=True)
class Fit:
    kept: tuple[str, ...]  # drawn items, in breadth-first order from the root
    cut: dict[str, int]  # drawn item -> how many of its children are not drawn
    depth: int | None  # the depth kept (None: everything)
    full_depth: int
    total: int

    @property
    def complete(self) -> bool:
        return len(self.kept) == self.total


def distances(items: dict[str, Item]) -> dict[str, int]:
    """Breadth-first distance of every item from the roots (the items no other item points at;
    an invalid circuit may have several), in breadth-first order."""
    below = {child for item in items.values() for child, _ in item.children}
    seen = {key: 0 for key in items if key not in below}
    queue = deque(seen)
    while queue:
        key = queue.popleft()
        for child, _ in items[key].children:
            if child not in seen:
                seen[child] = seen[key] + 1
                queue.append(child)
    return seen


def fit(items: dict[str, Item], depth: int | None = None, max_nodes: int | None = None,
        width: int = WIDTH_BUDGET) -> Fit:
    """The deepest cut (at most `depth`) whose items number at most `max_nodes` and whose widest
    row, placeholders included, fits `width`; below depth 1 it keeps a prefix of the first row."""
    if not items:
        return Fit((), {}, None, 0, 0)
    dist = distances(items)
    full = max(dist.values())
    most = DEFAULT_MAX_NODES if max_nodes is None else max_nodes
    order = list(dist)  # breadth-first: rows in order
    start = full if depth is None else min(depth, full)
    for d in range(start, 0, -1):
        kept = [k for k in order if dist[k] <= d]
        if len(kept) <= most and _widest(items, kept, dist) <= width:
            return _result(items, kept, d if d < full else None, full, len(items))
    return _result(items, _prefix(items, order, dist, most, width), 1 if full > 0 else None, full, len(items))


def _widest(items: dict[str, Item], kept: list[str], dist: dict[str, int]) -> int:
    """The widest row: items at one distance, plus the placeholders their cut children need."""
    chosen = set(kept)
    rows: dict[int, int] = {}
    for key in kept:
        rows[dist[key]] = rows.get(dist[key], 0) + items[key].width
        if any(child not in chosen for child, _ in items[key].children):
            rows[dist[key] + 1] = rows.get(dist[key] + 1, 0) + PLACEHOLDER_WIDTH
    return max(rows.values(), default=0)


def _prefix(items: dict[str, Item], order: list[str], dist: dict[str, int], most: int, width: int) -> list[str]:
    """The roots and as many of the first row as fit."""
    kept = [k for k in order if dist[k] == 0]
    used = sum(items[k].width for k in kept)
    for key in order[len(kept):]:
        if dist[key] > 1 or len(kept) >= most or used + items[key].width > width - PLACEHOLDER_WIDTH:
            break
        kept.append(key)
        used += items[key].width
    return kept


def _result(items: dict[str, Item], kept: list[str], depth: int | None, full: int, total: int) -> Fit:
    chosen = set(kept)
    cut = {}
    for key in kept:
        missing = sum(child not in chosen for child, _ in items[key].children)
        if missing:
            cut[key] = missing
    return Fit(tuple(kept), cut, depth, full, total)


def note(result: Fit, unit: str, asked_depth: int | None, asked_nodes: int | None) -> str | None:
    """What was collapsed, in words (None when everything is drawn)."""
    if result.complete:
        return None
    why = []
    if result.depth is not None:
        why.append(f"depth {result.depth} of {result.full_depth}"
                   + ("" if asked_depth is not None and result.depth == asked_depth else " (to fit)"))
    limit = asked_nodes if asked_nodes is not None else None
    if limit is not None and len(result.kept) >= limit:
        why.append(f"--max-nodes {limit}")
    hidden = result.total - len(result.kept)
    return (f"drew {len(result.kept)} of {result.total} {unit} ({', '.join(why) or 'to fit'}); "
            f"{hidden} below are collapsed into the dashed boxes (--depth and --max-nodes choose more or less)")

"""Conflict rule 3, counts versus deltas, as pure functions over a `Level`.

Square's model: current = last count + the deltas that happened after it. A count moves the
watermark to its `occurred_at`; a delta at or before the watermark is already inside that count
(stale); a count older than the watermark is stale too; a count that arrives after deltas that
happened later than it keeps them. The result depends on what happened when, not on arrival order.

The deltas after the watermark (the *tail*) are kept so that a late count can keep them. The tail
is bounded in time and length: entries more than `horizon` older than the newest one (or beyond
`MAX_TAIL`) are forgotten and `floor` moves to the newest forgotten moment. Their deltas stay inside
on-hand. A count older than the floor can no longer be placed exactly, so it is stale; deltas are
not affected (a store that uploads a weekend of sales late still has them applied). With the
default horizon (24 h) this only touches counts that arrive more than a day late.
"""

from __future__ import annotations

from .model import Level

__all__ = ["DEFAULT_TAIL_HORIZON", "MAX_TAIL", "apply_count", "apply_delta"]

DEFAULT_TAIL_HORIZON = 24 * 3600 * 1_000_000
MAX_TAIL = 1024


def apply_count(level: Level, qty: int, occurred_at: int) -> bool:
    """Apply an absolute count. Returns False (stale) when older than the watermark or floor."""
    if level.watermark is not None and occurred_at < level.watermark:
        return False
    if level.floor is not None and occurred_at < level.floor:
        return False
    kept = [entry for entry in level.tail if entry[0] > occurred_at]
    level.on_hand = qty + sum(d for _, d in kept)
    level.tail = kept
    level.watermark = occurred_at
    _reported(level, occurred_at)
    level.version += 1
    return True


def apply_delta(
    level: Level, delta: int, occurred_at: int, horizon: int = DEFAULT_TAIL_HORIZON
) -> bool:
    """Apply a signed delta. Returns False (stale) when it is at or before the watermark."""
    if level.watermark is not None and occurred_at <= level.watermark:
        return False
    level.on_hand += delta
    tail = level.tail
    tail.append((occurred_at, delta))
    if len(tail) > 1 and tail[-2][0] > occurred_at:
        tail.sort(key=_first)
    cut = tail[-1][0] - horizon
    if len(tail) > MAX_TAIL:
        cut = max(cut, tail[len(tail) - MAX_TAIL - 1][0])
    if tail[0][0] <= cut:
        level.tail = [entry for entry in tail if entry[0] > cut]
        level.floor = cut if level.floor is None else max(level.floor, cut)
    reported = level.reported_at
    if reported is None or occurred_at > reported:  # `_reported`, inlined: the hot path
        level.reported_at = occurred_at
    level.version += 1
    return True


def _reported(level: Level, occurred_at: int) -> None:
    if level.reported_at is None or occurred_at > level.reported_at:
        level.reported_at = occurred_at


def _first(entry: tuple[int, int]) -> int:
    return entry[0]

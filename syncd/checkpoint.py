"""Levels as a checkpoint of the ledger, with no I/O.

The ledger (the `events` table) is the record. A level row is the state of one (SKU, location)
as of event `as_of`; it is not rewritten in every commit. `replay_from` is the lowest event id
that some level row may still be missing. A start reads the rows and re-applies, in ledger order,
every applied stock event (and hold collection) after `replay_from` whose id is above its row's
`as_of` (`roll_forward`). That gives the same state as applying them live did, because the same
rule functions run on the same events in the same order.

`Checkpoint` decides which rows the engine writes and when. Keys touched since the last
rotation form the *current* generation. Every `every` seconds the current generation is closed:
its keys, in SKU order (neighbouring rows share pages), are written `chunk` at a time in the
following batch commits, each with its state at that commit and `as_of` = the highest event id
then.
While a generation is being written `replay_from` stays at its first event id; once it is all
written, `replay_from` moves to the first id of the generation after it. A key touched several
times within a generation is written once: at the bench's scale that is one row write for every
few events instead of one per event, and rows written in SKU order touch a fraction of the pages.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from operator import itemgetter

from .model import DELTA_SIGN, EventType, Level, kept_key
from .rules import apply_count, apply_delta

__all__ = ["Checkpoint", "Effect", "roll_forward"]

Key = tuple[str, str]  # (sku, location)

# (event id, type, (sku, location), qty, occurred_at) of an applied event that moved a level; a
# hold collection carries its hold's SKU, location and quantity
Effect = tuple[int, EventType, Key, int, int]

_COLLECT_SIGN = -1
# rows are written in SKU order: neighbouring rows share B-tree pages, and sorting on the one
# string is 2.5 times faster than on the (sku, location) tuple
_SKU = itemgetter(0)


def roll_forward(
    levels: dict[Key, Level],
    as_of: dict[Key, int],
    effects: Iterable[Effect],
    horizon: int,
    only: set[Key] | None = None,
) -> set[Key]:
    """Re-apply `effects` (in ledger order) that their level row does not include yet; returns
    the keys that moved. With `only`, other keys are left alone."""
    moved: set[Key] = set()
    for event_id, typ, key, qty, occurred_at in effects:
        if only is not None and key not in only:
            continue
        if event_id <= as_of.get(key, 0):
            continue
        lvl = levels.get(key)
        if lvl is None:
            kept = kept_key(*key)
            lvl = levels[kept] = Level(key=kept)
        if typ is EventType.COUNT:
            apply_count(lvl, qty, occurred_at)
        elif typ is EventType.HOLD_COLLECT:
            apply_delta(lvl, _COLLECT_SIGN * qty, occurred_at, horizon)
        else:
            apply_delta(lvl, DELTA_SIGN[typ] * qty, occurred_at, horizon)
        moved.add(lvl.key or key)
    return moved


@dataclass(slots=True)
class _Generation:
    keys: list[Key]
    first_id: int
    written: int = 0


class Checkpoint:
    """Which level rows lag the ledger, and which to write in the next commit."""

    def __init__(
        self,
        every: float,
        chunk: int,
        now: float,
        lagging: Iterable[Key] = (),
        first_id: int | None = None,
    ) -> None:
        """`lagging`: keys whose rows miss events from `first_id` on (found at start)."""
        self.every = every
        self.chunk = chunk
        self.current: set[Key] = set(lagging)
        self.current_first: int | None = first_id if self.current else None
        self.closing: _Generation | None = None
        self.started = now

    @property
    def lagging(self) -> int:
        """How many rows are waiting to be written (a key may be counted twice)."""
        closing = self.closing
        pending = len(closing.keys) - closing.written if closing is not None else 0
        return pending + len(self.current)

    def touch(self, keys: Iterable[Key], first_id: int) -> None:
        """A batch whose events have ids from `first_id` on moved `keys` (before its commit: a
        failed commit leaves extra keys here, which costs one harmless row write)."""
        before = len(self.current)
        self.current.update(keys)
        if before == 0 and self.current:
            self.current_first = first_id

    def due(self, now: float) -> list[Key]:
        """The keys to write in this commit (not yet marked written: see `written`). Rotates the
        current generation when `every` seconds have passed and nothing is being written (a stop
        takes every lagging key at once: `rest`)."""
        if self.closing is None and self.current and now - self.started >= self.every:
            self.closing = _Generation(sorted(self.current, key=_SKU),
                                       self.current_first or 0)
            self.current = set()
            self.current_first = None
            self.started = now
        closing = self.closing
        if closing is None:
            return []
        return closing.keys[closing.written : closing.written + self.chunk]

    def replay_from(self, written: int, next_id: int) -> int:
        """The mark to store in the commit that writes `written` keys of `due`; `next_id` is
        above every event id in the ledger at that commit."""
        closing = self.closing
        if closing is not None and closing.written + written < len(closing.keys):
            return closing.first_id
        if self.current:
            return self.current_first if self.current_first is not None else 0
        return next_id

    def rest(self) -> list[Key]:
        """Every key whose row lags, in SKU order, each once: what is left of the generation
        being written and the current one (a stop writes them all in one commit, then `clear`)."""
        keys = set(self.current)
        closing = self.closing
        if closing is not None:
            keys.update(closing.keys[closing.written :])
        return sorted(keys, key=_SKU)

    def clear(self) -> None:
        """The commit that wrote `rest()` succeeded: no row lags."""
        self.closing = None
        self.current = set()
        self.current_first = None

    def written(self, n: int) -> None:
        """The commit that wrote `n` keys of `due` succeeded."""
        closing = self.closing
        if closing is None or n == 0:
            return
        closing.written += n
        if closing.written >= len(closing.keys):
            self.closing = None

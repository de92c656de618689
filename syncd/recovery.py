"""After a batch whose commit failed: which in-memory state it may have moved, and reloading it.

The engine applies a batch to memory before its commit. When the commit fails nothing of the
batch is durable, so the levels and reservations it may have moved are read back from the
database (the levels rolled forward from their checkpoint rows, as at start). `touched` is pure
and errs on the side of reloading more: every level an event names or a channel's order may have
reserved from, and every reservation open at those levels.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from sqlalchemy.ext.asyncio import AsyncEngine

from .ledger import Key, Ledger
from .model import Event
from .reservations import res_id_of
from .store import repository as repo

__all__ = ["brief", "reload", "touched"]

log = logging.getLogger("syncd.engine")


def touched(events: Iterable[Event], ledger: Ledger) -> tuple[set[Key], set[str]]:
    """The `(sku, location)` levels and the reservation ids that applying `events` may have
    changed in `ledger`."""
    keys: set[Key] = set()
    res_ids: set[str] = set()
    channels = ledger.config.channels
    for ev in events:
        if ev.location:
            keys.add((ev.sku, ev.location))
        if ev.channel:
            ch = channels.get(ev.channel)
            for loc in ch.sells_from if ch else ():
                keys.add((ev.sku, loc))
        rid = res_id_of(ev)
        if rid:
            res_ids.add(rid)
    for rid in list(res_ids):  # a collect moved its hold's level; the API names only the hold
        r = ledger.reservations.get(rid)
        if r is not None:
            keys.add((r.sku, r.location))
    for key in keys:
        for r in list(ledger.open.get(key, {}).values()):
            res_ids.add(r.res_id)
    return keys, res_ids


async def reload(db: AsyncEngine, ledger: Ledger, keys: set[Key], res_ids: set[str]) -> None:
    """Replace those levels and reservations in `ledger` with what the database holds
    (retried, with backoff, until it answers)."""
    delay = 0.1
    while True:
        try:
            async with db.connect() as conn:
                levels = await repo.load_levels(conn, keys, horizon=ledger.config.tail_horizon)
                stored = await repo.load_reservations(conn, ids=sorted(res_ids))
            break
        except Exception as exc:
            log.error("cannot reload state from the database, retrying: %s", brief(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    for key in keys:
        if key in levels:
            lvl = levels[key]
            ledger.levels[lvl.key or key] = lvl
        else:
            ledger.levels.pop(key, None)
    found = {r.res_id for r in stored}
    for rid in res_ids - found:
        ledger.forget(rid)
    for r in stored:
        ledger.forget(r.res_id)
        ledger.load_reservation(r)


def brief(exc: BaseException) -> str:
    """An exception in one line, for logs and errors (no traceback, no payload)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:200]}"

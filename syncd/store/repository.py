"""Reads at start and batch writes, with the upsert of each dialect.

Every function takes an open `AsyncConnection`; the caller owns the transaction, so one engine
batch is one commit.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, and_, func, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from syncd.model import (
    Event,
    EventType,
    Level,
    Reservation,
    ReservationKind,
    ReservationState,
)

from .tables import dead_letters, events, levels, outbox, reservations, sources

__all__ = [
    "OutboxRow",
    "count_holds",
    "existing_event_ids",
    "insert_dead_letters",
    "insert_events",
    "iter_events",
    "load_levels",
    "load_outbox",
    "load_reservations",
    "load_sources",
    "upsert",
    "upsert_levels",
    "upsert_outbox",
    "upsert_reservations",
    "upsert_sources",
]

OPEN = ("held", "active", "fulfilled")
_CHUNK = 500  # parameters per IN (...) list, well under every dialect's limit


@dataclass(slots=True)
class OutboxRow:
    desired: int
    version: int
    committed_at: int
    pushed: int | None = None
    pushed_version: int = 0
    remote: int | None = None
    state: str = "pending"
    attempts: int = 0
    last_error: str | None = None
    next_attempt_at: int = 0

    @property
    def pending(self) -> bool:
        return self.pushed_version != self.version


async def upsert(
    conn: AsyncConnection, table: Table, rows: Sequence[dict[str, Any]], keys: Sequence[str]
) -> None:
    """INSERT ... ON CONFLICT (keys) DO UPDATE SET every other column, per dialect."""
    if not rows:
        return
    dialect = conn.dialect.name
    stmt: Any
    if dialect == "sqlite":
        stmt = sqlite.insert(table)
    elif dialect == "postgresql":
        stmt = postgresql.insert(table)
    else:  # pragma: no cover - only the two dialects are supported
        raise RuntimeError(f"unsupported database dialect {dialect}")
    cols = [c.name for c in table.columns if c.name not in keys and c.name in rows[0]]
    stmt = stmt.on_conflict_do_update(
        index_elements=list(keys), set_={c: stmt.excluded[c] for c in cols}
    )
    await conn.execute(stmt, list(rows))


# -- events ---------------------------------------------------------------------------------------


async def existing_event_ids(
    conn: AsyncConnection, connector: str, event_ids: Sequence[str]
) -> set[str]:
    found: set[str] = set()
    for i in range(0, len(event_ids), _CHUNK):
        chunk = event_ids[i : i + _CHUNK]
        result = await conn.execute(
            select(events.c.event_id).where(
                and_(events.c.connector == connector, events.c.event_id.in_(chunk))
            )
        )
        found.update(result.scalars())
    return found


def event_row(ev: Event, applied_at: int, outcome: str, reason: str) -> dict[str, Any]:
    return {
        "connector": ev.connector,
        "event_id": ev.event_id,
        "type": ev.type.value,
        "sku": ev.sku,
        "location": ev.location,
        "qty": ev.qty,
        "occurred_at": ev.occurred_at,
        "applied_at": applied_at,
        "outcome": outcome,
        "reason": reason or None,
        "source": ev.source,
        "seq": ev.seq,
        "hold_id": ev.hold_id,
        "order_id": ev.order_id,
        "channel": ev.channel,
        "expires_at": ev.expires_at,
        "remote_location": ev.remote_location,
    }


async def insert_events(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(events.insert(), list(rows))


async def iter_events(conn: AsyncConnection) -> list[tuple[Event, int, str]]:
    """The whole ledger in order, as `(event, applied_at, outcome)` (replay and audits)."""
    result = await conn.execute(select(events).order_by(events.c.id))
    out: list[tuple[Event, int, str]] = []
    for r in result.mappings():
        ev = Event(
            connector=r["connector"], event_id=r["event_id"], type=EventType(r["type"]),
            sku=r["sku"], qty=r["qty"], occurred_at=r["occurred_at"], location=r["location"],
            source=r["source"], seq=r["seq"], hold_id=r["hold_id"], order_id=r["order_id"],
            channel=r["channel"], expires_at=r["expires_at"],
            remote_location=r["remote_location"],
        )
        out.append((ev, r["applied_at"], r["outcome"]))
    return out


# -- levels ---------------------------------------------------------------------------------------


def level_row(sku: str, location: str, lvl: Level) -> dict[str, Any]:
    return {
        "sku": sku,
        "location": location,
        "on_hand": lvl.on_hand,
        "watermark": lvl.watermark,
        "floor": lvl.floor,
        "reported_at": lvl.reported_at,
        "tail": json.dumps(lvl.tail, separators=(",", ":")) if lvl.tail else "[]",
        "version": lvl.version,
    }


async def upsert_levels(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    await upsert(conn, levels, rows, ("sku", "location"))


async def load_levels(
    conn: AsyncConnection, keys: Iterable[tuple[str, str]] | None = None
) -> dict[tuple[str, str], Level]:
    """Every level, or only those of `keys`."""
    out: dict[tuple[str, str], Level] = {}
    cols = (levels.c.sku, levels.c.location, levels.c.on_hand, levels.c.watermark,
            levels.c.floor, levels.c.reported_at, levels.c.tail, levels.c.version)
    queries = []
    if keys is None:
        queries.append(select(*cols))
    else:
        wanted = list(keys)
        for i in range(0, len(wanted), _CHUNK):
            chunk = wanted[i : i + _CHUNK]
            queries.append(select(*cols).where(tuple_(levels.c.sku, levels.c.location).in_(chunk)))
    for q in queries:
        result = await conn.stream(q)
        async for part in result.partitions(10_000):
            for sku, loc, on_hand, wm, floor, rep, tail, version in part:
                out[(sku, loc)] = Level(
                    on_hand=on_hand, watermark=wm, floor=floor, reported_at=rep,
                    tail=[(a, b) for a, b in json.loads(tail)] if tail != "[]" else [],
                    version=version,
                )
    return out


# -- reservations ---------------------------------------------------------------------------------


def reservation_row(r: Reservation) -> dict[str, Any]:
    return {
        "res_id": r.res_id,
        "kind": r.kind.value,
        "sku": r.sku,
        "location": r.location,
        "qty": r.qty,
        "state": r.state.value,
        "created_at": r.created_at,
        "expires_at": r.expires_at,
        "fulfilled_at": r.fulfilled_at,
        "updated_at": r.updated_at,
        "channel": r.channel,
        "order_id": r.order_id,
        "oversold": r.oversold,
    }


async def upsert_reservations(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    await upsert(conn, reservations, rows, ("res_id",))


async def count_holds(conn: AsyncConnection) -> Counter[str]:
    result = await conn.execute(
        select(reservations.c.state, func.count())
        .where(reservations.c.kind == "hold")
        .group_by(reservations.c.state)
    )
    return Counter({str(state): int(n) for state, n in result})


async def load_reservations(
    conn: AsyncConnection, *, ids: Sequence[str] | None = None, open_only: bool = False
) -> list[Reservation]:
    queries = []
    if ids is not None:
        for i in range(0, len(ids), _CHUNK):
            queries.append(select(reservations).where(reservations.c.res_id.in_(ids[i:i + _CHUNK])))
    elif open_only:
        queries.append(select(reservations).where(reservations.c.state.in_(OPEN)))
    else:
        queries.append(select(reservations))
    out: list[Reservation] = []
    for q in queries:
        result = await conn.execute(q)
        for r in result.mappings():
            out.append(
                Reservation(
                    res_id=r["res_id"], kind=ReservationKind(r["kind"]), sku=r["sku"],
                    location=r["location"], qty=r["qty"], state=ReservationState(r["state"]),
                    created_at=r["created_at"], expires_at=r["expires_at"],
                    fulfilled_at=r["fulfilled_at"], updated_at=r["updated_at"],
                    channel=r["channel"], order_id=r["order_id"], oversold=bool(r["oversold"]),
                )
            )
    return out


# -- outbox ---------------------------------------------------------------------------------------


def outbox_row(key: tuple[str, str, str], row: OutboxRow) -> dict[str, Any]:
    return {
        "channel": key[0],
        "sku": key[1],
        "location": key[2],
        "desired": row.desired,
        "version": row.version,
        "committed_at": row.committed_at,
        "pushed": row.pushed,
        "pushed_version": row.pushed_version,
        "remote": row.remote,
        "state": row.state,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "next_attempt_at": row.next_attempt_at,
    }


async def upsert_outbox(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    await upsert(conn, outbox, rows, ("channel", "sku", "location"))


async def load_outbox(conn: AsyncConnection) -> dict[tuple[str, str, str], OutboxRow]:
    out: dict[tuple[str, str, str], OutboxRow] = {}
    result = await conn.stream(select(outbox))
    async for part in result.partitions(10_000):
        for r in part:
            m = r._mapping
            out[(m["channel"], m["sku"], m["location"])] = OutboxRow(
                desired=m["desired"], version=m["version"], committed_at=m["committed_at"],
                pushed=m["pushed"], pushed_version=m["pushed_version"], remote=m["remote"],
                state=m["state"], attempts=m["attempts"], last_error=m["last_error"],
                next_attempt_at=m["next_attempt_at"],
            )
    return out


# -- dead letters and sources ---------------------------------------------------------------------


async def insert_dead_letters(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(dead_letters.insert(), list(rows))


async def load_sources(conn: AsyncConnection) -> dict[tuple[str, str], int]:
    result = await conn.execute(select(sources.c.connector, sources.c.source, sources.c.last_seq))
    return {(c, s): q for c, s, q in result}


async def upsert_sources(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    await upsert(conn, sources, rows, ("connector", "source"))


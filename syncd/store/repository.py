"""Reads at start and batch writes, with the upsert of each dialect.

Every function takes an open `AsyncConnection`; the caller owns the transaction, so one engine
batch is one commit.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter
from typing import Any, TypeVar

import aiosqlite
from sqlalchemy import Table, bindparam, func, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from syncd.checkpoint import Effect, roll_forward
from syncd.model import (
    STOCK_TYPES,
    Event,
    EventType,
    Level,
    Reservation,
    ReservationKind,
    ReservationState,
    kept_key,
)
from syncd.rules import DEFAULT_TAIL_HORIZON

from ._nulls import positions, split_nulls
from .tables import checkpoints, dead_letters, events, levels, outbox, reservations, sources

_T = TypeVar("_T")

__all__ = [
    "EVENT_COLS",
    "LEVEL_COLS",
    "OUTBOX_DESIRED_COLS",
    "OutboxRow",
    "RestoredLevels",
    "claim_events",
    "count_holds",
    "insert_dead_letters",
    "iter_events",
    "load_levels",
    "load_outbox",
    "load_replay_from",
    "load_reservations",
    "load_sources",
    "next_event_id",
    "restore_levels",
    "set_outcomes",
    "set_replay_from",
    "unclaim_events",
    "upsert",
    "upsert_levels",
    "upsert_outbox",
    "upsert_outbox_desired",
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
    # the key it is kept under in the outbox (`kept_key`), passed on instead of a figure's copy
    key: tuple[str, str, str] | None = field(default=None, compare=False, repr=False)

    @property
    def pending(self) -> bool:
        return self.pushed_version != self.version


_COMPILED: dict[tuple[str, str, tuple[str, ...]], tuple[str, tuple[str, ...]]] = {}


def _compiled(
    conn: AsyncConnection, table: Table, keys: Sequence[str], cols: Sequence[str],
    updates: Sequence[str] | None = None,
) -> tuple[str, tuple[str, ...]]:
    """The dialect's SQL for a batch insert (or upsert on `keys`) of `cols`, compiled once.
    An upsert sets `updates` (every column of `cols` but the keys, by default) from `excluded`.

    Batch writes are the hot path of the engine: executing the compiled SQL with plain tuples
    skips SQLAlchemy's per-row parameter processing (most of the cost at 50k rows/s)."""
    dialect = conn.dialect
    if updates is None:
        updates = [c for c in cols if c not in keys]
    cache_key = (dialect.name, table.name, (*keys, "|", *cols, "|", *updates))
    hit = _COMPILED.get(cache_key)
    if hit is not None:
        return hit
    stmt: Any
    if dialect.name == "sqlite":
        stmt = sqlite.insert(table)
    elif dialect.name == "postgresql":
        stmt = postgresql.insert(table)
    else:  # pragma: no cover - only the two dialects are supported
        raise RuntimeError(f"unsupported database dialect {dialect.name}")
    stmt = stmt.values({c: bindparam(c) for c in cols})
    if keys:
        stmt = stmt.on_conflict_do_update(
            index_elements=list(keys), set_={c: stmt.excluded[c] for c in updates}
        )
    compiled = stmt.compile(dialect=dialect)
    names = tuple(compiled.positiontup or ())
    if not names:  # a dialect with named parameters
        raise RuntimeError(f"{dialect.name}: expected a positional paramstyle")
    _COMPILED[cache_key] = hit = (compiled.string, names)
    return hit


async def _write(
    conn: AsyncConnection, table: Table, rows: Sequence[dict[str, Any]], keys: Sequence[str]
) -> None:
    if not rows:
        return
    cols = tuple(rows[0])
    sql, names = _compiled(conn, table, keys, cols)
    await conn.exec_driver_sql(sql, [tuple(r[n] for n in names) for r in rows])


def _compiled_in_order(
    conn: AsyncConnection, table: Table, cols: Sequence[str], keys: Sequence[str],
    updates: Sequence[str] | None = None,
) -> str:
    """The compiled SQL, checked to take its parameters in `cols` order (rows are tuples)."""
    sql, names = _compiled(conn, table, keys, cols, updates)
    if names != tuple(cols):
        raise RuntimeError(f"{table.name}: parameter order {names} differs from {tuple(cols)}")
    return sql


async def _write_tuples(
    conn: AsyncConnection, table: Table, cols: tuple[str, ...], keys: Sequence[str],
    rows: Sequence[tuple[Any, ...]], nullable: tuple[int, ...] = (),
) -> None:
    """Insert or upsert tuples in `cols` order, in blocks on SQLite (`_sqlite_many`). With
    `nullable`, SQLite leaves the columns at those positions out of the statement where they are
    NULL (`_nulls`: binding None costs there; worth it for rows with many NULLs) and writes the
    rows a shape of NULLs at a time, so the keys of one call must be distinct (the callers write
    sets and dicts)."""
    if not rows:
        return
    if conn.dialect.name == "sqlite":
        if not nullable:  # NULLs bound as they are, the rows still in blocks
            await _sqlite_many(conn, _compiled_in_order(conn, table, cols, keys), len(cols), rows)
            return
        updates = [c for c in cols if c not in keys]
        for shape, group in split_nulls(cols, nullable, rows, ordered=False):
            sql = _compiled_in_order(conn, table, shape.cols, keys, updates)
            await _sqlite_many(conn, sql, len(shape.cols), group)
        return
    await conn.exec_driver_sql(_compiled_in_order(conn, table, cols, keys), list(rows))


# Rows per multi-row VALUES statement on SQLite, largest first: runs of rows go in blocks of up to
# `_BIG_ROWS` (as many as the library binds), the rest in blocks of `_BLOCK`, the last few one by
# one. A block is one `sqlite3_step`, during which sqlite3 releases the GIL: a batch of 2,000
# ledger rows is two hand-overs of the GIL instead of 32, which is what lets the claim run on
# aiosqlite's thread beside the event loop (`submit_claim`; `bench/db_overlap.py --block`).
_BIG_ROWS = 1000
_BLOCK = 64
_MULTI: dict[tuple[str, str, int], str] = {}


def _variable_limit() -> int:
    """How many parameters one statement may bind in this process's SQLite library (999
    before SQLite 3.32, 32,766 from it, or what its build set)."""
    probe = sqlite3.connect(":memory:")
    try:
        return int(probe.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
    finally:
        probe.close()


_VARIABLE_LIMIT = _variable_limit()


def _sqlite_statements(
    sql: str, ncols: int, rows: Sequence[tuple[Any, ...]], one: str | None = None
) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """The statements that run the one-row SQLite statement `sql` for every row, in order, each
    with its parameter tuples for an `executemany`: blocks of rows in multi-row VALUES
    statements (which sqlite3 prepares once and caches), the last few rows one by one. `one` is
    the row's VALUES group in `sql` (by default `ncols` placeholders)."""
    if one is None:
        one = "(" + ", ".join(["?"] * ncols) + ")"
    fits = max(1, _VARIABLE_LIMIT // ncols)
    out: list[tuple[str, list[tuple[Any, ...]]]] = []
    n, done = len(rows), 0
    for block in sorted({min(_BIG_ROWS, fits), min(_BLOCK, fits)}, reverse=True):
        full = done + (n - done) // block * block
        if block == 1 or full == done:
            continue
        multi = _MULTI.get((sql, one, block))
        if multi is None:
            if sql.count(one) != 1 or one.count("?") != ncols:
                raise RuntimeError(f"cannot find the one-row VALUES {one} in {sql!r}")
            multi = _MULTI[(sql, one, block)] = sql.replace(one, ", ".join([one] * block))
        out.append((multi, [tuple(chain.from_iterable(rows[i : i + block]))
                            for i in range(done, full, block)]))
        done = full
    if done < n:
        out.append((sql, list(rows[done:])))
    return out


async def _sqlite_many(
    conn: AsyncConnection, sql: str, ncols: int, rows: Sequence[tuple[Any, ...]],
    one: str | None = None,
) -> int:
    """Execute the one-row SQLite statement `sql` for every row, in order
    (`_sqlite_statements`); returns the rows changed."""
    changed = 0
    for statement, params in _sqlite_statements(sql, ncols, rows, one):
        changed += (await conn.exec_driver_sql(statement, params)).rowcount
    return changed


async def _on_thread(driver: aiosqlite.Connection,
                     fn: Callable[..., _T], *args: Any) -> _T:
    """`fn(sqlite3_connection, *args)` on aiosqlite's thread, in the order of its queue.

    aiosqlite runs each of its calls (a statement, a fetch, a cursor's close) as one item of that
    queue: the thread takes the GIL to start it and the event loop is woken to take its result.
    While the event loop is busy, each take of the GIL waits for the switch interval, so a
    statement run as four calls waits four times. A whole unit of work (a batch's ledger insert,
    a slice of rows) is therefore one call here; its cursors are closed on that thread too (one
    freed on the event loop's thread resets its cached statement there, which races with the
    thread running the same SQL again: SQLITE_MISUSE). A caller that gives up leaves the call
    queued; it runs all the same, before anything queued after it (a rollback).

    This is aiosqlite's own way to run its sqlite3 methods (`Connection._execute`), which it
    does not expose publicly; `tests/test_store_nulls.py` fails if a release changes it."""
    execute: Callable[..., Awaitable[Any]] = driver._execute  # untyped in aiosqlite
    result: _T = await execute(fn, driver._conn, *args)
    return result


def _many_now(con: sqlite3.Connection,
              statements: Sequence[tuple[str, list[tuple[Any, ...]]]]) -> int:
    """On aiosqlite's thread: `statements` (`_sqlite_statements`) in order; the rows changed."""
    changed = 0
    for sql, params in statements:
        cursor = con.executemany(sql, params)
        try:
            changed += cursor.rowcount
        finally:
            cursor.close()
    return changed


def _claim_now(con: sqlite3.Connection,
               statements: Sequence[tuple[str, list[tuple[Any, ...]]]]) -> tuple[int, int]:
    """On aiosqlite's thread: the id the claim's first row gets if inserted, and the rows its
    `statements` inserted."""
    cursor = con.execute("SELECT coalesce(max(id), 0) + 1 FROM events")
    try:
        first = int(cursor.fetchone()[0])
    finally:
        cursor.close()
    return first, _many_now(con, statements)


async def _all_done(tasks: Sequence[asyncio.Future[Any]]) -> list[Any]:
    """Every task's result, in order, once every one is done (none is left with an error
    nobody retrieved); raises the first failure."""
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return outcomes


async def settle(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel what is still pending of `tasks` and wait until every one is done, errors
    retrieved: a caller that gives up on queued statements lets them end before its rollback
    (asyncpg refuses a rollback while a query of the connection is still running)."""
    pending = list(tasks)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


class Queued:
    """SQLite writes queued on aiosqlite's thread, in order, while the caller goes on (builds
    the next rows: sqlite3 releases the GIL while a block steps); `wait` awaits them all, and
    raises the first failure once every one is done. Nothing else may use the connection
    before `wait` returns. On PostgreSQL a write runs when it is added.

    As an async context manager it waits at the end of the block, or abandons the queued
    writes (`abandon`) when the block raises."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self.tasks: list[asyncio.Future[int]] = []

    async def __aenter__(self) -> Queued:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            await self.wait()
        else:
            await self.abandon()

    async def many(self, sql: str, ncols: int, rows: Sequence[tuple[Any, ...]],
                   one: str | None = None) -> None:
        """Queue `_sqlite_statements(sql, ncols, rows, one)`; they reach aiosqlite's thread
        before this returns."""
        if not rows:
            return
        driver = await _aiosqlite(self.conn)
        self.tasks.append(asyncio.ensure_future(
            _on_thread(driver, _many_now, _sqlite_statements(sql, ncols, rows, one))))
        await asyncio.sleep(0)  # the task's first step queues its statements

    async def wait(self) -> int:
        """The rows changed by every queued statement."""
        tasks, self.tasks = self.tasks, []
        return sum(await _all_done(tasks))

    async def abandon(self) -> None:
        """The caller gives up: the queued statements end (`settle`) before its rollback."""
        tasks, self.tasks = self.tasks, []
        await settle(tasks)


async def upsert(
    conn: AsyncConnection, table: Table, rows: Sequence[dict[str, Any]], keys: Sequence[str]
) -> None:
    """INSERT ... ON CONFLICT (keys) DO UPDATE SET every other column, per dialect."""
    await _write(conn, table, rows, keys)


# -- events ---------------------------------------------------------------------------------------


def event_row(ev: Event, applied_at: int, outcome: str, reason: str) -> tuple[Any, ...]:
    """A ledger row, in `EVENT_COLS` order (the table's own column order)."""
    return (
        ev.connector, ev.event_id, ev.type._value_, ev.sku, ev.location, ev.qty, ev.occurred_at,
        applied_at, outcome, reason or None, ev.source, ev.seq, ev.hold_id, ev.order_id,
        ev.channel, ev.expires_at, ev.remote_location,
    )


EVENT_COLS = ("connector", "event_id", "type", "sku", "location", "qty", "occurred_at",
              "applied_at", "outcome", "reason", "source", "seq", "hold_id", "order_id",
              "channel", "expires_at", "remote_location")
_INSERT_EVENTS = (
    "INSERT INTO events (connector, event_id, type, sku, location, qty, occurred_at, applied_at, "
    "outcome, reason, source, seq, hold_id, order_id, channel, expires_at, remote_location) "
    "VALUES "
)
_IDENT = itemgetter(0, 1)  # (connector, event_id) of a ledger row
_EVENT_NULLABLE = positions(EVENT_COLS, ("location", "reason", "source", "seq", "hold_id",
                                        "order_id", "channel", "expires_at", "remote_location"))
_MAX_PARAMS = 30_000  # under SQLite's 32,766 and PostgreSQL's 32,767 bound parameters


_ON_CONFLICT = " ON CONFLICT (connector, event_id) DO NOTHING RETURNING connector, event_id"


def _placeholders(rows: int, cols: int) -> str:
    """`($1,...,$n),(...)` for a PostgreSQL multi-row VALUES."""
    return ",".join(
        "(" + ",".join(f"${r * cols + c + 1}" for c in range(cols)) + ")" for r in range(rows)
    )


def _pairs(rows: Sequence[Any]) -> Iterator[tuple[str, str]]:
    for row in rows:
        yield str(row[0]), str(row[1])


async def claim_events(
    conn: AsyncConnection, rows: Sequence[tuple[Any, ...]]
) -> tuple[set[tuple[str, str]], int]:
    """Insert ledger rows whose `(connector, event_id)` is new; return the identities inserted
    and an id at or below every id they got (0 when there are no rows). `submit_claim`, awaited
    at once."""
    return await (await submit_claim(conn, rows))


Claimed = tuple[set[tuple[str, str]], int]


async def submit_claim(
    conn: AsyncConnection, rows: Sequence[tuple[Any, ...]]
) -> asyncio.Task[Claimed]:
    """Send the ledger rows' insert to the database; returns the task that answers as
    `claim_events` does (a caller that gives up hands it to `settle`).

    The insert (`ON CONFLICT DO NOTHING` on the unique key) both deduplicates against the whole
    ledger (rule 1) and writes the rows; the caller then fixes the outcomes of the few that were
    not applied (`set_outcomes`), in the same transaction. On PostgreSQL a multi-row `RETURNING`
    names the inserted rows; it runs when awaited. On SQLite, where the one writer holds the
    database lock for the whole transaction, they are the rows above the previous highest rowid
    (the rows go in by `_sqlite_statements`, in order); when the insert's row count says every
    row went in, the rows themselves are the answer. Its statements are all queued on
    aiosqlite's thread at the next turn of the event loop, so the caller can run Python while
    the thread inserts: sqlite3 releases the GIL while a statement steps, and a block of rows
    is one step. Nothing else may use `conn` until the answer is awaited."""
    if not rows:
        return asyncio.ensure_future(_done((set(), 0)))
    if conn.dialect.name == "postgresql":
        return asyncio.ensure_future(_pg_claim(conn, rows))
    driver = await _aiosqlite(conn)
    statements = [  # in runs of one shape of NULLs, in order: the ids are the ledger's order
        statement
        for shape, group in split_nulls(EVENT_COLS, _EVENT_NULLABLE, rows, ordered=True)
        for statement in _sqlite_statements(
            _compiled_in_order(conn, events, shape.cols, ())
            + " ON CONFLICT (connector, event_id) DO NOTHING", len(shape.cols), group)
    ]
    return asyncio.ensure_future(_sqlite_claimed(conn, rows, driver, statements))


async def _aiosqlite(conn: AsyncConnection) -> aiosqlite.Connection:
    """The aiosqlite connection under `conn` (in the transaction `conn` began)."""
    driver = (await conn.get_raw_connection()).driver_connection
    if not isinstance(driver, aiosqlite.Connection):
        raise TypeError(f"not an aiosqlite connection: {type(driver).__name__}")
    return driver


async def _done(value: Claimed) -> Claimed:
    return value


async def _sqlite_claimed(
    conn: AsyncConnection, rows: Sequence[tuple[Any, ...]], driver: aiosqlite.Connection,
    statements: Sequence[tuple[str, list[tuple[Any, ...]]]],
) -> Claimed:
    # one call on aiosqlite's thread (`_on_thread`); on a failure the caller's transaction rolls
    # back what its statements did
    first, written = await _on_thread(driver, _claim_now, statements)
    inserted: set[tuple[str, str]] = set()
    if written == len(rows):  # no duplicate: the common case needs no read-back
        inserted.update(map(_IDENT, rows))
        return inserted, first
    result = await conn.exec_driver_sql(
        "SELECT connector, event_id FROM events WHERE id >= ?", (first,))
    inserted.update(_pairs(result.all()))
    return inserted, first


async def _pg_claim(conn: AsyncConnection, rows: Sequence[tuple[Any, ...]]) -> Claimed:
    first = await next_event_id(conn)
    inserted: set[tuple[str, str]] = set()
    ncols = len(EVENT_COLS)
    per = _MAX_PARAMS // ncols
    for i in range(0, len(rows), per):
        chunk = rows[i : i + per]
        params = tuple(v for r in chunk for v in r)
        sql = _INSERT_EVENTS + _placeholders(len(chunk), ncols) + _ON_CONFLICT  # constants only
        result = await conn.exec_driver_sql(sql, params)
        inserted.update(_pairs(result.all()))
    return inserted, first


async def set_outcomes(conn: AsyncConnection, fixes: Sequence[tuple[str, str | None, str, str]]
                       ) -> None:
    """`(outcome, reason, connector, event_id)` for rows claimed as applied but not applied."""
    if not fixes:
        return
    if conn.dialect.name == "postgresql":
        sql = "UPDATE events SET outcome = $1, reason = $2 WHERE connector = $3 AND event_id = $4"
    else:
        sql = "UPDATE events SET outcome = ?, reason = ? WHERE connector = ? AND event_id = ?"
    await conn.exec_driver_sql(sql, list(fixes))


async def unclaim_events(conn: AsyncConnection, idents: Iterable[tuple[str, str]]) -> None:
    """Take back claimed rows of commands that were not applied (a refused or repeated hold).

    A command is judged by the reservation it names, not by its row, so a refused command keeps
    no row: the ledger holds exactly what was applied, in the order it was applied."""
    rows = list(idents)
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        sql = "DELETE FROM events WHERE connector = $1 AND event_id = $2"
    else:
        sql = "DELETE FROM events WHERE connector = ? AND event_id = ?"
    await conn.exec_driver_sql(sql, rows)


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


LEVEL_COLS = ("sku", "location", "on_hand", "watermark", "floor", "reported_at", "tail",
              "version", "as_of")
REPLAY_FROM = "levels_replay_from"
# the events whose effect is on a level (re-applied by `restore_levels`)
_LEVEL_TYPES = (*sorted(t.value for t in STOCK_TYPES), EventType.HOLD_COLLECT.value)


def encode_tail(tail: Sequence[tuple[int, int]]) -> str:
    """The delta tail as compact JSON (`[[occurred_at,delta],...]`), built directly: the pairs
    are plain ints, and this is three times cheaper than `json.dumps` on the hot path."""
    if not tail:
        return "[]"
    if len(tail) == 1:  # the common case
        at, delta = tail[0]
        return f"[[{at},{delta}]]"
    return "[" + ",".join([f"[{at},{delta}]" for at, delta in tail]) + "]"


def level_row(sku: str, location: str, lvl: Level, as_of: int) -> tuple[Any, ...]:
    """A levels row, in `LEVEL_COLS` order: the level as of event `as_of`."""
    return (sku, location, lvl.on_hand, lvl.watermark, lvl.floor, lvl.reported_at,
            encode_tail(lvl.tail), lvl.version, as_of)


async def upsert_levels(conn: AsyncConnection, rows: Sequence[tuple[Any, ...]],
                        queued: Queued | None = None) -> None:
    """Write level rows (`level_row`); on SQLite, with `queued`, queue them there."""
    # NULLs bound, not split: a level row has one or two (`floor`, and `watermark` before the
    # first count), and splitting costs more than binding them (docs/decisions.md)
    if queued is not None and conn.dialect.name == "sqlite":
        await queued.many(_compiled_in_order(conn, levels, LEVEL_COLS, ("sku", "location")),
                          len(LEVEL_COLS), rows)
        return
    await _write_tuples(conn, levels, LEVEL_COLS, ("sku", "location"), rows)


async def next_event_id(conn: AsyncConnection) -> int:
    """An id above every event in the ledger now."""
    return int((await conn.exec_driver_sql("SELECT coalesce(max(id), 0) FROM events")).scalar()
               or 0) + 1


async def set_replay_from(conn: AsyncConnection, value: int) -> None:
    await upsert(conn, checkpoints, [{"name": REPLAY_FROM, "value": value}], ("name",))


async def load_replay_from(conn: AsyncConnection) -> int:
    result = await conn.execute(select(checkpoints.c.value).where(
        checkpoints.c.name == REPLAY_FROM))
    return int(result.scalar() or 0)


@dataclass(slots=True)
class RestoredLevels:
    levels: dict[tuple[str, str], Level]
    rolled: set[tuple[str, str]]  # keys whose row missed events (re-applied from the ledger)
    replay_from: int


async def load_levels(
    conn: AsyncConnection, keys: Iterable[tuple[str, str]] | None = None, *,
    horizon: int = DEFAULT_TAIL_HORIZON,
) -> dict[tuple[str, str], Level]:
    """The current levels (every one, or those of `keys`): their rows rolled forward."""
    return (await restore_levels(conn, keys, horizon=horizon)).levels


async def restore_levels(
    conn: AsyncConnection, keys: Iterable[tuple[str, str]] | None = None, *,
    horizon: int = DEFAULT_TAIL_HORIZON,
) -> RestoredLevels:
    """The level rows (a checkpoint), then the ledger's events after `replay_from` that a row
    does not include yet, re-applied in ledger order (`checkpoint.roll_forward`)."""
    wanted = None if keys is None else set(keys)
    replay_from = await load_replay_from(conn)
    rows, as_of = await _level_rows(conn, wanted, replay_from)
    effects = await _level_effects(conn, replay_from)
    rolled = roll_forward(rows, as_of, effects, horizon, wanted)
    return RestoredLevels(rows, rolled, replay_from)


async def _level_rows(
    conn: AsyncConnection, wanted: set[tuple[str, str]] | None, replay_from: int
) -> tuple[dict[tuple[str, str], Level], dict[tuple[str, str], int]]:
    """Level rows, and the `as_of` of those at or above `replay_from` (a row below it misses
    every event from there on; after a clean stop that is all of them). A cold start reads a
    million of these: tuples straight from the driver, positional construction."""
    out: dict[tuple[str, str], Level] = {}
    as_of: dict[tuple[str, str], int] = {}
    cols = (levels.c.sku, levels.c.location, levels.c.on_hand, levels.c.watermark,
            levels.c.tail, levels.c.floor, levels.c.reported_at, levels.c.version,
            levels.c.as_of)
    queries = []
    if wanted is None:
        queries.append(select(*cols))
    else:
        chunks = list(wanted)
        for i in range(0, len(chunks), _CHUNK):
            chunk = chunks[i : i + _CHUNK]
            queries.append(select(*cols).where(tuple_(levels.c.sku, levels.c.location).in_(chunk)))
    loads = json.loads
    for q in queries:
        result = await conn.execute(q)
        for sku, loc, on_hand, wm, tail, floor, rep, version, mark in result:
            key = kept_key(sku, loc)
            out[key] = Level(
                on_hand, wm, [] if tail == "[]" else [(a, b) for a, b in loads(tail)], floor,
                rep, version, key,
            )
            if mark >= replay_from:
                as_of[key] = mark
    return out, as_of


async def _level_effects(conn: AsyncConnection, replay_from: int) -> list[Effect]:
    """The applied events from `replay_from` on that moved a level, in ledger order."""
    result = await conn.execute(
        select(events.c.id, events.c.type, events.c.sku, events.c.location, events.c.qty,
               events.c.occurred_at, events.c.hold_id)
        .where(events.c.id >= replay_from, events.c.outcome == "applied",
               events.c.type.in_(_LEVEL_TYPES))
        .order_by(events.c.id)
    )
    rows = result.all()
    collect = EventType.HOLD_COLLECT.value
    holds = {r.res_id: r for r in await load_reservations(
        conn, ids=sorted({row[6] for row in rows if row[1] == collect and row[6]}))}
    out: list[Effect] = []
    for event_id, typ, sku, loc, qty, at, hold_id in rows:
        if typ == collect:
            hold = holds.get(hold_id or "")
            if hold is None:  # pragma: no cover - a collect row is kept only when applied
                continue
            out.append((event_id, EventType.HOLD_COLLECT, (hold.sku, hold.location), hold.qty,
                        at))
        else:
            out.append((event_id, EventType(typ), (sku, loc), qty, at))
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


OUTBOX_COLS = ("channel", "sku", "location", "desired", "version", "committed_at", "pushed",
               "pushed_version", "remote", "state", "attempts", "last_error", "next_attempt_at")
_OUTBOX_NULLABLE = positions(OUTBOX_COLS, ("pushed", "remote", "last_error"))


def outbox_row(key: tuple[str, str, str], row: OutboxRow) -> tuple[Any, ...]:
    """An outbox row, in `OUTBOX_COLS` order."""
    return (key[0], key[1], key[2], row.desired, row.version, row.committed_at, row.pushed,
            row.pushed_version, row.remote, row.state, row.attempts, row.last_error,
            row.next_attempt_at)


async def upsert_outbox(conn: AsyncConnection, rows: Sequence[tuple[Any, ...]]) -> None:
    await _write_tuples(conn, outbox, OUTBOX_COLS, ("channel", "sku", "location"), rows,
                        _OUTBOX_NULLABLE)


OUTBOX_DESIRED_COLS = ("channel", "sku", "location", "desired", "version", "committed_at")
# a new desired value, as `Outbox.publish` sets it in memory: a new row gets the pushed side
# of a fresh `OutboxRow`; an existing row keeps what it was pushed (`pushed`, `pushed_version`,
# `remote`, `last_error`) and is pending again from its first attempt
_DESIRED_VALUES = "({}, 0, 'pending', 0, 0)"
_UPSERT_DESIRED = (
    "INSERT INTO outbox (channel, sku, location, desired, version, committed_at, pushed_version, "
    "state, attempts, next_attempt_at) VALUES {} ON CONFLICT (channel, sku, location) DO UPDATE "
    "SET desired = excluded.desired, version = excluded.version, "
    "committed_at = excluded.committed_at, state = 'pending', attempts = 0, next_attempt_at = 0"
)


def outbox_desired_row(key: tuple[str, str, str], row: OutboxRow) -> tuple[Any, ...]:
    """The desired side of an outbox row, in `OUTBOX_DESIRED_COLS` order."""
    return (key[0], key[1], key[2], row.desired, row.version, row.committed_at)


async def upsert_outbox_desired(conn: AsyncConnection, rows: Sequence[tuple[Any, ...]],
                                queued: Queued | None = None) -> None:
    """Write new desired values of rows whose pushed side has not changed since they were last
    written (`outbox_desired_row`): six values a row, none of them NULL, instead of thirteen.
    On SQLite, with `queued`, queue them there."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        one = _DESIRED_VALUES.format("$1, $2, $3, $4, $5, $6")
        await conn.exec_driver_sql(_UPSERT_DESIRED.format(one), list(rows))
        return
    one = _DESIRED_VALUES.format("?, ?, ?, ?, ?, ?")
    if queued is not None:
        await queued.many(_UPSERT_DESIRED.format(one), len(OUTBOX_DESIRED_COLS), rows, one)
        return
    await _sqlite_many(conn, _UPSERT_DESIRED.format(one), len(OUTBOX_DESIRED_COLS), rows, one)


async def load_outbox(conn: AsyncConnection) -> dict[tuple[str, str, str], OutboxRow]:
    out: dict[tuple[str, str, str], OutboxRow] = {}
    cols = (outbox.c.channel, outbox.c.sku, outbox.c.location, outbox.c.desired,
            outbox.c.version, outbox.c.committed_at, outbox.c.pushed, outbox.c.pushed_version,
            outbox.c.remote, outbox.c.state, outbox.c.attempts, outbox.c.last_error,
            outbox.c.next_attempt_at)
    result = await conn.execute(select(*cols))
    for ch, sku, loc, *rest in result:
        key = kept_key(ch, sku, loc)
        out[key] = row = OutboxRow(*rest)
        row.key = key
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


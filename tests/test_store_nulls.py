"""Batch writes leave NULL columns out of the statement on SQLite (`syncd.store._nulls`).

The split must be lossless and keep the ledger's order; a value that becomes NULL must be written
as NULL by an upsert; and the same writes must give the same rows on PostgreSQL, where nothing is
split."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
from itertools import pairwise
from typing import Any
from unittest.mock import patch

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from syncd.model import Event, EventType, Level
from syncd.store import open_engine, upgrade
from syncd.store import repository as repo
from syncd.store._nulls import split_nulls
from syncd.store.repository import OutboxRow
from tests.core import T0, db_url

__all__ = ["db_url"]

COLS = ("a", "b", "c", "d", "e")
NULLABLE = (1, 3, 4)
_row = st.tuples(
    st.integers(), st.none() | st.integers(), st.text(max_size=3),
    st.none() | st.text(max_size=3), st.none() | st.integers(),
)


def _restore(cols: tuple[str, ...], row: tuple[Any, ...]) -> tuple[Any, ...]:
    values = dict(zip(cols, row, strict=True))
    return tuple(values.get(c) for c in COLS)


@given(st.lists(_row, max_size=30))
def test_ordered_runs_give_back_every_row_in_order(rows: list[tuple[Any, ...]]) -> None:
    groups = split_nulls(COLS, NULLABLE, rows, ordered=True)
    back = [_restore(shape.cols, r) for shape, group in groups for r in group]
    assert back == rows
    for shape, group in groups:
        assert group  # no empty run
        for r in group:  # nothing NULL is bound
            assert all(v is not None for c, v in zip(shape.cols, r, strict=True)
                       if COLS.index(c) in NULLABLE)
    # consecutive runs differ in shape (a run is as long as it can be)
    assert all(a[0] is not b[0] for a, b in pairwise(groups))


@given(st.lists(_row, max_size=30))
def test_unordered_groups_give_back_every_row_once(rows: list[tuple[Any, ...]]) -> None:
    groups = split_nulls(COLS, NULLABLE, rows, ordered=False)
    back = [_restore(shape.cols, r) for shape, group in groups for r in group]
    assert sorted(map(repr, back)) == sorted(map(repr, rows))
    assert len({id(shape) for shape, _ in groups}) == len(groups)


@given(st.integers(1, 40), st.integers(0, 2600), st.sampled_from([999, 32_766]))
def test_sqlite_statements_write_every_row_once_in_order(
    ncols: int, n: int, limit: int
) -> None:
    """The statements of `_sqlite_statements`, executed in turn, bind every row once, in the
    input order, and none binds more parameters than the library allows."""
    rows = [tuple(range(i * ncols, (i + 1) * ncols)) for i in range(n)]
    one = "(" + ", ".join(["?"] * ncols) + ")"
    sql = f"INSERT INTO t VALUES {one}"
    with patch.object(repo, "_VARIABLE_LIMIT", limit):
        statements = repo._sqlite_statements(sql, ncols, rows)
    bound: list[Any] = []
    for statement, params in statements:
        assert statement.count("?") <= limit
        for p in params:
            assert len(p) == statement.count("?")
            bound.extend(p)
    assert bound == [v for r in rows for v in r]
    assert len(statements) <= 3  # big blocks, then small blocks, then one by one


async def test_a_refused_block_fails_the_whole_claim(db_url: str) -> None:
    """The claim's statements all go to the database before the first answer (SQLite runs
    them as one call on aiosqlite's thread): when a later block is refused (a NOT NULL
    column), the claim raises, no task is left with an error nobody retrieved, and the
    transaction's rollback takes back the blocks that went in."""
    db = open_engine(db_url)
    await upgrade(db)
    loop = asyncio.get_running_loop()
    unretrieved: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: unretrieved.append(context))

    def sale(i: int) -> tuple[Any, ...]:
        return repo.event_row(Event("pos", f"e{i:04d}", EventType.SALE, "A", 1, T0 + i,
                                    location="s1"), T0, "applied", "")

    rows = [sale(i) for i in range(1100)]
    for i in (1050, 1090):  # no SKU, in the block of 64 and among the last rows
        rows[i] = (*rows[i][:3], None, *rows[i][4:])
    try:
        # as the driver raised it: sqlite3's own (the statements bypass SQLAlchemy there)
        with pytest.raises((IntegrityError, sqlite3.IntegrityError)):
            async with db.begin() as conn:
                await repo.claim_events(conn, rows)
        gc.collect()
        await asyncio.sleep(0)
        assert unretrieved == []
        async with db.connect() as conn:
            assert await repo.iter_events(conn) == []
    finally:
        loop.set_exception_handler(None)
        await db.dispose()


async def test_queued_writes_fail_together_and_roll_back(db_url: str) -> None:
    """Level rows written slice by slice through `Queued` (SQLite: each slice queued on
    aiosqlite's thread while the next is built; PostgreSQL: written as added). Good slices are
    all written; when two slices hold a refused row (no on-hand), the write raises once every
    statement is done, no task is left with an error nobody retrieved, and the rollback keeps
    the rows as they were."""
    db = open_engine(db_url)
    await upgrade(db)
    loop = asyncio.get_running_loop()
    unretrieved: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: unretrieved.append(context))
    lvl = Level(on_hand=3)
    rows = [repo.level_row(f"S{i:04d}", "paris", lvl, 7) for i in range(2500)]

    async def write(rows: list[tuple[Any, ...]]) -> None:
        async with db.begin() as conn:
            queued = repo.Queued(conn)
            for i in range(0, len(rows), 1000):
                await repo.upsert_levels(conn, rows[i : i + 1000], queued)
            await queued.wait()

    try:
        await write(rows)
        bad = [(*r[:2], None, *r[3:]) if i in (1500, 2400) else (*r[:2], 5, *r[3:])
               for i, r in enumerate(rows)]
        with pytest.raises((IntegrityError, sqlite3.IntegrityError)):
            await write(bad)
        gc.collect()
        await asyncio.sleep(0)
        assert unretrieved == []
        async with db.connect() as conn:
            stored = (await conn.execute(text(
                "SELECT count(*), min(on_hand), max(on_hand) FROM levels"))).one()
        assert tuple(stored) == (2500, 3, 3)
    finally:
        loop.set_exception_handler(None)
        await db.dispose()


async def test_ledger_rows_keep_order_and_nulls(db_url: str) -> None:
    """Rows of different shapes, interleaved: ids follow the input order, NULLs stay NULL, and
    a repeated identity is not inserted (the claim reads the rest back)."""
    db = open_engine(db_url)
    await upgrade(db)
    evs = [
        Event("pos", "e1", EventType.SALE, "A", 1, T0, location="s1", source="t1", seq=1),
        Event("web", "o1", EventType.ORDER, "A", 2, T0 + 1, channel="shop", order_id="O-1"),
        Event("pos", "e2", EventType.COUNT, "A", 9, T0 + 2, location="s1"),
        Event("hold", "h1", EventType.HOLD_CREATE, "A", 1, T0 + 3, location="s1",
              hold_id="H1", expires_at=T0 + 99),
    ]
    rows = [repo.event_row(e, T0, "applied", "") for e in evs]
    try:
        async with db.begin() as conn:
            fresh, _ = await repo.claim_events(conn, rows)
        assert fresh == {(e.connector, e.event_id) for e in evs}
        async with db.begin() as conn:  # one repeat among new rows
            again = [rows[1], repo.event_row(
                Event("pos", "e3", EventType.SALE, "B", 1, T0 + 4, location="s1"), T0,
                "applied", "")]
            fresh, _ = await repo.claim_events(conn, again)
        assert fresh == {("pos", "e3")}
        async with db.connect() as conn:
            stored = (await conn.execute(text(
                "SELECT event_id, location, source, seq, order_id, channel, hold_id, "
                "expires_at, reason FROM events ORDER BY id"))).all()
        assert [tuple(r) for r in stored] == [
            ("e1", "s1", "t1", 1, None, None, None, None, None),
            ("o1", None, None, None, "O-1", "shop", None, None, None),
            ("e2", "s1", None, None, None, None, None, None, None),
            ("h1", "s1", None, None, None, None, "H1", T0 + 99, None),
            ("e3", "s1", None, None, None, None, None, None, None),
        ]
    finally:
        await db.dispose()


async def test_upsert_writes_a_value_that_became_null(db_url: str) -> None:
    """An outbox row whose push result and error were cleared (a new version): the upsert of
    the NULL shape must overwrite the old values, not keep them."""
    db = open_engine(db_url)
    await upgrade(db)
    key = ("shop", "A", "")
    failed = OutboxRow(5, 2, T0, pushed=4, pushed_version=1, remote=4, state="failed",
                       last_error="HTTP 422", next_attempt_at=0)
    cleared = OutboxRow(6, 3, T0 + 1)
    try:
        async with db.begin() as conn:
            await repo.upsert_outbox(conn, [repo.outbox_row(key, failed)])
        async with db.begin() as conn:
            await repo.upsert_outbox(conn, [repo.outbox_row(key, cleared),
                                            repo.outbox_row(("shop", "B", ""), failed)])
        async with db.connect() as conn:
            rows = await repo.load_outbox(conn)
        assert rows[key] == cleared
        assert rows[("shop", "B", "")] == failed
    finally:
        await db.dispose()


async def test_blocks_of_rows_keep_order_dedupe_and_last_write(db_url: str) -> None:
    """More rows than one multi-row statement holds (SQLite writes blocks of 1,000 rows, then
    of 64, then the rest one by one): repeats inside a block are not inserted, ids follow the
    input order, and an upsert that names a key twice in one block (rows of one NULL shape)
    keeps the later row."""
    db = open_engine(db_url)
    await upgrade(db)

    def sale(i: int) -> tuple[Any, ...]:
        return repo.event_row(Event("pos", f"e{i:04d}", EventType.SALE, "A", 1, T0 + i,
                                    location="s1", source="t1", seq=i), T0, "applied", "")

    try:
        async with db.begin() as conn:
            fresh, _ = await repo.claim_events(conn, [sale(i) for i in range(1150)])
        assert len(fresh) == 1150
        mixed = [sale(i) for i in range(1000, 2300)]  # 150 repeats, then 1,150 new
        mixed = mixed[::2] + mixed[1::2]  # interleave repeats and new rows
        async with db.begin() as conn:
            fresh, _ = await repo.claim_events(conn, mixed)
        assert fresh == {("pos", f"e{i:04d}") for i in range(1150, 2300)}
        async with db.connect() as conn:
            ids = [r[0] for r in (await conn.execute(text(
                "SELECT event_id FROM events ORDER BY id"))).all()]
        new_order = [r[1] for r in mixed if int(r[1][1:]) >= 1150]
        assert ids == [f"e{i:04d}" for i in range(1150)] + new_order
        rows = [repo.outbox_row(("shop", f"S{i:04d}", ""), OutboxRow(i, 1, T0))
                for i in range(1130)]
        rows.insert(40, repo.outbox_row(("shop", "S0050", ""), OutboxRow(-1, 1, T0)))
        async with db.begin() as conn:
            await repo.upsert_outbox(conn, rows)
        async with db.connect() as conn:
            stored = await repo.load_outbox(conn)
        assert len(stored) == 1130
        assert {k[1]: r.desired for k, r in stored.items()} == {
            f"S{i:04d}": i for i in range(1130)}
    finally:
        await db.dispose()


async def test_a_desired_side_write_keeps_what_was_pushed(db_url: str) -> None:
    """`upsert_outbox_desired` writes what `Outbox.publish` changes in memory: a new row
    gets a fresh row's pushed side; an existing row keeps pushed / pushed_version / remote /
    last_error and is pending again from its first attempt. More rows than one SQLite block."""
    db = open_engine(db_url)
    await upgrade(db)
    key = ("shop", "A", "")
    pushed = OutboxRow(5, 2, T0, pushed=5, pushed_version=2, remote=5, state="failed",
                       attempts=3, last_error="HTTP 422", next_attempt_at=T0 + 9)
    try:
        async with db.begin() as conn:
            await repo.upsert_outbox(conn, [repo.outbox_row(key, pushed)])
        # in memory, as publish leaves them: the existing row, then 99 new ones
        moved = OutboxRow(4, 3, T0 + 1, pushed=5, pushed_version=2, remote=5,
                          last_error="HTTP 422")
        fresh = {("shop", f"S{i:03d}", "loc"): OutboxRow(i, 1, T0 + 2) for i in range(99)}
        async with db.begin() as conn:
            await repo.upsert_outbox_desired(
                conn, [repo.outbox_desired_row(key, moved)]
                + [repo.outbox_desired_row(k, r) for k, r in fresh.items()])
        async with db.connect() as conn:
            rows = await repo.load_outbox(conn)
        assert rows == {key: moved, **fresh}
        assert rows[key].pending
    finally:
        await db.dispose()

"""Levels as a checkpoint of the ledger: rows written lazily, the rest re-applied at start.

The engine is killed (its task cancelled, nothing flushed: what a SIGKILL leaves) with level rows
behind the ledger; the next start must rebuild exactly the state it had, on SQLite and on
PostgreSQL. The migration from a database written before checkpoints keeps its rows current."""

from __future__ import annotations

import asyncio
import contextlib
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from syncd.checkpoint import Checkpoint
from syncd.engine import Engine
from syncd.ledger import replay
from syncd.model import EventType, Level
from syncd.store import open_engine, sqlite_url, upgrade
from syncd.store import repository as repo
from tests.core import FAR, SEC, T0, db_url, ev, retailer, running_engine

__all__ = ["db_url"]

E = EventType
LAZY = {"level_checkpoint_every": 0.0, "level_checkpoint_chunk": 1}


def _state(levels: dict[tuple[str, str], Level]) -> dict[tuple[str, str], tuple[object, ...]]:
    return {k: (v.on_hand, v.watermark, v.floor, v.reported_at, tuple(v.tail), v.version)
            for k, v in levels.items()}


async def _kill(engine: Engine) -> None:
    """Stop the engine as a SIGKILL would: no drain, no checkpoint, no outbox flush."""
    task = engine._task
    assert task is not None
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _raw_rows(engine: Engine) -> dict[tuple[str, str], tuple[int, int]]:
    async with engine.db.connect() as conn:
        rows = (await conn.execute(text("SELECT sku, location, on_hand, as_of FROM levels"))).all()
    return {(r[0], r[1]): (int(r[2]), int(r[3])) for r in rows}


@st.composite
def traffic(draw: st.DrawFn) -> list[list[object]]:
    """Batches of counts, deltas (some stale), holds collected at the desk or by a POS pickup."""
    batches: list[list[object]] = []
    holds = 0
    for _ in range(draw(st.integers(1, 5))):
        batch: list[object] = []
        for _ in range(draw(st.integers(1, 8))):
            kind = draw(st.sampled_from(["count", "sale", "sale", "adjust", "hold", "pickup"]))
            sku = draw(st.sampled_from(["A", "B"]))
            loc = draw(st.sampled_from(["paris", "lille", "lyon"]))
            auth = "wms" if loc == "lyon" else "pos"
            at = T0 + draw(st.integers(0, 600)) * SEC
            if kind == "count":
                batch.append(ev(E.COUNT, sku=sku, qty=draw(st.integers(0, 30)), at=at,
                                location=loc, connector=auth))
            elif kind in ("sale", "adjust"):
                qty = draw(st.integers(1, 4)) if kind == "sale" else draw(st.integers(-3, 3))
                batch.append(ev(E.SALE if kind == "sale" else E.ADJUST, sku=sku, qty=qty, at=at,
                                location=loc, connector=auth))
            else:
                holds += 1
                h = f"H{holds}"
                batch.append(ev(E.HOLD_CREATE, sku=sku, qty=1, location="paris", connector="api",
                                hold_id=h, event_id=f"hold:{h}:create",
                                expires_at=FAR))
                if kind == "hold":
                    batch.append(ev(E.HOLD_COLLECT, sku=sku, qty=1, at=at, location="paris",
                                    connector="api", hold_id=h, event_id=f"hold:{h}:collect"))
                else:
                    batch.append(ev(E.PICKUP, sku=sku, qty=1, at=at, location="paris",
                                    hold_id=h))
        batches.append(batch)
    return batches


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(batches=traffic(), chunk=st.integers(1, 4))
async def test_a_killed_engine_restarts_with_exactly_its_state(
    db_url: str, batches: list[list[object]], chunk: int
) -> None:
    async with running_engine(db_url) as engine:
        async with engine.db.begin() as conn:
            for table in ("events", "levels", "reservations", "outbox", "sources",
                          "checkpoints"):
                await conn.exec_driver_sql(f"DELETE FROM {table}")
        await _kill(engine)
    kw = {"level_checkpoint_every": 0.0, "level_checkpoint_chunk": chunk}
    async with running_engine(db_url, **kw) as engine:
        for batch in batches:
            await engine.apply(batch)  # type: ignore[arg-type]
        before = _state(engine.ledger.levels)
        desired = {k: r.desired for k, r in engine.outbox.rows.items()}
        await _kill(engine)
        async with engine.db.connect() as conn:
            log = await repo.iter_events(conn)
    async with running_engine(db_url, **kw) as again:
        assert _state(again.ledger.levels) == before
        assert {k: r.desired for k, r in again.outbox.rows.items()} == desired
        await _kill(again)  # and once more, with the re-applied keys still lagging
    async with running_engine(db_url, **kw) as third:
        assert _state(third.ledger.levels) == before
    # the rows after a clean stop are the whole state, and replaying the ledger agrees
    async with running_engine(db_url, **kw) as fourth:
        pass
    assert _state(fourth.ledger.levels) == before
    async with fourth.db.connect() as conn:
        rows = await _raw_rows(fourth)
        mark = await repo.load_replay_from(conn)
    assert {k: v[0] for k, v in rows.items()} == {k: v[0] for k, v in before.items()}
    assert all(as_of < mark for _, as_of in rows.values()), (rows, mark, batches)
    replayed = replay(retailer(), [(e, at) for e, at, _ in log])
    assert {k: v for k, v in _state(replayed.levels).items() if v[-1]} == {
        k: v for k, v in before.items() if v[-1]}


async def test_level_rows_lag_until_the_checkpoint_and_the_start_re_applies_the_rest(
    db_url: str,
) -> None:
    async with running_engine(db_url, level_checkpoint_every=3600.0) as engine:
        await engine.apply([ev(E.COUNT, qty=50, event_id="c1")])
        await engine.apply([ev(E.SALE, qty=2, at=T0 + SEC, event_id="s1"),
                            ev(E.SALE, sku="SKU-2", qty=1, at=T0 + SEC, event_id="s2")])
        assert await _raw_rows(engine) == {}  # nothing written yet: the ledger has it all
        assert engine.metrics.levels_lagging._value.get() == 2
        await _kill(engine)
    async with running_engine(db_url, level_checkpoint_every=3600.0) as engine:
        assert engine.ledger.levels[("SKU-1", "paris")].on_hand == 48
        assert engine.ledger.levels[("SKU-2", "paris")].on_hand == -1
        await engine.apply([ev(E.SALE, qty=1, at=T0 + 2 * SEC, event_id="s3")])
    # a clean stop writes every row, as of the last event, and moves the mark past it
    async with running_engine(db_url) as engine:
        assert engine.metrics.levels_lagging._value.get() == 0
        rows = await _raw_rows(engine)
        async with engine.db.connect() as conn:
            mark = await repo.load_replay_from(conn)
            last = await repo.next_event_id(conn) - 1
        assert rows == {("SKU-1", "paris"): (47, last), ("SKU-2", "paris"): (-1, last)}
        assert mark == last + 1


async def test_rows_are_written_a_chunk_per_commit_in_key_order(db_url: str) -> None:
    async with running_engine(db_url, **LAZY) as engine:
        await engine.apply([ev(E.COUNT, sku=s, qty=5, event_id=f"c{s}") for s in "CAB"])
        # the generation closed at that commit; its first key was written with it
        assert set(await _raw_rows(engine)) == {("A", "paris")}
        await engine.apply([ev(E.SALE, sku="A", qty=1, at=T0 + SEC, event_id="sA")])
        assert set(await _raw_rows(engine)) == {("A", "paris"), ("B", "paris")}
        async with engine.db.connect() as conn:
            mark = await repo.load_replay_from(conn)
        assert mark == 1  # still the first generation's first event
        await _kill(engine)
    async with running_engine(db_url, **LAZY) as engine:
        assert {k: v.on_hand for k, v in engine.ledger.levels.items()} == {
            ("A", "paris"): 4, ("B", "paris"): 5, ("C", "paris"): 5}


def test_checkpoint_marks_never_pass_an_unwritten_event() -> None:
    cp = Checkpoint(every=10.0, chunk=2, now=0.0)
    cp.touch([("A", "x"), ("B", "x"), ("C", "x")], first_id=5)
    assert cp.due(1.0) == []  # not yet time
    assert cp.replay_from(0, 9) == 5
    assert cp.due(10.0) == [("A", "x"), ("B", "x")]
    cp.touch([("A", "x")], first_id=9)  # touched again after the rotation
    assert cp.replay_from(2, 12) == 5  # ("C", "x") of the first generation still lags
    cp.written(2)
    assert cp.due(10.5) == [("C", "x")]
    assert cp.replay_from(1, 12) == 9  # now only the second generation lags
    cp.written(1)
    assert cp.due(11.0) == []  # the second generation waits for its own turn
    assert cp.due(20.0) == [("A", "x")]  # its own turn, 10 s after the first rotation
    assert cp.replay_from(1, 14) == 14
    cp.written(1)
    assert cp.lagging == 0


def test_a_stop_takes_every_lagging_key_once_in_sku_order() -> None:
    """`rest` is what a stop writes in its one commit: the unwritten part of the generation
    being written and the current generation, each key once, in SKU order."""
    cp = Checkpoint(every=10.0, chunk=2, now=0.0)
    cp.touch([("B", "x"), ("A", "y"), ("C", "x")], first_id=1)
    assert cp.due(10.0) == [("A", "y"), ("B", "x")]
    cp.written(2)  # ("C", "x") of that generation is still unwritten
    cp.touch([("D", "z"), ("C", "x"), ("A", "y")], first_id=9)
    assert cp.rest() == [("A", "y"), ("C", "x"), ("D", "z")]
    assert cp.lagging == 4  # ("C", "x") counted in both generations
    cp.clear()
    assert cp.lagging == 0
    assert cp.due(30.0) == []
    assert cp.replay_from(0, 42) == 42


async def test_a_database_from_before_checkpoints_keeps_its_rows_current(
    tmp_path: object,
) -> None:
    url = sqlite_url(str(tmp_path))
    db = open_engine(url)
    await upgrade(db, "0001")
    async with db.begin() as conn:
        await conn.exec_driver_sql(
            "INSERT INTO events (connector, event_id, type, sku, location, qty, occurred_at, "
            f"applied_at, outcome) VALUES ('pos', 'c1', 'count', 'SKU-1', 'paris', 9, {T0}, "
            f"{T0}, 'applied'), ('pos', 's1', 'sale', 'SKU-1', 'paris', 1, {T0 + SEC}, "
            f"{T0}, 'applied')")
        # the row was written in the same commit as its events, as revision 0001 did
        await conn.exec_driver_sql(
            "INSERT INTO levels (sku, location, on_hand, watermark, floor, reported_at, tail, "
            f"version) VALUES ('SKU-1', 'paris', 8, {T0}, NULL, {T0 + SEC}, "
            f"'[[{T0 + SEC},-1]]', 2)")
    await db.dispose()
    async with running_engine(url) as engine:
        lvl = engine.ledger.levels[("SKU-1", "paris")]
        assert (lvl.on_hand, lvl.version, lvl.tail) == (8, 2, [(T0 + SEC, -1)])
        async with engine.db.connect() as conn:
            assert await repo.load_replay_from(conn) == 3
        assert engine.checkpoint.lagging == 0


@given(st.lists(st.tuples(st.integers(-2**63, 2**63 - 1), st.integers(-2**31, 2**31)),
                max_size=5))
def test_tail_is_stored_as_json(tail: list[tuple[int, int]]) -> None:
    """The hand-built encoding of a level's delta tail is the JSON a reader expects."""
    encoded = repo.encode_tail(tail)
    assert json.loads(encoded) == [list(p) for p in tail]
    assert encoded == json.dumps([list(p) for p in tail], separators=(",", ":"))

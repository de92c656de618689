"""The engine on a real database (SQLite and PostgreSQL): group commit, acknowledgement after
commit, idempotency across restarts, rebuild from the database, crash safety."""

from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, event
from sqlalchemy.util.concurrency import await_

from connectors.base import DeadLetter, Inbound
from syncd.engine import CommitFailed, Engine
from syncd.ledger import replay
from syncd.model import Event, EventType, Outcome, ReservationState
from syncd.store import open_engine, sqlite_url
from syncd.store import repository as repo
from tests.core import FAR, SEC, T0, db_url, ev, retailer, running_engine, until
from tests.crash_child import workload
from tests.servers import PostgresServer

__all__ = ["db_url"]

E = EventType


async def test_duplicates_change_nothing_even_after_restart(db_url: str) -> None:
    async with running_engine(db_url) as engine:
        out = await engine.apply([ev(E.COUNT, qty=10, event_id="c1"),
                                  ev(E.SALE, qty=1, at=T0 + 1, event_id="s1"),
                                  ev(E.SALE, qty=1, at=T0 + 1, event_id="s1")])
        assert [v.outcome for v in out] == [Outcome.APPLIED, Outcome.APPLIED, Outcome.DUPLICATE]
    async with running_engine(db_url) as engine:
        out = await engine.apply([ev(E.SALE, qty=1, at=T0 + 1, event_id="s1")])
        assert out[0].outcome is Outcome.DUPLICATE
        assert engine.ledger.levels[("SKU-1", "paris")].on_hand == 9
        dup = engine.metrics.events.labels("pos", "sale", "duplicate")._value.get()
        assert dup == 1


async def test_an_order_for_a_sku_no_location_reported_is_dead_lettered(db_url: str) -> None:
    order = ev(E.ORDER, sku="NOWHERE", qty=1, location=None, connector="shop", channel="web",
               order_id="O9", event_id="o9")
    async with running_engine(db_url) as engine:
        (v,) = await engine.apply([order])
        assert v.outcome is Outcome.REJECTED and "unknown SKU 'NOWHERE'" in v.reason
        async with engine.db.connect() as conn:
            assert await repo.iter_events(conn) == []  # nothing in the ledger
            dead = (await conn.exec_driver_sql(
                "SELECT connector, reason, origin FROM dead_letters")).all()
        assert [tuple(d) for d in dead] == [("shop", v.reason, "order O9")]
        assert engine.ledger.reservations == {}
        # once a location reports the SKU, the same line is reserved (it was not claimed)
        await engine.apply([ev(E.COUNT, sku="NOWHERE", qty=3, location="lyon", connector="wms")])
        (v,) = await engine.apply([order])
        assert v.outcome is Outcome.APPLIED
        assert engine.ledger.reserved("NOWHERE", "lyon", engine.clock()) == 1


async def test_oversold_levels_are_tracked_until_stock_comes_back(db_url: str) -> None:
    """A level below zero is counted in `syncd_oversold_skus` (published as 0) from the batch
    that took it there until a count or a receipt brings it back, also within one batch."""
    async with running_engine(db_url) as engine:
        gauge = engine.metrics.oversold
        await engine.apply([ev(E.COUNT, qty=1, event_id="c1"),
                            ev(E.SALE, qty=3, at=T0 + 1, event_id="s1"),
                            ev(E.SALE, qty=1, sku="SKU-2", location="lille", at=T0 + 1)])
        assert engine.oversold == {("SKU-1", "paris"), ("SKU-2", "lille")}
        assert gauge._value.get() == 2
        await engine.apply([ev(E.SALE, qty=1, at=T0 + 2)])  # still below zero
        assert gauge._value.get() == 2
        await engine.apply([ev(E.RECEIPT, qty=5, at=T0 + 3)])
        assert engine.oversold == {("SKU-2", "lille")}
        # down and back up inside one batch: never reported
        await engine.apply([ev(E.SALE, qty=9, at=T0 + 4), ev(E.COUNT, qty=4, at=T0 + 5),
                            ev(E.COUNT, qty=2, sku="SKU-2", location="lille", at=T0 + 5)])
        assert engine.oversold == set() and gauge._value.get() == 0
        await engine.apply([ev(E.SALE, qty=5, sku="SKU-2", location="lille", at=T0 + 6)])
    async with running_engine(db_url) as engine:  # rebuilt from the levels at start
        assert engine.oversold == {("SKU-2", "lille")}
        assert engine.metrics.oversold._value.get() == 1


async def test_a_failed_commit_restores_the_level_a_collect_moved(tmp_path: Path) -> None:
    """A desk collect names only its hold (no SKU, no location). When its commit fails, the
    level it took the unit from must be reloaded with the hold, or the retry takes it twice.
    The fault is injected in the database itself: a trigger refuses the collected hold's row,
    written after the batch was applied in memory."""
    async with running_engine(sqlite_url(tmp_path)) as engine:
        await engine.apply([ev(E.COUNT, qty=2, event_id="c1")])
        await engine.apply([ev(E.HOLD_CREATE, qty=1, connector="api", event_id="h1",
                               hold_id="H1", expires_at=engine.clock() + 3600 * SEC)])
        async with engine.db.begin() as conn:
            await conn.exec_driver_sql(
                "CREATE TRIGGER refuse_collect BEFORE INSERT ON reservations "
                "WHEN NEW.state = 'collected' BEGIN SELECT RAISE(ABORT, 'injected'); END")
        collect = ev(E.HOLD_COLLECT, sku="", qty=0, location=None, connector="api",
                     event_id="hold:H1:collect", hold_id="H1", at=engine.clock())
        with pytest.raises(CommitFailed):
            await engine.apply([collect])
        assert await engine.apply([]) == []  # the engine has reloaded what the batch touched
        assert engine.ledger.levels[("SKU-1", "paris")].on_hand == 2
        assert engine.ledger.reservations["H1"].state is ReservationState.HELD
        async with engine.db.begin() as conn:
            await conn.exec_driver_sql("DROP TRIGGER refuse_collect")
        (v,) = await engine.apply([collect])
        assert v.outcome is Outcome.APPLIED
        assert engine.ledger.levels[("SKU-1", "paris")].on_hand == 1
        async with engine.db.connect() as conn:
            stored = await repo.load_levels(conn, [("SKU-1", "paris")])
        assert stored[("SKU-1", "paris")].on_hand == 1


async def test_a_reconfiguration_outlives_a_batch_whose_commit_failed(
    postgres: PostgresServer,
) -> None:
    """After `reconfigure` (SIGHUP) every figure is recomputed. A failed batch must not take the
    recompute with it, or figures of SKUs no later event touches keep the old configuration's
    value: neither when the reconfiguration comes while the batch before it commits, nor while the
    failing batch itself waits. Batches are held before their commit by another transaction's
    lock on the till's sources row, and fail on a trigger at their last write, after they were
    applied in memory."""
    url = postgres.create_database(f"t_{uuid.uuid4().hex[:12]}")
    other = open_engine(url)
    async with running_engine(url) as engine:
        await engine.apply([ev(E.COUNT, qty=10, event_id="c1", source="till", seq=1)])
        assert engine.outbox.rows[("web", "SKU-1", "")].desired == 7  # 10 - 1 (paris) - 2 (web)
        async with engine.db.begin() as conn:
            await conn.exec_driver_sql(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'injected'; END $$")
            await conn.exec_driver_sql(
                "CREATE TRIGGER refuse BEFORE INSERT ON sources FOR EACH ROW "
                "WHEN (NEW.source = 'bad') EXECUTE FUNCTION refuse()")
        async with other.connect() as lock:  # the driver opens the transaction
            await lock.exec_driver_sql("SELECT * FROM sources FOR UPDATE")
            first = asyncio.ensure_future(engine.apply(
                [ev(E.SALE, sku="SKU-4", event_id="s4", at=T0 + 1, source="till", seq=2)]))
            # applied in memory, waiting on the lock before its commit
            await until(lambda: ("SKU-4", "paris") in engine.ledger.levels, 4.0)
            assert not first.done()
            engine.reconfigure(retailer(safety_stock=5))
            bad = asyncio.ensure_future(engine.apply(  # fails at its last write, the sources row
                [ev(E.SALE, sku="SKU-2", event_id="s2", source="bad", seq=1)]))
            await asyncio.sleep(0.05)
            await lock.exec_driver_sql("ROLLBACK")
        await first
        with pytest.raises(CommitFailed):
            await bad
        await engine.apply([ev(E.COUNT, sku="SKU-3", qty=1, event_id="c3")])
        assert engine.outbox.rows[("web", "SKU-1", "")].desired == 4  # 10 - 1 - 5

        # and one that comes while the failing batch itself waits is not lost with it
        async with engine.db.begin() as conn:
            await conn.exec_driver_sql(
                "CREATE TRIGGER refuse_seq BEFORE UPDATE ON sources FOR EACH ROW "
                "WHEN (NEW.last_seq = 99) EXECUTE FUNCTION refuse()")
        async with other.connect() as lock:
            await lock.exec_driver_sql("SELECT * FROM sources FOR UPDATE")
            failing = asyncio.ensure_future(engine.apply(
                [ev(E.SALE, sku="SKU-5", event_id="s5", at=T0 + 2, source="till", seq=99)]))
            await until(lambda: ("SKU-5", "paris") in engine.ledger.levels, 4.0)
            assert not failing.done()
            engine.reconfigure(retailer(safety_stock=3))
            await asyncio.sleep(0.05)
            await lock.exec_driver_sql("ROLLBACK")
        with pytest.raises(CommitFailed):
            await failing
        await engine.apply([])
        assert engine.outbox.rows[("web", "SKU-1", "")].desired == 6  # 10 - 1 - 3
    await other.dispose()


async def test_a_committed_batch_is_acknowledged_even_if_its_figures_fail(
    tmp_path: Path,
) -> None:
    """Figures are computed after the commit. If that ever fails (a bug; here a configuration
    that `syncd run` refuses before start: a channel selling from an unknown location), the batch
    is committed all the same: its sources must hear so, and the figures are recomputed with the
    next batch."""
    async with running_engine(sqlite_url(tmp_path)) as engine:
        await engine.apply([ev(E.COUNT, qty=10, event_id="c1")])
        engine.reconfigure(retailer(sells_from=("lyon", "paris", "mars")))
        (v,) = await engine.apply([ev(E.SALE, qty=1, at=T0 + 1, event_id="s1")])
        assert v.outcome is Outcome.APPLIED
        async with engine.db.connect() as conn:
            stored = await conn.exec_driver_sql("SELECT outcome FROM events WHERE event_id = 's1'")
            assert stored.all() == [("applied",)]
        engine.reconfigure(retailer())
        await engine.apply([])
        assert engine.outbox.rows[("web", "SKU-1", "")].desired == 6  # 9 - 1 (paris) - 2 (web)


async def test_a_stop_that_cuts_a_batch_short_writes_none_of_its_effects(
    postgres: PostgresServer,
) -> None:
    """A stop waits `within` seconds, then cancels a batch stuck in its transaction (here: another
    transaction holds the lock on the till's sources row). Memory then holds the effects of events
    never committed. The level checkpoint must not be written from it (the redelivered sale would
    count twice), the caller must hear a refusal rather than wait forever, and neither must a
    delivery still queued behind it."""
    url = postgres.create_database(f"t_{uuid.uuid4().hex[:12]}")
    other = open_engine(url)
    async with running_engine(url) as engine:
        await engine.apply([ev(E.COUNT, qty=5, event_id="c1", source="till", seq=1)])
        async with other.connect() as lock:
            await lock.exec_driver_sql("BEGIN")
            await lock.exec_driver_sql("SELECT * FROM sources FOR UPDATE")
            sale = ev(E.SALE, qty=2, at=T0 + 1, event_id="s1", source="till", seq=2)
            stuck = asyncio.ensure_future(engine.apply([sale]))
            # applied in memory, waiting on the lock before its commit
            await until(lambda: engine.ledger.levels[("SKU-1", "paris")].on_hand == 3, 4.0)
            assert engine.ledger.levels[("SKU-1", "paris")].on_hand == 3
            queued = asyncio.ensure_future(engine.apply([ev(E.SALE, event_id="s2", at=T0 + 2)]))
            await asyncio.sleep(0.05)
            await engine.stop(within=0.2)
            for refused in (stuck, queued):
                with pytest.raises(CommitFailed):
                    await asyncio.wait_for(refused, 5)
            await lock.exec_driver_sql("ROLLBACK")
    await other.dispose()
    async with running_engine(url) as again:
        assert again.ledger.levels[("SKU-1", "paris")].on_hand == 5
        (v,) = await again.apply([sale])  # the till delivers it again
        assert v.outcome is Outcome.APPLIED
        assert again.ledger.levels[("SKU-1", "paris")].on_hand == 3


@pytest.mark.parametrize("within", [5.0, 0.1])
async def test_a_clean_stop_during_a_periodic_commit_still_writes_the_level_checkpoint(
    tmp_path: Path, within: float
) -> None:
    """The engine commits on its own every second (expiries, the outbox flush), with nothing
    queued. A stop that arrives while such a commit waits for the database lets it finish (5 s);
    one that gives up and cancels it (0.1 s) still writes the level checkpoint, since a batch
    with no work leaves memory as committed."""
    async with running_engine(sqlite_url(tmp_path), sweep_every=0.05,
                              level_checkpoint_every=3600.0) as engine:
        await engine.apply([ev(E.COUNT, qty=5, event_id="c1")])
        blocker = sqlite3.connect(tmp_path / "syncd.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # the write lock: the next periodic commit waits
        before = engine.batches
        await asyncio.sleep(0.3)
        assert engine.batches == before  # it is waiting
        asyncio.get_running_loop().call_later(0.3, blocker.execute, "ROLLBACK")
        await engine.stop(within=within)
        blocker.close()
    db = sqlite3.connect(tmp_path / "syncd.db")
    assert db.execute("SELECT on_hand FROM levels WHERE sku = 'SKU-1' AND location = 'paris'"
                      ).fetchall() == [(5,)]
    db.close()


async def _three_deliveries(engine: Engine) -> list[str]:
    """Deliveries a (a count), b and c (sales), queued together before the engine runs, so
    that with `max_batch=1` each is a batch with work queued behind it; returns what their
    sources hear, in order ("a", or "a refused" when refused)."""
    heard: list[str] = []

    def delivery(name: str, event: Event) -> Inbound:
        return Inbound([event], on_commit=lambda: heard.append(name),
                       on_failure=lambda exc: heard.append(f"{name} refused"))

    await engine.submit(delivery("a", ev(E.COUNT, qty=5, event_id="a")))
    await engine.submit(delivery("b", ev(E.SALE, qty=1, at=T0 + 1, event_id="b")))
    await engine.submit(delivery("c", ev(E.SALE, qty=2, at=T0 + 2, event_id="c")))
    return heard


@pytest.mark.parametrize("fault", ["begin", "insert"])
async def test_a_batch_is_acknowledged_first_even_when_the_next_one_fails(
    tmp_path: Path, fault: str
) -> None:
    """With work queued behind it, a committed batch's sources hear while the next batch's
    ledger rows go in (`Engine._process`). They still hear before that batch's sources, and
    they hear when that batch fails: when its transaction cannot begin (the database refuses
    its second BEGIN) or when its insert is refused (a trigger refuses its row)."""
    async with running_engine(sqlite_url(tmp_path), max_batch=1, sweep_every=3600.0) as engine:
        begins = 0
        if fault == "begin":
            @event.listens_for(engine.db.sync_engine, "begin")
            def _refuse_the_second(conn: Connection) -> None:
                nonlocal begins
                begins += 1
                if begins == 2:
                    raise sqlite3.OperationalError("injected: disk I/O error")
        else:
            async with engine.db.begin() as conn:
                await conn.exec_driver_sql(
                    "CREATE TRIGGER refuse_b BEFORE INSERT ON events "
                    "WHEN NEW.event_id = 'b' BEGIN SELECT RAISE(ABORT, 'injected'); END")
        heard = await _three_deliveries(engine)
        await until(lambda: len(heard) == 3)
        assert heard == ["a", "b refused", "c"]
        assert engine.ledger.levels[("SKU-1", "paris")].on_hand == 3
        async with engine.db.connect() as conn:
            assert [row[0].event_id for row in await repo.iter_events(conn)] == ["a", "c"]


async def test_a_stop_that_gives_up_tells_the_committed_batch_first(tmp_path: Path) -> None:
    """A batch committed with work queued behind it is finished during the next batch. When
    that next batch hangs (the database does not answer its BEGIN) and the stop gives up on
    it, the committed batch's sources are still told, before the cut-short batch's and the
    never-taken one's are refused."""
    async with running_engine(sqlite_url(tmp_path), max_batch=1, sweep_every=3600.0) as engine:
        begins = _hang_the_second_begin(engine)
        heard = await _three_deliveries(engine)
        await until(lambda: begins() == 2)
        await engine.stop(within=0.2)
        assert heard == ["a", "b refused", "c refused"]


async def test_an_acknowledgement_that_hangs_is_given_up_and_the_engine_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The writer awaits each source's acknowledgement in order. One that never returns (a
    file move on a stuck mount) is given up after `callback_timeout`: the deliveries behind it
    are committed and told, and its own events stay committed."""
    told: list[str] = []

    async def hang() -> None:
        told.append("a")
        await asyncio.sleep(3600)

    async with running_engine(sqlite_url(tmp_path), callback_timeout=0.3) as engine:
        await engine.submit(Inbound([ev(E.COUNT, qty=5, event_id="a")], on_commit=hang))
        await engine.submit(Inbound([ev(E.SALE, qty=1, at=T0 + 1, event_id="b")],
                                    on_commit=lambda: told.append("b")))
        await until(lambda: told == ["a", "b"], 10)
        assert engine.ledger.levels[("SKU-1", "paris")].on_hand == 4
        async with engine.db.connect() as conn:
            assert [row[0].event_id for row in await repo.iter_events(conn)] == ["a", "b"]
    assert "did not return within 0.3 s" in caplog.text


async def test_a_stop_that_gives_up_does_not_wait_for_a_hanging_acknowledgement(
    tmp_path: Path,
) -> None:
    """A stop that gives up on a batch hanging in its BEGIN still finishes the committed
    batch before it (a1 and a2), whose first acknowledgement here never returns: the stop
    waits for it only `callback_timeout`, tells a2, then refuses the cut-short batch (b and c).
    The writer task is being cancelled meanwhile, which must not turn the given-up callback
    into a cancellation of the rest."""
    heard: list[str] = []

    async def hang() -> None:
        heard.append("a1")
        await asyncio.sleep(3600)

    async with running_engine(sqlite_url(tmp_path), max_batch=2, sweep_every=3600.0,
                              callback_timeout=0.3) as engine:
        begins = _hang_the_second_begin(engine)
        await engine.submit(Inbound([ev(E.COUNT, qty=5, event_id="a1")], on_commit=hang))
        await engine.submit(Inbound([ev(E.COUNT, qty=5, location="lille", event_id="a2")],
                                    on_commit=lambda: heard.append("a2")))
        for name, at in (("b", T0 + 1), ("c", T0 + 2)):
            await engine.submit(Inbound([ev(E.SALE, qty=1, at=at, event_id=name)],
                                        on_failure=_refused(heard, name)))
        await until(lambda: begins() == 2)
        stopping = asyncio.ensure_future(engine.stop(within=0.2))
        await until(stopping.done, 5.0)  # 0.2 s of drain, 0.3 s of acknowledgement
        await stopping
        assert heard == ["a1", "a2", "b refused", "c refused"]


async def test_a_stop_whose_checkpoint_fails_still_writes_the_outbox(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A stop writes the lagging level rows, the outbox rows owed and the replay mark in one
    transaction. When that transaction fails (here the mark's write is refused), none of it is
    kept, the outbox rows are written again on their own, and the next start re-applies the
    ledger after the old mark."""
    async with running_engine(sqlite_url(tmp_path), level_checkpoint_every=3600.0,
                              desired_flush_every=3600.0) as engine:
        await engine.apply([ev(E.COUNT, qty=5, event_id="c1"),
                            ev(E.SALE, qty=2, at=T0 + 1, event_id="s1")])
        shown = {key: row.desired for key, row in engine.outbox.rows.items()}
        async with engine.db.connect() as conn:
            mark = await repo.load_replay_from(conn)

        @event.listens_for(engine.db.sync_engine, "before_cursor_execute")
        def _refuse_the_mark(conn: Connection, cursor: object, statement: str, *_: object) -> None:
            if "INTO checkpoints" in statement:
                raise sqlite3.OperationalError("injected: disk I/O error")

        await engine.stop()
        event.remove(engine.db.sync_engine, "before_cursor_execute", _refuse_the_mark)
        assert "could not write the level checkpoint" in caplog.text
        async with engine.db.connect() as conn:
            assert await repo.load_replay_from(conn) == mark
            assert (await conn.exec_driver_sql("SELECT count(*) FROM levels")).scalar() == 0
            stored = await repo.load_outbox(conn)
        assert {key: row.desired for key, row in stored.items()} == shown
    async with running_engine(sqlite_url(tmp_path)) as again:
        assert again.ledger.levels[("SKU-1", "paris")].on_hand == 3


def _hang_the_second_begin(engine: Engine) -> Callable[[], int]:
    """Make the engine's second BEGIN never return (the database stops answering); returns
    how many BEGINs it has seen."""
    begins = 0

    @event.listens_for(engine.db.sync_engine, "begin")
    def _hang_the_second(conn: Connection) -> None:
        nonlocal begins
        begins += 1
        if begins == 2:
            await_(asyncio.sleep(3600))

    return lambda: begins


def _refused(heard: list[str], name: str) -> Callable[[BaseException], None]:
    return lambda exc: heard.append(f"{name} refused")


async def test_a_stop_that_gives_up_on_a_postgresql_claim_rolls_back_and_tells_everyone(
    postgres: PostgresServer,
) -> None:
    """On PostgreSQL the ledger insert (the claim) runs as a task while the committed batch
    before it is finished. Here both hang: a's acknowledgement does not return, and b's insert
    waits inside the server (another transaction has inserted b's ledger row and not
    committed, so the unique index makes it wait). A stop that gives up cancels the engine in
    a's acknowledgement, with b's query still running; asyncpg refuses a rollback until that
    query has ended (`repository.settle`). The stop returns, b and c are refused, and the
    connection goes back to the pool usable: once the other transaction rolls back, a start
    finds only a, and b delivered again is applied."""
    url = postgres.create_database(f"t_{uuid.uuid4().hex[:12]}")
    other = open_engine(url)
    heard: list[str] = []
    acking = asyncio.Event()

    async def hang() -> None:
        heard.append("a")
        acking.set()
        await asyncio.sleep(3600)

    async with (
        running_engine(url, max_batch=1, sweep_every=3600.0) as engine,
        other.connect() as blocker,
    ):
        await blocker.exec_driver_sql("BEGIN")
        await blocker.exec_driver_sql(
            "INSERT INTO events (connector, event_id, type, sku, location, qty, occurred_at, "
            "applied_at, outcome) VALUES ('pos', 'b', 'sale', 'SKU-1', 'paris', 1, 0, 0, "
            "'applied')")
        for name, event_ in (("a", ev(E.COUNT, qty=5, event_id="a")),
                             ("b", ev(E.SALE, qty=1, at=T0 + 1, event_id="b")),
                             ("c", ev(E.SALE, qty=2, at=T0 + 2, event_id="c"))):
            await engine.submit(Inbound([event_], on_commit=hang if name == "a" else None,
                                        on_failure=_refused(heard, name)))
        await asyncio.wait_for(acking.wait(), 10)
        waiting = 0
        for _ in range(2000):  # b's insert waits on the index: seen by the server
            waiting = (await blocker.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE 'INSERT INTO events%'")).scalar() or 0
            if waiting:
                break
            await asyncio.sleep(0.01)
        assert waiting == 1
        stopping = asyncio.ensure_future(engine.stop(within=0.2))
        await until(stopping.done, 5.0)
        await stopping
        assert heard == ["a", "b refused", "c refused"]
        async with engine.db.connect() as conn:  # the pool's connection answers again
            assert (await conn.exec_driver_sql("SELECT count(*) FROM events")).scalar() == 1
        await blocker.exec_driver_sql("ROLLBACK")
    await other.dispose()
    async with running_engine(url) as again:
        assert again.ledger.levels[("SKU-1", "paris")].on_hand == 5
        (v,) = await again.apply([ev(E.SALE, qty=1, at=T0 + 1, event_id="b")])
        assert v.outcome is Outcome.APPLIED
        assert again.ledger.levels[("SKU-1", "paris")].on_hand == 4


async def test_the_rows_of_one_sku_share_one_copy_of_each_name(db_url: str) -> None:
    """Every level and outbox row is kept under names shared by all rows of its SKU: each
    database row and each event brings its own copy of the SKU and location strings, and at a
    million rows those copies were a sixth of the daemon's peak memory (BENCHMARKS.md,
    "Scale")."""

    def fresh(text: str) -> str:  # a copy, as a parser makes one: not the literal's object
        return "".join(list(text))

    async with running_engine(db_url) as engine:
        await engine.apply([ev(E.COUNT, sku=fresh("SKU-7"), qty=5, location=fresh(loc),
                               event_id=f"c-{loc}") for loc in ("paris", "lille")])
        live = list(engine.ledger.levels)
        assert live[0][0] is live[1][0]
        created = [key for key in engine.outbox.rows if key[1] == "SKU-7"]
        assert {id(key[1]) for key in created} == {id(live[0][0])}
    async with running_engine(db_url) as again:
        levels = list(again.ledger.levels)
        rows = [key for key in again.outbox.rows if key[1] == "SKU-7"]
        assert len(levels) == 2 and len(rows) == 3  # web, and kiosk at each store
        names = {id(key[0]) for key in levels} | {id(key[1]) for key in rows}
        assert len(names) == 1
        paris = {id(key[1]) for key in levels if key[1] == "paris"}
        assert paris == {id(key[2]) for key in rows if key[2] == "paris"}
        # an event's own copy of the names is not what its batch passes on (to the figures, the
        # checkpoint): they get the kept key
        await again.apply([ev(E.SALE, sku=fresh("SKU-7"), location=fresh("paris"), at=T0 + 1,
                              event_id="s")])
        assert list(again.checkpoint.current) == [("SKU-7", "paris")]
        assert id(next(iter(again.checkpoint.current))) in {id(k) for k in levels}
        # and the outbox passes on the keys its rows are kept under
        kept = {id(key) for key in again.outbox.rows}
        assert len(again.outbox.moved) == 2  # web, and kiosk at paris
        assert {id(key) for key in again.outbox.moved} <= kept
        assert {id(key) for keys in again.outbox.pending.values() for key in keys} <= kept


async def test_acknowledgement_only_after_the_batch_is_committed(db_url: str) -> None:
    async with running_engine(db_url) as engine:
        seen: list[int] = []

        async def on_commit() -> None:
            # a separate connection sees the events: they are committed
            db = open_engine(db_url)
            async with db.connect() as conn:
                rows = await repo.iter_events(conn)
            await db.dispose()
            seen.append(len(rows))

        done = asyncio.Event()

        async def ack() -> None:
            await on_commit()
            done.set()

        await engine.submit(Inbound([ev(E.COUNT, qty=5, event_id="a"),
                                     ev(E.SALE, qty=1, at=T0 + 1, event_id="b")],
                                    [DeadLetter("pos", "not JSON", b"\xff", "t")], ack))
        await asyncio.wait_for(done.wait(), 10)
        assert seen == [2]
        async with engine.db.connect() as conn:
            dead = await conn.exec_driver_sql("SELECT connector, reason FROM dead_letters")
            assert dead.fetchall() == [("pos", "not JSON")]


async def test_concurrent_holds_never_both_take_the_last_unit(db_url: str) -> None:
    async with running_engine(db_url) as engine:
        await engine.apply([ev(E.COUNT, qty=2)])  # paris safety stock 1: one unit available
        holds = [ev(E.HOLD_CREATE, qty=1, connector="api", hold_id=f"H{i}",
                    event_id=f"hold:H{i}:create", expires_at=FAR) for i in range(2)]
        results = await asyncio.gather(*(engine.apply([h]) for h in holds))
        outcomes = sorted(r[0].outcome.value for r in results)
        assert outcomes == ["applied", "rejected"]


async def test_sweeper_records_expired_holds_and_frees_the_channel(db_url: str) -> None:
    clock = [T0]
    async with running_engine(db_url, sweep_every=0.01, clock=lambda: clock[0]) as engine:
        await engine.apply([ev(E.COUNT, qty=10)])
        web_before = engine.outbox.rows[("web", "SKU-1", "")].desired
        await engine.apply([ev(E.HOLD_CREATE, qty=3, connector="api", hold_id="H",
                               event_id="hold:H:create", expires_at=T0 + 60 * SEC)])
        assert engine.outbox.rows[("web", "SKU-1", "")].desired == web_before - 3
        clock[0] = T0 + 61 * SEC
        await until(lambda: engine.hold_states["expired"] == 1, 4.0)
        assert engine.hold_states["expired"] == 1
        assert engine.outbox.rows[("web", "SKU-1", "")].desired == web_before
        async with engine.db.connect() as conn:
            stored = await repo.load_reservations(conn, ids=["H"])
        assert stored[0].state is ReservationState.EXPIRED


async def test_a_failed_commit_restores_the_holds_its_sweep_expired(tmp_path: Path) -> None:
    """The sweeper's expiries ride in the batch they are due in. When that commit fails, the
    holds must be reloaded with the rest (held, open again), so that a later sweep records the
    expiry; otherwise memory says expired and the database held, until a restart."""
    clock = [T0]
    async with running_engine(sqlite_url(tmp_path), sweep_every=0.01,
                              clock=lambda: clock[0]) as engine:
        await engine.apply([ev(E.COUNT, qty=10)])
        await engine.apply([ev(E.HOLD_CREATE, qty=3, connector="api", hold_id="H",
                               event_id="hold:H:create", expires_at=T0 + 60 * SEC)])
        async with engine.db.begin() as conn:
            await conn.exec_driver_sql(
                "CREATE TRIGGER refuse_expiry BEFORE INSERT ON reservations "
                "WHEN NEW.state = 'expired' BEGIN SELECT RAISE(ABORT, 'injected'); END")
        clock[0] = T0 + 61 * SEC
        await until(lambda: engine.metrics.db_errors._value.get() >= 1, 4.0)
        assert engine.metrics.db_errors._value.get() >= 1  # the sweep's batch failed
        async with engine.db.begin() as conn:
            await conn.exec_driver_sql("DROP TRIGGER refuse_expiry")
        await until(lambda: engine.hold_states["expired"] == 1, 6.0)
        assert engine.hold_states["expired"] == 1
        async with engine.db.connect() as conn:
            stored = await repo.load_reservations(conn, ids=["H"])
        assert stored[0].state is ReservationState.EXPIRED


@st.composite
def traffic(draw: st.DrawFn) -> list[object]:
    n = draw(st.integers(1, 25))
    out: list[object] = []
    for i in range(n):
        kind = draw(st.sampled_from(["count", "sale", "order", "cancel", "hold", "release"]))
        sku = draw(st.sampled_from(["A", "B"]))
        at = T0 + draw(st.integers(0, 600)) * SEC
        loc = draw(st.sampled_from(["paris", "lille", "lyon"]))
        auth = "wms" if loc == "lyon" else "pos"
        oid = f"O{draw(st.integers(0, 3))}"
        if kind == "count":
            out.append(ev(E.COUNT, sku=sku, qty=draw(st.integers(0, 20)), at=at, location=loc,
                          connector=auth))
        elif kind == "sale":
            out.append(ev(E.SALE, sku=sku, qty=draw(st.integers(1, 5)), at=at, location=loc,
                          connector=auth, event_id=f"s{draw(st.integers(0, n))}"))
        elif kind == "order":
            out.append(ev(E.ORDER, sku=sku, qty=draw(st.integers(1, 3)), location=None,
                          connector="shop", channel="web", order_id=oid))
        elif kind == "cancel":
            out.append(ev(E.ORDER_CANCELLED, sku="", qty=0, location=None, connector="shop",
                          channel="web", order_id=oid))
        elif kind == "hold":
            h = f"H{draw(st.integers(0, 2))}"
            out.append(ev(E.HOLD_CREATE, sku=sku, qty=1, location="paris", connector="api",
                          hold_id=h, event_id=f"hold:{h}:create", expires_at=FAR))
        else:
            h = f"H{draw(st.integers(0, 2))}"
            out.append(ev(E.HOLD_RELEASE, sku=sku, qty=1, location="paris", connector="api",
                          hold_id=h, event_id=f"hold:{h}:release"))
        del i
    return out


def _open(engine: object) -> dict[str, tuple[str, str, int, str]]:
    led = engine.ledger  # type: ignore[attr-defined]
    return {rid: (r.sku, r.location, r.qty, r.state.value)
            for bucket in led.open.values() for rid, r in bucket.items()}


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(batches=st.lists(traffic(), min_size=1, max_size=4))
async def test_state_rebuilt_from_the_database_equals_memory(
    db_url: str, batches: list[list[object]]
) -> None:
    async with running_engine(db_url) as engine:
        async with engine.db.begin() as conn:
            for table in ("events", "levels", "reservations", "outbox", "sources"):
                await conn.exec_driver_sql(f"DELETE FROM {table}")
        await engine.stop()
    async with running_engine(db_url) as engine:
        for batch in batches:
            await engine.apply(batch)  # type: ignore[arg-type]
        levels = {k: (v.on_hand, v.watermark, v.tail) for k, v in engine.ledger.levels.items()}
        opened = _open(engine)
        desired = {k: r.desired for k, r in engine.outbox.rows.items()}
        async with engine.db.connect() as conn:
            log = await repo.iter_events(conn)
    async with running_engine(db_url) as again:
        assert {k: (v.on_hand, v.watermark, v.tail)
                for k, v in again.ledger.levels.items()} == levels
        assert _open(again) == opened
        assert {k: r.desired for k, r in again.outbox.rows.items()} == desired
    # and the ledger replayed from scratch gives the same state
    replayed = replay(retailer(), [(e, at) for e, at, _ in log])
    assert {k: (v.on_hand, v.watermark, v.tail) for k, v in replayed.levels.items()
            if v.version} == {k: v for k, v in levels.items() if k in replayed.levels
                              and replayed.levels[k].version}


async def test_sigkilled_engine_loses_no_acknowledged_event_and_applies_none_twice(
    db_url: str,
) -> None:
    """A process running the engine is SIGKILLed at random moments (between apply and commit,
    mid-commit, after commit): every event acknowledged before the kill is in the ledger, and
    redelivering everything afterwards gives the exact total, nothing applied twice."""
    rnd = random.Random(7)
    acked: set[str] = set()
    async with running_engine(db_url):
        pass  # migrate once
    for _round in range(3):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.crash_child", db_url,
            stdout=asyncio.subprocess.PIPE, cwd=str(Path(__file__).parent.parent),
        )
        assert proc.stdout is not None
        first = asyncio.Event()

        async def read(stream: asyncio.StreamReader, first: asyncio.Event = first) -> None:
            async for line in stream:
                if line.startswith(b"ACK "):
                    acked.update(line[4:].decode().strip().split(","))
                    first.set()

        reader = asyncio.create_task(read(proc.stdout))
        await asyncio.wait_for(first.wait(), 60)
        await asyncio.sleep(rnd.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        await asyncio.wait_for(reader, 10)  # acknowledgements written before the kill landed
        async with running_engine(db_url) as engine:
            async with engine.db.connect() as conn:
                stored = {e.event_id for e, _, _ in await repo.iter_events(conn)}
            assert acked <= stored  # nothing acknowledged is lost
    assert acked
    # the sources redeliver everything (acknowledged or not): nothing is applied twice
    async with running_engine(db_url) as engine:
        await engine.apply(workload())  # type: ignore[arg-type]
        for k in range(7):
            expected = 10_000 - sum(1 for i in range(3000) if i % 7 == k)
            assert engine.ledger.levels[(f"S{k}", "paris")].on_hand == expected
        async with engine.db.connect() as conn:
            rows = await repo.iter_events(conn)
        assert len(rows) == len({(e.connector, e.event_id) for e, _, _ in rows}) == 3007

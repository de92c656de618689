"""Pushers against a channel at the transport seam: coalescing, batching, retries with backoff,
permanent failures, compare-and-set conflicts, drift, reconciliation and restart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from prometheus_client import CollectorRegistry

from syncd.engine import Engine
from syncd.metrics import Metrics
from syncd.model import EventType, Outcome
from syncd.outbox import Outbox, OutboxRow
from syncd.push import Pusher
from syncd.store import open_engine, sqlite_url, upgrade
from syncd.store import repository as repo
from tests.core import SEC, T0, FakeChannel, db_url, ev, running_engine, until

__all__ = ["db_url"]

E = EventType


@asynccontextmanager
async def pushing(
    tmp_path: Path, channel: FakeChannel | None = None, **kw: object
) -> AsyncIterator[tuple[Engine, FakeChannel, Pusher]]:
    shop = channel or FakeChannel()
    async with running_engine(sqlite_url(tmp_path)) as engine:
        pusher = Pusher("web", shop, engine.outbox, engine.metrics,  # type: ignore[arg-type]
                        engine.clock, backoff=0.01, max_backoff=0.05, **kw)  # type: ignore[arg-type]
        pusher.start()
        try:
            yield engine, shop, pusher
        finally:
            await pusher.stop()


def counts(n: int, qty: int = 10, prefix: str = "S") -> list[object]:
    return [ev(E.COUNT, sku=f"{prefix}{i}", qty=qty, location="lyon", connector="wms",
               event_id=f"c-{prefix}{i}-{qty}") for i in range(n)]


async def test_published_figures_reach_the_channel(tmp_path: Path) -> None:
    async with pushing(tmp_path) as (engine, shop, _):
        await engine.apply([ev(E.COUNT, qty=10, location="lyon", connector="wms"),
                            ev(E.COUNT, qty=5, location="paris")])
        # web: lyon 10 + paris (5 - safety 1) = 14, minus channel safety 2
        await until(lambda: shop.shown.get(("SKU-1", "")) == 12)
        row = engine.outbox.rows[("web", "SKU-1", "")]
        await until(lambda: not row.pending)
        assert (row.pushed, row.state) == (12, "ok")


async def test_batches_respect_the_connector_limit(tmp_path: Path) -> None:
    async with pushing(tmp_path, FakeChannel(max_batch=100)) as (engine, shop, _):
        await engine.apply(counts(450))  # type: ignore[arg-type]
        await until(lambda: len(shop.shown) == 450)
        assert max(len(c) for c in shop.calls) == 100
        assert len(shop.calls) == 5


async def test_a_channel_that_was_down_gets_one_current_value_per_sku(tmp_path: Path) -> None:
    shop = FakeChannel()
    shop.gate = asyncio.Event()  # the channel hangs
    async with pushing(tmp_path, shop) as (engine, _, _):
        await engine.apply([ev(E.COUNT, qty=100, location="lyon", connector="wms")])
        await asyncio.sleep(0.05)
        for i in range(50):
            await engine.apply([ev(E.SALE, qty=1, location="lyon", connector="wms",
                                   at=T0 + 1 + i)])
        shop.gate.set()
        await until(lambda: shop.shown.get(("SKU-1", "")) == 100 - 50 - 2)
        await until(lambda: not engine.outbox.rows[("web", "SKU-1", "")].pending)
        pushed = [it.desired for call in shop.calls for it in call]
        assert pushed == [98, 48]  # the in-flight value, then only the latest one
        assert engine.metrics.coalesced.labels("web")._value.get() >= 49


async def test_transient_failures_are_retried_with_the_same_idempotency_key(
    tmp_path: Path,
) -> None:
    shop = FakeChannel()
    shop.fail_next = 3
    async with pushing(tmp_path, shop) as (engine, _, pusher):
        await engine.apply([ev(E.COUNT, qty=10, location="lyon", connector="wms")])
        await until(lambda: shop.shown.get(("SKU-1", "")) == 8)
        assert len(shop.calls) == 4
        assert pusher.retries == 3
        keys = {it.idempotency_key for call in shop.calls for it in call}
        assert len(keys) == 1  # same version, same key
        await engine.apply([ev(E.SALE, qty=1, location="lyon", connector="wms", at=T0 + 5)])
        await until(lambda: shop.shown.get(("SKU-1", "")) == 7)
        assert shop.calls[-1][0].idempotency_key not in keys  # a new version, a new key


def test_a_version_number_reused_after_a_crash_gets_another_key() -> None:
    """The desired side is flushed lazily: v4 = 7 and v5 = 6 pushed, neither flushed, a crash;
    the restart recomputes the figure and makes it v4 again, with 6 or with 7 (if a later count
    brought it back). A channel that deduplicates by key must not drop it as a retry."""
    outbox = Outbox(Metrics(CollectorRegistry()))
    pushed = outbox.item("web", "SKU-1", "", OutboxRow(7, 4, T0))
    assert outbox.item("web", "SKU-1", "", OutboxRow(7, 4, T0)) == pushed  # the same value
    for again in (OutboxRow(6, 4, T0 + SEC), OutboxRow(7, 4, T0 + SEC), OutboxRow(6, 4, T0)):
        item = outbox.item("web", "SKU-1", "", again)
        assert item.idempotency_key != pushed.idempotency_key, again


async def test_a_row_reloaded_at_a_restart_is_pushed_with_the_same_key(db_url: str) -> None:
    """A retry after a restart that reloads the row (desired side flushed) is the same push: the
    channel must be able to recognise it, so the key comes back unchanged."""
    key = ("web", "SKU-1", "")
    row = OutboxRow(7, 4, T0 + 123_456)
    outbox = Outbox(Metrics(CollectorRegistry()))
    before = outbox.item(*key, row)
    db = open_engine(db_url)
    try:
        await upgrade(db)
        async with db.begin() as conn:
            await repo.upsert_outbox_desired(conn, [repo.outbox_desired_row(key, row)])
        async with db.connect() as conn:
            loaded = await repo.load_outbox(conn)
    finally:
        await db.dispose()
    assert outbox.item(*key, loaded[key]) == before


async def test_the_pushed_side_is_written_at_every_flush_and_the_desired_side_on_its_clock(
    db_url: str,
) -> None:
    """What a channel was given, and a row a pusher took, is written every
    `outbox_flush_every`; a figure no pusher took yet (derived state) waits for
    `desired_flush_every`, or the stop."""

    def count(sku: str) -> list:  # type: ignore[type-arg]
        return [ev(E.COUNT, sku=sku, qty=10, location="lyon", connector="wms")]

    async def stored(engine: Engine) -> dict[tuple[str, str, str], OutboxRow]:
        async with engine.db.connect() as conn:
            return await repo.load_outbox(conn)

    async with running_engine(db_url, outbox_flush_every=0.0,
                              desired_flush_every=3600.0) as engine:
        # the figures a batch moves are written by a later batch's flush: the first batch's
        # flush (both sides) found none, and the desired side's next one is an hour away
        await engine.apply(count("A"))
        await engine.apply(count("B"))
        rows = await stored(engine)
        assert ("web", "A", "") not in rows and ("web", "B", "") not in rows
        a = engine.outbox.rows[("web", "A", "")]
        engine.outbox.settle(engine.outbox.item("web", "A", "", a), state="ok",
                             pushed=a.desired, remote=a.desired, error=None)
        await engine.apply(count("C"))
        rows = await stored(engine)
        assert (rows[("web", "A", "")].pushed, rows[("web", "A", "")].pushed_version) == (
            a.desired, a.version)
        assert ("web", "B", "") not in rows and ("web", "C", "") not in rows
        # a row a pusher takes is written whole at the next flush, as a pushed one is
        engine.outbox.take("web", 1, T0 + 3600 * SEC)
        await engine.apply(count("D"))
        rows = await stored(engine)
        b = engine.outbox.rows[("web", "B", "")]  # pending keys are taken in their order
        assert (rows[("web", "B", "")].desired, rows[("web", "B", "")].version) == (
            b.desired, b.version)
        assert rows[("web", "B", "")].pending and ("web", "C", "") not in rows
        await engine.stop()
        rows = await stored(engine)
        for sku in "BC":
            assert rows[("web", sku, "")].desired == engine.outbox.rows[("web", sku, "")].desired


async def test_a_permanent_failure_is_recorded_and_blocks_no_other_sku(tmp_path: Path) -> None:
    shop = FakeChannel()
    shop.refuse = {"BAD"}
    async with pushing(tmp_path, shop) as (engine, _, _):
        await engine.apply([ev(E.COUNT, sku="BAD", qty=10, location="lyon", connector="wms"),
                            ev(E.COUNT, sku="GOOD", qty=10, location="lyon", connector="wms")])
        await until(lambda: shop.shown.get(("GOOD", "")) == 8)
        bad = engine.outbox.rows[("web", "BAD", "")]
        await until(lambda: bad.state == "failed")
        assert bad.last_error == "unknown SKU"
        assert not bad.pending  # not retried until a new value comes
        await engine.stop()
        async with engine.db.connect() as conn:
            row = (await conn.exec_driver_sql(
                "SELECT state, last_error FROM outbox WHERE sku = 'BAD'")).one()
        assert tuple(row) == ("failed", "unknown SKU")


async def test_compare_and_set_conflict_repushes_with_the_channel_value(tmp_path: Path) -> None:
    shop = FakeChannel()
    async with pushing(tmp_path, shop) as (engine, _, _):
        await engine.apply([ev(E.COUNT, qty=10, location="lyon", connector="wms")])
        await until(lambda: shop.shown.get(("SKU-1", "")) == 8)
        shop.shown[("SKU-1", "")] = 3  # someone changed it on the channel
        shop.conflict_once.add(("SKU-1", ""))
        await engine.apply([ev(E.SALE, qty=1, location="lyon", connector="wms", at=T0 + 5)])
        await until(lambda: shop.shown.get(("SKU-1", "")) == 7)
        last_two = [call[0] for call in shop.calls[-2:]]
        assert last_two[0].remote == 8  # what syncd last saw
        assert last_two[1].remote == 3  # re-read from the conflict
        assert engine.metrics.drift.labels("web")._value.get() == 1


async def test_channel_drift_report_is_corrected(tmp_path: Path) -> None:
    async with pushing(tmp_path) as (engine, shop, _):
        await engine.apply([ev(E.COUNT, qty=10, location="lyon", connector="wms")])
        await until(lambda: shop.shown.get(("SKU-1", "")) == 8)
        await until(lambda: not engine.outbox.rows[("web", "SKU-1", "")].pending)
        shop.shown[("SKU-1", "")] = 50
        (v,) = await engine.apply([ev(E.CHANNEL_LEVEL, qty=50, location=None, connector="shop",
                                      channel="web", remote_location="")])
        assert v.outcome is Outcome.DRIFT
        await until(lambda: shop.shown.get(("SKU-1", "")) == 8)
        # reporting what was pushed is not drift
        (v,) = await engine.apply([ev(E.CHANNEL_LEVEL, qty=8, location=None, connector="shop",
                                      channel="web", remote_location="")])
        assert v.outcome is Outcome.APPLIED


async def test_reconciliation_finds_and_corrects_drift(tmp_path: Path) -> None:
    async with pushing(tmp_path) as (engine, shop, pusher):
        await engine.apply(counts(20))  # type: ignore[arg-type]
        await until(lambda: len(shop.shown) == 20)
        await until(lambda: engine.outbox.pending_count("web") == 0)
        shop.shown[("S3", "")] = 0
        shop.shown[("S7", "")] = 99
        assert await pusher.reconcile() == 2
        await until(lambda: shop.shown[("S3", "")] == 8 and shop.shown[("S7", "")] == 8)
        assert await pusher.reconcile() == 0


async def test_pending_pushes_survive_a_restart(tmp_path: Path) -> None:
    shop = FakeChannel()
    shop.gate = asyncio.Event()
    async with pushing(tmp_path, shop) as (engine, _, _):
        await engine.apply(counts(30))  # type: ignore[arg-type]
    # the channel never answered; a new process pushes what is pending
    shop2 = FakeChannel()
    async with pushing(tmp_path, shop2) as (engine, _, _):
        await until(lambda: len(shop2.shown) == 30)
        assert set(shop2.shown.values()) == {8}

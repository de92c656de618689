"""Clock skew: what the watermark rule (DESIGN.md, conflict rule 3) does with events from a till
whose clock runs 10 minutes ahead of, or behind, the others. Run against the real engine on
SQLite; RELIABILITY.md explains each case. syncd trusts `occurred_at`: it does not compare it
with its own clock.

Also here: the ledger order of a batch that mixes a command (a hold) with stock events.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from syncd.ledger import replay
from syncd.model import Event, EventType, Outcome
from syncd.store import repository as repo
from syncd.store import sqlite_url
from tests.core import T0, ev, retailer, running_engine

MIN = 60 * 1_000_000
SKEW = 10 * MIN


def on_hand(engine: object, sku: str = "SKU-1") -> int:
    return engine.ledger.levels[(sku, "paris")].on_hand  # type: ignore[attr-defined]


async def outcomes(engine: object, *events: Event) -> list[Outcome]:
    verdicts = await engine.apply(list(events))  # type: ignore[attr-defined]
    return [v.outcome for v in verdicts]


async def test_a_count_stamped_in_the_future_hides_the_real_sales_before_its_stamp(
    tmp_path: Path,
) -> None:
    """Till A runs 10 min fast. Its count (50, really taken at T0) is stamped T0+10m, so the
    watermark jumps 10 minutes ahead: sales that really happen at T0+1m..T0+9m on a till with a
    correct clock are `stale` (taken to be inside the count) and on-hand stays 50. Sales stamped
    after T0+10m apply again."""
    async with running_engine(sqlite_url(tmp_path)) as engine:
        assert await outcomes(engine, ev(EventType.COUNT, qty=50, at=T0 + SKEW)) == [
            Outcome.APPLIED]
        real = [ev(EventType.SALE, qty=1, at=T0 + k * MIN) for k in range(1, 10)]
        assert await outcomes(engine, *real) == [Outcome.STALE] * 9
        assert on_hand(engine) == 50  # 9 units really sold, not deducted
        later = ev(EventType.SALE, qty=1, at=T0 + SKEW + MIN)
        assert await outcomes(engine, later) == [Outcome.APPLIED]
        assert on_hand(engine) == 49


async def test_a_sale_stamped_in_the_future_is_deducted_again_after_a_correct_count(
    tmp_path: Path,
) -> None:
    """Till A (10 min fast) sells 1 at T0, stamped T0+10m. A correct count at T0+1m already
    reflects that sale (49), but the rule keeps every delta stamped after a count: the future
    sale is in the count's tail and is deducted a second time (48)."""
    async with running_engine(sqlite_url(tmp_path)) as engine:
        await outcomes(engine, ev(EventType.COUNT, qty=50, at=T0 - MIN))
        assert await outcomes(engine, ev(EventType.SALE, qty=1, at=T0 + SKEW)) == [
            Outcome.APPLIED]
        assert await outcomes(engine, ev(EventType.COUNT, qty=49, at=T0 + MIN)) == [
            Outcome.APPLIED]
        assert on_hand(engine) == 48


async def test_deltas_from_a_slow_clock_are_stale_after_a_correct_count(tmp_path: Path) -> None:
    """Till B runs 10 min slow. After a correct count at T0, B's sales that really happen at
    T0+1m..T0+9m are stamped before T0: `stale`, never deducted. So is B's own count (older
    than the watermark)."""
    async with running_engine(sqlite_url(tmp_path)) as engine:
        await outcomes(engine, ev(EventType.COUNT, qty=50, at=T0))
        slow = [ev(EventType.SALE, qty=1, at=T0 + k * MIN - SKEW) for k in range(1, 10)]
        assert await outcomes(engine, *slow) == [Outcome.STALE] * 9
        assert on_hand(engine) == 50
        assert await outcomes(engine, ev(EventType.COUNT, qty=41, at=T0 + 9 * MIN - SKEW)) == [
            Outcome.STALE]
        # once B's stamps pass the watermark its deltas apply again
        assert await outcomes(engine, ev(EventType.SALE, qty=1, at=T0 + 11 * MIN - SKEW)) == [
            Outcome.APPLIED]
        assert on_hand(engine) == 49


async def test_without_counts_skew_only_reorders_and_changes_nothing(tmp_path: Path) -> None:
    """Deltas alone commute: with no count in between, a skewed clock changes no total."""
    async with running_engine(sqlite_url(tmp_path)) as engine:
        await outcomes(engine, ev(EventType.COUNT, qty=100, at=T0 - SKEW - MIN))
        evs = [ev(EventType.SALE, qty=1, at=T0 + SKEW), ev(EventType.SALE, qty=2, at=T0 - SKEW),
               ev(EventType.RECEIPT, qty=5, at=T0)]
        assert await outcomes(engine, *evs) == [Outcome.APPLIED] * 3
        assert on_hand(engine) == 102


async def test_replay_of_a_batch_mixing_a_hold_and_a_sale_equals_the_state(
    tmp_path: Path,
) -> None:
    async with running_engine(sqlite_url(tmp_path)) as engine:
        await engine.apply([ev(EventType.COUNT, qty=2, event_id="c")])  # available 1
        now = engine.clock()
        hold = Event(connector="api", event_id="hold:H1:create", type=EventType.HOLD_CREATE,
                     sku="SKU-1", qty=1, occurred_at=now, location="paris", hold_id="H1",
                     order_id="W-1", expires_at=now + 3600 * 1_000_000)
        sale = ev(EventType.SALE, qty=1, at=now, event_id="s")
        # queued together: one batch, the hold first
        got = await asyncio.gather(engine.apply([hold]), engine.apply([sale]))
        assert [v.outcome for (v,) in got] == [Outcome.APPLIED, Outcome.APPLIED]
        async with engine.db.connect() as conn:
            log = await repo.iter_events(conn)
        state = {r.res_id: r.state.value for r in engine.ledger.reservations.values()}
    replayed = replay(retailer(), [(e, at) for e, at, _ in log])
    assert {r.res_id: r.state.value for r in replayed.reservations.values()} == state

"""A channel that goes away and comes back, and a channel that throttles: a real `syncd run` with
POS traffic over a real mosquitto and the Shopify connector on the simulator.

- Outage: the simulator answers 503 (or refuses connections) for a stretch compressed to a few
  seconds while the tills keep selling. On recovery Shopify receives ONE current value per SKU
  (coalescing, counted by `syncd_outbox_coalesced_total`), the outbox never holds more than one
  row per SKU, and the daemon's memory stays flat.
- Throttle storm: another app keeps emptying the cost bucket. Every push still lands with the
  right figure, and the connector waits instead of hammering Shopify (calls per second bounded).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from connectors.shopify.sim import create_app
from tests.reliability.helpers import (
    DaemonProc,
    Publisher,
    RecordingSim,
    iso,
    now_us,
    record,
    retail_config,
    sqlite_rows,
    until,
)
from tests.servers import MosquittoServer, free_port

N_SKUS = 150
STOCK = 1_000
SKUS = [f"O{i:03d}" for i in range(N_SKUS)]


@contextlib.asynccontextmanager
async def serve(sim: RecordingSim, port: int) -> AsyncIterator[web.AppRunner]:
    """The simulator on a fixed port, so that it can be taken down and brought back."""
    runner = web.AppRunner(create_app(sim), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield runner
    finally:
        await runner.cleanup()


class Rig:
    def __init__(self, d: DaemonProc, sim: RecordingSim, till: Publisher, state: Path,
                 skus: list[str]) -> None:
        self.skus = skus
        self.d = d
        self.sim = sim
        self.till = till
        self.state = state
        self.sold = 0

    async def pending(self) -> int:
        _, st = await self.d.call("GET", "/v1/status")
        return int(st["channels"]["webshop"]["pending"])

    def committed_sales(self) -> int:
        return int(sqlite_rows(self.state, "SELECT count(*) FROM events WHERE type = 'sale'")[0][0])

    async def sell(self, rounds: int) -> None:
        """`rounds` sales of every SKU, 10 SKUs per message."""
        msgs = []
        for r in range(rounds):
            for i in range(0, len(self.skus), 10):
                evs = [{"event_id": f"S-{self.sold + r}-{sku}", "type": "sale", "sku": sku,
                        "qty": 1, "occurred_at": iso(now_us())} for sku in self.skus[i : i + 10]]
                msgs.append({"events": evs})
        self.sold += rounds
        await self.till.send(msgs, pause=0.002)

    def want(self) -> int:
        return STOCK - self.sold  # paris only (no safety stock), lyon empty

    def shows_everything(self) -> bool:
        return all(self.sim.available(s) == self.want() for s in self.skus)


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, broker: MosquittoServer, sim: RecordingSim,
              shop_port: int, skus: list[str] = SKUS) -> AsyncIterator[Rig]:
    port = free_port()
    state = tmp_path / "state"
    config = tmp_path / "syncd.toml"
    config.write_text(retail_config(state, port, mqtt_url=broker.url,
                                    shop_url=f"http://127.0.0.1:{shop_port}"))
    sim.add_items(skus, available=0)
    d = DaemonProc(config, port)
    try:
        await d.wait_ready()
        r = Rig(d, sim, Publisher(broker.url), state, skus)
        await r.till.send([{"events": [
            {"event_id": f"C-{s}", "type": "count", "sku": s, "qty": STOCK,
             "occurred_at": iso(now_us())} for s in skus]}])
        await until(r.shows_everything, "the first full sync", within=60)
        yield r
    finally:
        code = await d.stop()
        assert code == 0, d.tail()


@pytest.mark.parametrize("mode", ["http-503", "connection-refused"])
async def test_a_channel_outage_ends_with_one_current_value_per_sku(
    tmp_path: Path, mosquitto: MosquittoServer, mode: str, request: pytest.FixtureRequest
) -> None:
    sim = RecordingSim()
    shop_port = free_port()
    outage_s = 3.0
    shop = contextlib.AsyncExitStack()
    await shop.enter_async_context(serve(sim, shop_port))
    try:
        async with rig(tmp_path, mosquitto, sim, shop_port) as r:
            coalesced_before = await r.d.metric("syncd_outbox_coalesced_total")
            rss_before = r.d.rss_kib()
            calls_before = sim.calls
            # the channel goes away
            if mode == "http-503":
                sim.outage(503)
            else:
                await shop.aclose()
            down_at = time.monotonic()
            peak_pending = 0
            sold_during = 0
            while time.monotonic() - down_at < outage_s:
                await r.sell(2)
                sold_during += 2 * len(r.skus)
                peak_pending = max(peak_pending, await r.pending())
            await until(lambda: r.committed_sales() == r.sold * len(r.skus), "sales committed")
            peak_pending = max(peak_pending, await r.pending())
            rss_during = r.d.rss_kib()
            attempts_during = sim.calls - calls_before
            # it comes back
            recovered_at = time.monotonic()
            if mode == "http-503":
                sim.recover()
            else:
                await shop.enter_async_context(serve(sim, shop_port))
            catch_up = await until(r.shows_everything, "Shopify caught up", within=90)
            await until(lambda: _zero(r), "outbox empty", within=30)
            per_sku = sim.applied_since(recovered_at)
            coalesced = await r.d.metric("syncd_outbox_coalesced_total") - coalesced_before
            rss_after = r.d.rss_kib()
            outbox_rows = sqlite_rows(r.state, "SELECT count(*) FROM outbox WHERE channel = "
                                               "'webshop'")[0][0]
    finally:
        await shop.aclose()
    record(f"outage_{mode}", f"python3 -m pytest -q '{request.node.nodeid}'",
           outage_s=round(recovered_at - down_at, 1), skus=N_SKUS, sales_during=sold_during,
           catch_up_s=round(catch_up, 2), pushes_per_sku_after=max(per_sku.values()),
           coalesced=int(coalesced), peak_outbox_pending=peak_pending,
           outbox_rows=outbox_rows, calls_during_outage=attempts_during,
           rss_kib_before=rss_before, rss_kib_during=rss_during, rss_kib_after=rss_after)
    # one current value per SKU, not the history
    assert set(per_sku) == set(SKUS)
    assert max(per_sku.values()) == 1, per_sku.most_common(3)
    assert coalesced > 0
    assert peak_pending <= N_SKUS
    assert outbox_rows == N_SKUS
    # the pusher backed off instead of hammering a channel that was down
    assert attempts_during < 200, attempts_during
    # memory stays flat (generous bound: the interpreter's own noise is a few MB)
    assert rss_after - rss_before < 40_000, (rss_before, rss_after)


async def _zero(r: Rig) -> bool:
    return await r.pending() == 0


async def test_a_throttle_storm_loses_no_push_and_never_spins(
    tmp_path: Path, mosquitto: MosquittoServer, request: pytest.FixtureRequest
) -> None:
    # a small bucket that another app of the shop keeps emptying
    sim = RecordingSim(maximum_available=200, restore_rate=50)
    shop_port = free_port()
    async with serve(sim, shop_port), rig(tmp_path, mosquitto, sim, shop_port,
                                          SKUS[:40]) as r:
        storm_s = 3.0
        stop = asyncio.Event()
        throttled_before = sim.throttled

        async def other_app() -> None:
            while not stop.is_set():
                sim.drain(0)
                await asyncio.sleep(0.25)

        drainer = asyncio.create_task(other_app())
        start = time.monotonic()
        try:
            while time.monotonic() - start < storm_s:
                await r.sell(1)
                await asyncio.sleep(0.2)
        finally:
            stop.set()
            await drainer
        end = time.monotonic()
        calls = sim.calls_between(start, end)
        throttled = sim.throttled - throttled_before
        catch_up = await until(r.shows_everything, "every push landed", within=90)
        await until(lambda: _zero(r), "outbox empty", within=30)
    per_second = calls / (end - start)
    record("throttle_storm", f"python3 -m pytest -q '{request.node.nodeid}'",
           storm_s=round(end - start, 1), calls=calls, calls_per_s=round(per_second, 1),
           throttled_answers=throttled, catch_up_s=round(catch_up, 2))
    assert per_second < 20, (calls, end - start)  # a tight loop would be hundreds per second

"""An Amazon 429 storm: a real `syncd run` pushing to the SP-API simulator while another
application of the same seller keeps emptying the `patchListingsItem` bucket.

Amazon answers such calls 429 `QuotaExceeded` (no usage-plan header). The connector waits for its
token bucket and retries with backoff; nothing is lost (every listing ends at the figure the
ledger publishes, the outbox drains) and nothing spins (calls per second during the storm stay
near the documented rate of 5/s, far from a tight loop's hundreds).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from connectors.amazon_sp.sim import AmazonSpSim, running_sim
from tests.reliability.helpers import DaemonProc, daemon_section, iso, now_us, record, until
from tests.servers import free_port

SKUS = [f"A{i:02d}" for i in range(30)]  # under the feed threshold: one PATCH per SKU
STOCK = 500


def config(state: Path, port: int, url: str, sim: AmazonSpSim) -> str:
    return daemon_section(state, port) + f"""
[locations.lyon]
kind = "warehouse"
authority = "wms"

[connectors.wms]
type = "http_source"

[connectors.amz]
type = "amazon_sp"
endpoint = "{url}"
token_url = "{url}/auth/o2/token"
client_id = "{sim.client_id}"
client_secret = "env:AMZ_SECRET"
refresh_token = "env:AMZ_REFRESH"
seller_id = "{sim.seller_id}"
marketplace_ids = {json.dumps(sim.marketplace_ids)}
feed_threshold = 1000
timeout = "3s"

[channels.amazon]
connector = "amz"
sells_from = ["lyon"]
"""


async def test_an_amazon_429_storm_loses_no_push_and_never_spins(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    sim = AmazonSpSim(feed_interval=0.5, feed_queue_delay=0.05, feed_process_delay=0.1)
    sim.add_listings(SKUS, quantity=0)
    port = free_port()
    async with running_sim(sim) as url:
        path = tmp_path / "syncd.toml"
        path.write_text(config(tmp_path / "state", port, url, sim))
        d = DaemonProc(path, port, env={"AMZ_SECRET": sim.client_secret,
                                        "AMZ_REFRESH": sim.refresh_token})
        sent = 0

        async def count(qty: int) -> None:
            nonlocal sent
            sent += 1
            status, body = await d.call("POST", "/v1/events", {"events": [
                {"connector": "wms", "location": "lyon", "event_id": f"c{sent}-{s}",
                 "type": "count", "sku": s, "qty": qty, "occurred_at": iso(now_us())}
                for s in SKUS]})
            assert status == 200, body

        def shows(qty: int) -> bool:
            return all(sim.quantity(s) == qty for s in SKUS)

        async def outbox_empty() -> bool:
            _, st = await d.call("GET", "/v1/status")
            return int(st["channels"]["amazon"]["pending"]) == 0

        try:
            await d.wait_ready()
            await count(STOCK)
            await until(lambda: shows(STOCK), "the first sync", within=60)
            calls_before, throttled_before = sim.calls_by_operation["patchListingsItem"], \
                sim.throttled_by_operation["patchListingsItem"]
            stop = asyncio.Event()

            async def other_app() -> None:
                while not stop.is_set():
                    sim.drain("patchListingsItem")
                    await asyncio.sleep(0.3)

            drainer = asyncio.create_task(other_app())
            start = time.monotonic()
            qty = STOCK
            try:
                while time.monotonic() - start < 4.0:
                    qty -= 1
                    await count(qty)
                    await asyncio.sleep(0.25)
            finally:
                stop.set()
                await drainer
            storm_s = time.monotonic() - start
            calls = sim.calls_by_operation["patchListingsItem"] - calls_before
            throttled = sim.throttled_by_operation["patchListingsItem"] - throttled_before
            catch_up = await until(lambda: shows(qty), "every listing at the last count",
                                   within=90)
            await until(outbox_empty, "the outbox drained", within=30)
        finally:
            code = await d.stop()
        assert code == 0, d.tail()
    per_second = calls / storm_s
    record("amazon_throttle_storm", f"python3 -m pytest -q '{request.node.nodeid}'",
           storm_s=round(storm_s, 1), skus=len(SKUS), counts_posted=sent, patch_calls=calls,
           calls_per_s=round(per_second, 1), throttled_answers=throttled,
           catch_up_s=round(catch_up, 2))
    assert throttled > 0  # the storm was real
    assert per_second < 15, (calls, storm_s)  # the documented rate is 5/s; a spin is hundreds

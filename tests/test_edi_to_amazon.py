"""End to end through the daemon: a warehouse's 10,000-SKU X12 846 file dropped in the EDI inbox
ends up as Amazon availability through one JSON_LISTINGS_FEED (the simulator of SP-API)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from connectors.amazon_sp.sim import AmazonSpSim, running_sim
from syncd.app import Daemon
from syncd.config import parse_config
from syncd.demo.traffic import x12_846
from syncd.sdnotify import Notifier
from tests.servers import free_port

SKUS = 10_000


def test_a_10000_sku_846_reaches_amazon_through_one_feed(tmp_path: Path) -> None:
    asyncio.run(_run(tmp_path))


async def _run(tmp_path: Path) -> None:
    sim = AmazonSpSim(feed_interval=0.2, feed_queue_delay=0.05, feed_process_delay=0.2)
    skus = [f"SKU-{i:05d}" for i in range(SKUS)]
    sim.add_listings(skus, quantity=0)
    inbox = tmp_path / "inbox"
    async with running_sim(sim) as url:
        cfg = parse_config(f"""
[daemon]
state_dir = "{tmp_path / 'state'}"
http_listen = "127.0.0.1:{free_port()}"

[locations.lyon-dc]
kind = "warehouse"
authority = "wms"

[connectors.wms]
type = "edi_inventory"
inbox = "{inbox}"
locations = {{ "WH001" = "lyon-dc" }}
poll_every = "100ms"
settle = "100ms"

[connectors.amz]
type = "amazon_sp"
endpoint = "{url}"
token_url = "{url}/auth/o2/token"
client_id = "{sim.client_id}"
client_secret = "env:AMZ_SECRET"
refresh_token = "env:AMZ_REFRESH"
seller_id = "{sim.seller_id}"
marketplace_ids = {json.dumps(sim.marketplace_ids)}
feed_threshold = 500
feed_poll_every = "100ms"
feed_min_interval = "1s"

[channels.amazon]
connector = "amz"
sells_from = ["lyon-dc"]
""", environ={"AMZ_SECRET": sim.client_secret,
                                   "AMZ_REFRESH": sim.refresh_token})
        daemon = Daemon(cfg, registry=CollectorRegistry(), notifier=Notifier(None))
        await daemon.start()
        try:
            lines = [(sku, (i * 7) % 50 + 1) for i, sku in enumerate(skus)]
            tmp = inbox / ".846.tmp"
            tmp.write_text(x12_846("WH001", 42, lines))
            started = time.perf_counter()
            tmp.rename(inbox / "inventory-846.edi")
            deadline = started + 120
            while any(sim.listings.get(sku) != qty for sku, qty in lines):
                assert time.perf_counter() < deadline, "Amazon never showed the file's stock"
                await asyncio.sleep(0.1)
            elapsed = time.perf_counter() - started
        finally:
            await daemon.shutdown()
    assert sim.feeds_created == 1  # one feed, not 10,000 PATCHes
    assert sim.patch_calls == 0
    assert (inbox / "processed" / "inventory-846.edi").exists()
    print(f"\n10,000-SKU 846 -> Amazon: {elapsed:.2f} s from the file landing to every SKU "
          f"shown by Amazon; {sim.feeds_created} feed, {sim.calls} SP-API calls")

"""End to end with all three webshops at once: a real mosquitto, the real daemon
(`syncd.app.Daemon` from a TOML configuration, in-process), the Shopify and WooCommerce simulators
on loopback HTTP servers, and a real Vendure 3.7.3 (`tests/vendure_server.py`).

The retailer: the Paris store (authority: its tills, over MQTT; safety stock 1) and the Lyon
warehouse (authority: the WMS, through `POST /v1/events`). Three channels sell from both, in that
order: `shopify` (one pooled figure, channel safety stock 2), `woo` (pooled; one SKU is a
variation of a variable product) and `vendure` (per stock location: on-hand less the other
channels' reservations, because Vendure subtracts its own allocations itself).

Shown: a store sale published over MQTT reaches Shopify, WooCommerce and Vendure; a signed Shopify
`orders/create` becomes an order reservation that lowers WooCommerce's and Vendure's figures too,
and `orders/cancelled` gives the units back; a hand edit on Shopify reported by
`inventory_levels/update` is put back; bad webhooks (wrong or missing signature, a tampered body,
malformed JSON, a signed body that is not an order) are answered 401 / 400 / dead-lettered and
change nothing: the same reservations, the same figures on all three channels, the same number of
events in the ledger. An order for a SKU syncd has never heard of is dead-lettered and changes
nothing else.

Every expected figure is computed here from the counts, the sale and the orders (`expected`), and
compared with what each webshop shows (read through its own API) *and* with what the daemon says
it pushed (`GET /v1/stock/{sku}`).
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
from prometheus_client import CollectorRegistry

from connectors.shopify.mapping import sign
from connectors.shopify.sim import ShopifySim
from connectors.shopify.sim import running_sim as running_shopify
from connectors.woocommerce.sim import WooSim
from connectors.woocommerce.sim import running_sim as running_woo
from syncd.app import Daemon
from syncd.config import parse_config
from syncd.sdnotify import Notifier
from tests.servers import MosquittoServer, free_port
from tests.vendure_server import SYNCD_PASSWORD, SYNCD_USER, VendureServer

API_TOKEN = "e2e-api-token"
SHOPIFY_TOKEN = "shpat_e2e"
SHOPIFY_SECRET = "whsec-shopify-e2e"
WC_KEY = "ck_e2e"
WC_SECRET = "cs_e2e"
WC_HOOK_SECRET = "whsec-woocommerce-e2e"
SHOPIFY_LOCATION = "gid://shopify/Location/1"  # where the pooled figure is set
PARIS_SAFETY = 1  # locations.paris.safety_stock
SHOPIFY_SAFETY = 2  # channels.shopify.safety_stock
WITHIN = 30.0  # seconds any figure has to reach every webshop


# -- the arithmetic ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Shown:
    """One SKU's figure on each webshop."""

    shopify: int | None  # `available` at the pooled location
    woo: int | None  # `stock_quantity`
    vendure_lyon: int | None  # stockOnHand per stock location
    vendure_paris: int | None


def expected(lyon: int, paris: int, reserved_lyon: int = 0, reserved_paris: int = 0) -> Shown:
    """DESIGN.md's availability, written out for this retailer. Every reservation here is a
    Shopify order, hence foreign to Vendure: Vendure is sent on-hand less it."""
    avail_lyon = lyon - reserved_lyon
    avail_paris = paris - reserved_paris - PARIS_SAFETY
    pool = max(0, avail_lyon) + max(0, avail_paris)
    return Shown(
        shopify=max(0, pool - SHOPIFY_SAFETY),
        woo=pool,
        vendure_lyon=max(0, lyon - reserved_lyon),
        vendure_paris=max(0, paris - reserved_paris),
    )


def test_the_expected_figures_follow_the_design() -> None:
    # Lyon 10, Paris 5 (1 kept back): the pool is 14; Shopify keeps 2 back; Vendure gets on-hand
    assert expected(10, 5) == Shown(12, 14, 10, 5)
    # 3 reserved at Lyon by a Shopify order: the pool loses 3, Vendure's Lyon too
    assert expected(10, 3, reserved_lyon=3) == Shown(7, 9, 7, 3)
    # an oversold store counts 0 in the pool, never less
    assert expected(0, -2) == Shown(0, 0, 0, 0)


# -- the rig -------------------------------------------------------------------------------------


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def until(
    what: str, probe: Callable[[], Awaitable[Any]], want: Any, within: float = WITHIN
) -> Any:
    """Poll `probe()` until it returns `want`; fail with the last value seen after `within`."""
    deadline = time.monotonic() + within
    while True:
        got = await probe()
        if got == want:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still {got!r} after {within:g}s, wanted {want!r}")
        await asyncio.sleep(0.05)


@dataclass
class Rig:
    daemon: Daemon
    base: str
    http: aiohttp.ClientSession
    broker: MosquittoServer
    shopify: ShopifySim
    woo: WooSim
    vendure: VendureServer
    variants: dict[str, str]  # SKU -> Vendure variant id
    db_path: Path
    till_seq: int = 0

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_TOKEN}"}

    @property
    def shopify_hook(self) -> str:
        return f"{self.base}/webhooks/shopify"

    @property
    def woo_hook(self) -> str:
        return f"{self.base}/webhooks/woo"

    # -- what goes in ---------------------------------------------------------------------------

    async def till(self, events: Sequence[tuple[str, str, int, datetime]]) -> None:
        """Paris' till T1 publishes (type, sku, qty, occurred_at) events in one QoS 1 message, as
        the POS protocol says: `{prefix}/pos/{location}/events`, numbered by `seq`."""
        out: list[dict[str, Any]] = []
        for typ, sku, qty, at in events:
            self.till_seq += 1
            out.append({"event_id": f"T1-{self.till_seq:06d}", "seq": self.till_seq,
                        "source": "T1", "type": typ, "sku": sku, "qty": qty,
                        "occurred_at": iso(at)})
        host, port = self.broker.url.removeprefix("mqtt://").split(":")
        async with aiomqtt.Client(host, int(port), identifier=f"till-{uuid.uuid4().hex[:8]}",
                                  protocol=aiomqtt.ProtocolVersion.V5) as client:
            await client.publish("syncd/pos/paris/events", json.dumps({"events": out}), qos=1)

    async def wms(self, counts: Mapping[str, int], at: datetime) -> None:
        events = [{"connector": "wms", "event_id": f"WMS-{sku}-{iso(at)}", "type": "count",
                   "sku": sku, "qty": qty, "location": "lyon", "occurred_at": iso(at)}
                  for sku, qty in counts.items()]
        async with self.http.post(f"{self.base}/v1/events", json={"events": events},
                                  headers=self.auth) as resp:
            body = await resp.json()
            assert resp.status == 200, body
            assert {r["outcome"] for r in body["results"]} == {"applied"}, body

    @staticmethod
    def new_order_id() -> int:
        return 5_000_000_000 + uuid.uuid4().int % 1_000_000_000

    # -- what comes out -------------------------------------------------------------------------

    async def stock(self, sku: str) -> dict[str, Any]:
        async with self.http.get(f"{self.base}/v1/stock/{sku}", headers=self.auth) as resp:
            assert resp.status == 200
            body: dict[str, Any] = await resp.json()
            return body

    async def pushed(self, sku: str) -> Shown:
        """What the daemon says it published *and* had acknowledged on each webshop (None while
        a figure is pending, failed, or differs from what was pushed)."""
        channels = (await self.stock(sku))["channels"]

        def settled(entry: Mapping[str, Any] | None) -> int | None:
            if not entry or entry.get("state") != "ok" or entry["pushed"] != entry["published"]:
                return None
            qty: int = entry["published"]
            return qty

        vlocs = channels.get("vendure", {}).get("locations", {})
        return Shown(settled(channels.get("shopify")), settled(channels.get("woo")),
                     settled(vlocs.get("lyon")), settled(vlocs.get("paris")))

    async def shown(self, sku: str) -> Shown:
        """What each webshop shows, read through its own API (Vendure: the Admin API)."""
        on_hand = await asyncio.to_thread(self.vendure.on_hand, self.variants[sku])
        return Shown(self.shopify.available(sku, SHOPIFY_LOCATION), self.woo.stock(sku),
                     on_hand.get("lyon"), on_hand.get("paris"))

    async def reaches(self, figures: Mapping[str, Shown], what: str) -> None:
        """Every webshop shows `figures`, and the daemon says it pushed exactly those."""

        async def both() -> dict[str, tuple[Shown, Shown]]:
            return {sku: (await self.shown(sku), await self.pushed(sku)) for sku in figures}

        await until(what, both, {sku: (want, want) for sku, want in figures.items()})

    async def locations(self, sku: str) -> dict[str, dict[str, int]]:
        locs: dict[str, dict[str, int]] = (await self.stock(sku))["locations"]
        return locs

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        db = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10)
        try:
            return [tuple(row) for row in db.execute(sql).fetchall()]
        finally:
            db.close()

    def reservations(self) -> list[tuple[Any, ...]]:
        return self.query("SELECT res_id, sku, location, qty, state FROM reservations "
                          "ORDER BY res_id")

    def events(self) -> int:
        (n,) = self.query("SELECT count(*) FROM events")[0]
        return int(n)

    def dead_letters(self) -> list[tuple[Any, ...]]:
        return self.query("SELECT connector, origin, reason FROM dead_letters ORDER BY id")

    async def metric(self, name: str, channel: str) -> float:
        async with self.http.get(f"{self.base}/metrics") as resp:
            text = await resp.text()
        m = re.search(rf'^{name}\{{channel="{channel}"\}} (\S+)$', text, re.MULTILINE)
        return float(m.group(1)) if m else 0.0

    async def snapshot(self, skus: Sequence[str]) -> dict[str, Any]:
        """Everything a bad webhook must leave alone."""
        return {
            "events": self.events(),
            "reservations": self.reservations(),
            "shown": {sku: await self.shown(sku) for sku in skus},
            "stock": {sku: await self.stock(sku) for sku in skus},
            "pending": {ch: v["pending"] for ch, v in (await self.status())["channels"].items()},
        }

    async def status(self) -> dict[str, Any]:
        async with self.http.get(f"{self.base}/v1/status", headers=self.auth) as resp:
            body: dict[str, Any] = await resp.json()
            return body


def daemon_config(tmp_path: Path, port: int, broker: MosquittoServer, shop_url: str,
                  woo_url: str, server: VendureServer) -> str:
    stock_locations = ", ".join(f'"{k}" = "{server.locations[k]}"' for k in ("lyon", "paris"))
    return f"""
[daemon]
state_dir = "{tmp_path / 'state'}"
http_listen = "127.0.0.1:{port}"
api_token = "env:SYNCD_API_TOKEN"
reconcile_every = "10m"

[locations.paris]
kind = "store"
authority = "pos"
safety_stock = {PARIS_SAFETY}

[locations.lyon]
kind = "warehouse"
authority = "wms"

[connectors.pos]
type = "mqtt_pos"
url = "{broker.url}"
client_id = "syncd-e2e-{port}"

[connectors.wms]
type = "http_source"

[connectors.shopify]
type = "shopify"
shop_url = "{shop_url}"
access_token = "env:SHOPIFY_TOKEN"
webhook_secret = "env:SHOPIFY_WEBHOOK_SECRET"
location_id = "{SHOPIFY_LOCATION}"

[connectors.woo]
type = "woocommerce"
url = "{woo_url}"
consumer_key = "env:WC_KEY"
consumer_secret = "env:WC_SECRET"
webhook_secret = "env:WC_WEBHOOK_SECRET"
poll_every = "500ms"

[connectors.vendure]
type = "vendure"
admin_api_url = "{server.admin_url}"
username = "{SYNCD_USER}"
password = "env:VENDURE_PASSWORD"
channel_token = "{server.channel_token}"
stock_locations = {{ {stock_locations} }}
poll_every = "250ms"
order_lookback = "1m"

[channels.shopify]
connector = "shopify"
sells_from = ["lyon", "paris"]
safety_stock = {SHOPIFY_SAFETY}

[channels.woo]
connector = "woo"
sells_from = ["lyon", "paris"]

[channels.vendure]
connector = "vendure"
sells_from = ["lyon", "paris"]
"""


@asynccontextmanager
async def rig(
    tmp_path: Path,
    broker: MosquittoServer,
    server: VendureServer,
    skus: Sequence[str],
    variation: str,
) -> AsyncIterator[Rig]:
    """The same SKUs on the three webshops, all at 0 (on WooCommerce `variation` is the one
    variation of a variable product), and the daemon serving them, ready."""
    shopify = ShopifySim(access_token=SHOPIFY_TOKEN)
    for sku in skus:
        shopify.add_item(sku, available=0)
    woo = WooSim(consumer_key=WC_KEY, consumer_secret=WC_SECRET)
    for sku in skus:
        if sku == variation:
            woo.add_variable(None, {sku: 0}, name="Mug")
        else:
            woo.add_product(sku, 0)
    variants = {sku: await asyncio.to_thread(server.create_variant, sku) for sku in skus}
    port = free_port()
    async with running_shopify(shopify) as shop_url, running_woo(woo) as woo_url:
        cfg = parse_config(
            daemon_config(tmp_path, port, broker, shop_url, woo_url, server),
            environ={"SYNCD_API_TOKEN": API_TOKEN, "SHOPIFY_TOKEN": SHOPIFY_TOKEN,
                     "SHOPIFY_WEBHOOK_SECRET": SHOPIFY_SECRET, "WC_KEY": WC_KEY,
                     "WC_SECRET": WC_SECRET, "WC_WEBHOOK_SECRET": WC_HOOK_SECRET,
                     "VENDURE_PASSWORD": SYNCD_PASSWORD},
        )
        daemon = Daemon(cfg, registry=CollectorRegistry(), notifier=Notifier(None))
        await daemon.start()
        try:
            async with aiohttp.ClientSession() as http:
                r = Rig(daemon, f"http://127.0.0.1:{port}", http, broker, shopify, woo, server,
                        variants, tmp_path / "state" / "syncd.db")

                async def ready() -> int:
                    async with http.get(f"{r.base}/readyz") as resp:
                        return resp.status

                await until("/readyz", ready, 200)
                yield r
        finally:
            await daemon.shutdown()


# -- the tests -----------------------------------------------------------------------------------


async def test_all_three_webshops_follow_the_store_the_orders_and_refuse_bad_webhooks(
    tmp_path: Path, mosquitto: MosquittoServer, vendure: VendureServer
) -> None:
    tag = uuid.uuid4().hex[:8].upper()
    tee, mug, cap = f"E2E-TEE-{tag}", f"E2E-MUG-{tag}", f"E2E-CAP-{tag}"
    started = time.monotonic()
    now = datetime.now(UTC)
    async with rig(tmp_path, mosquitto, vendure, [tee, mug, cap], variation=mug) as r:
        # 1. counts: Lyon through the WMS (POST /v1/events), Paris through its till (MQTT)
        lyon = {tee: 10, mug: 4, cap: 0}
        paris = {tee: 5, mug: 3, cap: 2}
        await r.wms(lyon, now - timedelta(minutes=10))
        await r.till([("count", sku, qty, now - timedelta(minutes=10))
                      for sku, qty in paris.items()])
        figures = {sku: expected(lyon[sku], paris[sku]) for sku in lyon}
        assert figures == {tee: Shown(12, 14, 10, 5), mug: Shown(4, 6, 4, 3),
                           cap: Shown(0, 1, 0, 2)}
        await r.reaches(figures, "the initial counts")
        assert await r.locations(tee) == {
            "lyon": {"on_hand": 10, "reserved": 0, "available": 10},
            "paris": {"on_hand": 5, "reserved": 0, "available": 4},
        }
        # the WooCommerce figure of the mug is its variation's, and the parent is left alone
        parent = next(d for d in r.woo.products.values() if r.woo.id_of(mug) in d["variations"])
        assert parent["manage_stock"] is False and parent["stock_quantity"] is None

        # 2. a store sale over MQTT: 2 tees and 1 of the 2 caps leave the Paris store
        await r.till([("sale", tee, 2, now - timedelta(minutes=5)),
                      ("sale", cap, 1, now - timedelta(minutes=5))])
        paris[tee] -= 2
        paris[cap] -= 1
        figures = {sku: expected(lyon[sku], paris[sku]) for sku in lyon}
        assert figures == {tee: Shown(10, 12, 10, 3), mug: Shown(4, 6, 4, 3),
                           cap: Shown(0, 0, 0, 1)}
        await r.reaches(figures, "the store sale")
        assert (await r.locations(tee))["paris"] == {"on_hand": 3, "reserved": 0, "available": 2}

        # 3. a Shopify order (signed orders/create): reserved at Lyon, the first location of
        # `sells_from` that has enough; WooCommerce and Vendure lose those units too
        oid = r.new_order_id()
        order = r.shopify.order_payload(oid, [(tee, 2), (mug, 1), (tee, 1), (None, 1)])
        res = await r.shopify.send_webhook("orders/create", order, r.shopify_hook,
                                           SHOPIFY_SECRET, session=r.http)
        assert res.status == 200, res.body
        lines = [(f"order:shopify:{oid}:{sku}", sku, "lyon", qty, "active")
                 for sku, qty in ((tee, 3), (mug, 1))]
        assert r.reservations() == sorted(lines)
        reserved = {tee: 3, mug: 1, cap: 0}
        figures = {sku: expected(lyon[sku], paris[sku], reserved_lyon=reserved[sku])
                   for sku in lyon}
        assert figures == {tee: Shown(7, 9, 7, 3), mug: Shown(3, 5, 3, 3),
                           cap: Shown(0, 0, 0, 1)}
        await r.reaches(figures, "the Shopify order")
        assert (await r.locations(tee))["lyon"] == {"on_hand": 10, "reserved": 3, "available": 7}
        # Vendure was sent on-hand less Shopify's order, and allocates nothing of its own
        stock = await asyncio.to_thread(r.vendure.stock, r.variants[tee])
        assert (stock["lyon"], stock["paris"]) == ((7, 0), (3, 0))
        # Shopify delivers the same event again: a duplicate, nothing moves
        events = r.events()
        again = await r.shopify.send_webhook("orders/create", order, r.shopify_hook,
                                             SHOPIFY_SECRET, event_id=res.event_id,
                                             session=r.http)
        assert again.status == 200
        assert r.events() == events and r.reservations() == sorted(lines)

        # 4. the order is cancelled on Shopify: released at once, every webshop gets them back
        res = await r.shopify.send_webhook("orders/cancelled",
                                           r.shopify.cancelled_payload(order), r.shopify_hook,
                                           SHOPIFY_SECRET, session=r.http)
        assert res.status == 200, res.body
        assert r.reservations() == sorted((rid, sku, loc, qty, "cancelled")
                                          for rid, sku, loc, qty, _ in lines)
        figures = {sku: expected(lyon[sku], paris[sku]) for sku in lyon}
        await r.reaches(figures, "the cancellation")
        assert (await r.locations(tee))["lyon"]["reserved"] == 0

        # 5. hand-made drift: a merchant sets 40 tees in the Shopify admin, Shopify says so
        drift = await r.metric("syncd_drift_corrections_total", "shopify")
        r.shopify.set_available(tee, SHOPIFY_LOCATION, 40)
        res = await r.shopify.send_webhook("inventory_levels/update",
                                           r.shopify.level_payload(tee), r.shopify_hook,
                                           SHOPIFY_SECRET, session=r.http)
        assert res.status == 200, res.body
        await r.reaches(figures, "the drift correction")
        assert figures[tee].shopify == 10
        assert await r.metric("syncd_drift_corrections_total", "shopify") == drift + 1
        # a channel is not a source of truth: the ledger did not move
        assert await r.locations(tee) == {
            "lyon": {"on_hand": 10, "reserved": 0, "available": 10},
            "paris": {"on_hand": 3, "reserved": 0, "available": 2},
        }

        # 6. bad webhooks change nothing
        before = await r.snapshot([tee, mug, cap])
        dead = r.dead_letters()
        evil = r.shopify.order_payload(r.new_order_id(), [(tee, 9)])
        # signed with another secret, not signed at all, a body changed after signing: 401
        res = await r.shopify.send_webhook("orders/create", evil, r.shopify_hook,
                                           "not-the-secret", session=r.http)
        assert (res.status, json.loads(res.body)["error"]) == (401, "bad_signature")
        res = await r.shopify.send_webhook("orders/create", evil, r.shopify_hook,
                                           SHOPIFY_SECRET, signature="", session=r.http)
        assert res.status == 401
        tampered = json.dumps({**evil, "line_items": [{"sku": tee, "quantity": 50}]}).encode()
        res = await r.shopify.send_webhook(
            "orders/create", tampered, r.shopify_hook, SHOPIFY_SECRET,
            signature=sign(SHOPIFY_SECRET.encode(), json.dumps(evil).encode()), session=r.http)
        assert res.status == 401
        # WooCommerce's endpoint checks its own signature the same way
        wres = await r.woo.send_webhook("order.created", {"id": 1, "line_items": []},
                                        r.woo_hook, SHOPIFY_SECRET, session=r.http)
        assert (wres.status, json.loads(wres.body)["error"]) == (401, "bad_signature")
        # signed, but not JSON: 400
        res = await r.shopify.send_webhook("orders/create", b'{"id": 77, "line_items": [',
                                           r.shopify_hook, SHOPIFY_SECRET, session=r.http)
        assert (res.status, json.loads(res.body)["error"]) == (400, "malformed")
        # signed JSON that is not an order: acknowledged, kept as a dead letter for the operator
        res = await r.shopify.send_webhook("orders/create", {"id": 78}, r.shopify_hook,
                                           SHOPIFY_SECRET, session=r.http)
        assert res.status == 200, res.body
        assert r.dead_letters() == [*dead, ("shopify", "webhook orders/create",
                                            "orders/create: line_items is missing or not a list")]
        # every reply came after its commit, and a moved figure would be in the outbox (and so
        # in /v1/stock and /v1/status) from that commit on: nothing to wait for
        assert await r.snapshot([tee, mug, cap]) == before
    print(f"\nthree webshops end to end: {time.monotonic() - started:.1f}s")


async def test_a_shopify_order_for_an_unknown_sku_changes_nothing(
    tmp_path: Path, mosquitto: MosquittoServer, vendure: VendureServer
) -> None:
    tag = uuid.uuid4().hex[:8].upper()
    tee, mug = f"E2E-TEE-{tag}", f"E2E-MUG-{tag}"
    unknown = f"E2E-NOWHERE-{tag}"  # on no webshop, in no count: syncd has never heard of it
    now = datetime.now(UTC)
    async with rig(tmp_path, mosquitto, vendure, [tee, mug], variation=mug) as r:
        await r.wms({tee: 6, mug: 1}, now - timedelta(minutes=10))
        await r.till([("count", tee, 2, now - timedelta(minutes=10)),
                      ("count", mug, 0, now - timedelta(minutes=10))])
        figures = {tee: expected(6, 2), mug: expected(1, 0)}
        assert figures == {tee: Shown(5, 7, 6, 2), mug: Shown(0, 1, 1, 0)}
        await r.reaches(figures, "the initial counts")
        before = await r.snapshot([tee, mug])
        dead = r.dead_letters()
        # signed correctly and well-formed: only its SKU is wrong
        order = r.shopify.order_payload(r.new_order_id(), [(unknown, 1)])
        res = await r.shopify.send_webhook("orders/create", order, r.shopify_hook,
                                           SHOPIFY_SECRET, session=r.http)
        # the reply comes after the commit: whatever it did is visible now
        if res.status == 400:
            assert r.dead_letters() == dead
        else:
            assert res.status == 200, res.body
            assert len(r.dead_letters()) == len(dead) + 1
            assert r.dead_letters()[-1][0] == "shopify"
        assert r.reservations() == before["reservations"]
        assert r.events() == before["events"]
        assert await r.stock(unknown) == {"sku": unknown, "locations": {}, "channels": {}}
        assert await r.snapshot([tee, mug]) == before

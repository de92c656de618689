"""The demo's day of trade, seeded: store sales, returns and counts over MQTT, webshop orders
through signed Shopify webhooks, click-and-collect holds through the API, a warehouse EDI file,
and a webshop outage with its recovery."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from .services import Broker

__all__ = ["SQUARE_LOCATION", "SQUARE_STORE", "SquareTills", "Trade", "x12_846"]

STORES = ("paris-01", "lille-02")
SQUARE_STORE = "marseille-03"  # a store whose tills are Square (when the connector is installed)
SQUARE_LOCATION = "L-MARSEILLE"  # its Square location id


def _now() -> str:
    return datetime.now(UTC).isoformat()


def x12_846(sender: str, control: int, lines: list[tuple[str, int]]) -> str:
    """An ANSI X12 846 inventory advice, as a warehouse sends it."""
    d = datetime.now(UTC)
    seg = [
        "ST*846*0001", f"BIA*00*MM*INV{control}*{d:%Y%m%d}*{d:%H%M}",
        *[s for sku, qty in lines for s in (f"LIN**SK*{sku}", f"QTY*33*{qty}")],
    ]
    seg.append(f"SE*{len(seg) + 1}*0001")
    isa = (f"ISA*00*{'':10}*00*{'':10}*ZZ*{sender:<15}*ZZ*{'SYNCD':<15}*{d:%y%m%d}*{d:%H%M}"
           f"*U*00401*{control:09d}*0*P*>")
    gs = f"GS*IB*{sender}*SYNCD*{d:%Y%m%d}*{d:%H%M}*{control}*X*004010"
    return "~\n".join([isa, gs, *seg, f"GE*1*{control}", f"IEA*1*{control:09d}"]) + "~\n"


@dataclass
class SquareTills:
    """The Square store: its simulator, and how its webhooks reach syncd."""

    sim: Any  # connectors.square.sim.SquareSim
    hook_url: str  # syncd's /webhooks/square (also the subscription's notification URL)
    signature_key: str
    location_id: str
    store: str

    async def report(self, http: aiohttp.ClientSession, counts: list[tuple[str, int]]) -> int:
        """Set these counts in Square and deliver them as `inventory.count.updated` webhooks
        (≤ 100 counts each, as Square does); returns the last HTTP status."""
        status = 0
        for i in range(0, len(counts), 100):
            payloads = [self.sim.set_count(sku, self.location_id, qty)
                        for sku, qty in counts[i : i + 100]]
            res = await self.sim.send_webhook(self.hook_url, self.hook_url, self.signature_key,
                                              payloads, session=http)
            status = res.status
        return status


@dataclass
class Stats:
    sales: int = 0
    returns: int = 0
    counts: int = 0
    orders: int = 0
    turned_away: int = 0  # customers who saw 0 on the webshop: oversells prevented
    cancelled: int = 0
    holds: int = 0
    holds_refused: int = 0
    collected: int = 0
    left_to_expire: int = 0
    edi_files: int = 0
    outage: str = "not yet"
    log: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        self.log.append(f"{datetime.now():%H:%M:%S} {text}")
        del self.log[:-6]


class Trade:
    def __init__(self, *, base: str, http: aiohttp.ClientSession, broker: Broker | None,
                 sim: Any, shop_secret: str, edi_inbox: Path | None, skus: int, seed: int,
                 duration: float, marketplaces: dict[str, Any] | None = None,
                 square: SquareTills | None = None) -> None:
        self.base = base
        self.http = http
        self.broker = broker
        self.sim = sim
        self.shop_secret = shop_secret
        self.inbox = edi_inbox
        self.skus = [f"SKU-{i:04d}" for i in range(skus)]
        self.rnd = random.Random(seed)
        self.duration = duration
        self.stats = Stats()
        self.marketplaces = marketplaces or {}
        self.square = square
        self._seq = 0
        self._orders: list[dict[str, Any]] = []
        # what is physically on each store's shelves: a store only sells what it has
        self.shelf: dict[tuple[str, str], int] = {}

    # -- sources --------------------------------------------------------------------------------

    async def _store_events(self, mqtt: Any, store: str, events: list[dict[str, Any]]) -> None:
        for e in events:
            self._seq += 1
            e.update(event_id=f"{store}-T1-{self._seq:07d}", seq=self._seq, source=f"{store}-T1",
                     occurred_at=_now())
        if mqtt is not None:
            await mqtt.publish(f"syncd/pos/{store}/events", json.dumps({"events": events}),
                               qos=1)
        else:
            body = {"events": [{**e, "connector": "pos", "location": store} for e in events]}
            async with self.http.post(f"{self.base}/v1/events", json=body) as resp:
                await resp.read()

    async def _opening_stock(self, mqtt: Any) -> None:
        lines = [(sku, self.rnd.randint(0, 12)) for sku in self.skus]
        if self.inbox is not None:
            tmp = self.inbox / ".opening.tmp"
            tmp.write_text(x12_846("WH001", 1, lines))
            tmp.rename(self.inbox / "opening-846.edi")  # renamed into place: never half-read
            self.stats.edi_files += 1
            self.stats.note("warehouse EDI 846 dropped in the inbox")
        else:
            body = {"events": [{"connector": "wms", "location": "lyon-dc", "event_id": f"open-{s}",
                                "type": "count", "sku": s, "qty": q, "occurred_at": _now()}
                               for s, q in lines]}
            async with self.http.post(f"{self.base}/v1/events", json=body) as resp:
                await resp.read()
        for store in STORES:
            for sku in self.skus:
                self.shelf[(store, sku)] = self.rnd.randint(0, 6)
            await self._store_events(mqtt, store, [
                {"type": "count", "sku": s, "qty": self.shelf[(store, s)]} for s in self.skus])
            self.stats.counts += len(self.skus)
        if self.square is not None:
            store = self.square.store
            for sku in self.skus:
                self.shelf[(store, sku)] = self.rnd.randint(0, 6)
            await self._square_report([(s, self.shelf[(store, s)]) for s in self.skus])
            self.stats.counts += len(self.skus)
            self.stats.note(f"Square tills of {store} reported their counts (webhooks)")

    async def _square_report(self, counts: list[tuple[str, int]]) -> None:
        assert self.square is not None
        try:
            status = await self.square.report(self.http, counts)
        except aiohttp.ClientError as exc:
            self.stats.note(f"Square webhook failed: {exc}")
            return
        if status != 200:
            self.stats.note(f"Square webhook answered {status}")

    async def _square_tick(self) -> None:
        """A sale at the Square store: Square's count drops, its webhook tells syncd."""
        if self.square is None:
            return
        sku = self.rnd.choice(self.skus)
        key = (self.square.store, sku)
        if self.shelf[key] <= 0:
            return
        self.shelf[key] -= 1
        self.stats.sales += 1
        await self._square_report([(sku, self.shelf[key])])

    async def _store_tick(self, mqtt: Any) -> None:
        store = self.rnd.choice(STORES)
        events = []
        for _ in range(self.rnd.randint(1, 2)):
            r = self.rnd.random()
            sku = self.rnd.choice(self.skus)
            key = (store, sku)
            if r < 0.8 and self.shelf[key] > 0:
                self.shelf[key] -= 1
                events.append({"type": "sale", "sku": sku, "qty": 1})
                self.stats.sales += 1
            elif r < 0.88:
                self.shelf[key] += 1
                events.append({"type": "return", "sku": sku, "qty": 1})
                self.stats.returns += 1
            elif r < 0.95 and self.shelf[key] < 2:
                self.shelf[key] += 6
                events.append({"type": "receipt", "sku": sku, "qty": 6})
            else:
                events.append({"type": "count", "sku": sku, "qty": self.shelf[key]})
                self.stats.counts += 1
        if not events:
            return
        await self._store_events(mqtt, store, events)

    async def _webshop_tick(self) -> None:
        if self.sim is None:
            return
        r = self.rnd.random()
        if r < 0.15 and self._orders:
            order = self._orders.pop(self.rnd.randrange(len(self._orders)))
            await self._webhook("orders/cancelled", self.sim.cancelled_payload(order))
            self.stats.cancelled += 1
            return
        sku = self.rnd.choice(self.skus)
        shown = self.sim.available(sku) or 0
        if shown <= 0:
            self.stats.turned_away += 1  # the webshop said "sold out": no oversell
            return
        order = self.sim.order_payload(10_000 + self.stats.orders, [(sku, 1)])
        self.stats.orders += 1
        self._orders.append(order)
        await self._webhook("orders/create", order)

    def _marketplace_tick(self) -> None:
        """A marketplace customer: buys only what the marketplace shows (it polls the orders)."""
        if not self.marketplaces:
            return
        name = self.rnd.choice(sorted(self.marketplaces))
        sim = self.marketplaces[name]
        sku = self.rnd.choice(self.skus)
        shown = (sim.quantity(sku) if name == "amazon" else sim.stock(sku)) or 0
        if shown <= 0:
            self.stats.turned_away += 1
            return
        self.stats.orders += 1
        if name == "amazon":
            sim.add_order(f"AMZ-{self.stats.orders:06d}", [(sku, 1)])
        else:
            sim.place_order(sku, 1)

    async def _webhook(self, topic: str, payload: dict[str, Any]) -> None:
        try:
            await self.sim.send_webhook(topic, payload, f"{self.base}/webhooks/shop",
                                        self.shop_secret, session=self.http)
        except aiohttp.ClientError as exc:
            self.stats.note(f"webhook {topic} failed: {exc}")

    async def _hold_tick(self) -> None:
        store = self.rnd.choice(STORES)
        req = {"order_id": f"CC-{self.stats.holds + self.stats.holds_refused}",
               "sku": self.rnd.choice(self.skus), "location": store, "qty": 1, "ttl": "5s"}
        async with self.http.post(f"{self.base}/v1/holds", json=req) as resp:
            body = await resp.json()
        if resp.status != 201:
            self.stats.holds_refused += 1
            return
        self.stats.holds += 1
        if self.rnd.random() < 0.6:
            asyncio.get_running_loop().call_later(
                self.rnd.uniform(0.5, 3.0),
                lambda: asyncio.ensure_future(self._collect(body["hold_id"])))
        else:
            self.stats.left_to_expire += 1

    async def _collect(self, hold_id: str) -> None:
        with contextlib.suppress(aiohttp.ClientError):
            async with self.http.post(f"{self.base}/v1/holds/{hold_id}/collect") as resp:
                if resp.status == 200:
                    hold = await resp.json()
                    self.shelf[(hold["location"], hold["sku"])] -= hold["qty"]
                    self.stats.collected += 1

    # -- the day --------------------------------------------------------------------------------

    async def run(self) -> None:
        mqtt_cm: Any = None
        mqtt: Any = None
        if self.broker is not None:
            import aiomqtt

            mqtt_cm = aiomqtt.Client("127.0.0.1", self.broker.port, identifier="demo-tills",
                                     clean_session=False)
            mqtt = await mqtt_cm.__aenter__()
        try:
            await self._opening_stock(mqtt)
            loop = asyncio.get_running_loop()
            start = loop.time()
            outage_from, outage_to = 0.4 * self.duration, 0.6 * self.duration
            in_outage = False
            while (elapsed := loop.time() - start) < self.duration:
                if self.sim is not None and not in_outage and outage_from <= elapsed < outage_to:
                    in_outage = True
                    self.sim.outage(503)
                    self.stats.outage = "webshop DOWN (503)"
                    self.stats.note("Shopify outage begins: every call answers 503")
                elif in_outage and elapsed >= outage_to:
                    in_outage = False
                    self.sim.recover()
                    self.stats.outage = "recovered"
                    self.stats.note("Shopify is back: one current value per SKU follows")
                await self._store_tick(mqtt)
                if self.rnd.random() < 0.5:
                    await self._webshop_tick()
                if self.rnd.random() < 0.3:
                    self._marketplace_tick()
                if self.rnd.random() < 0.3:
                    await self._square_tick()
                if self.rnd.random() < 0.12:
                    await self._hold_tick()
                await asyncio.sleep(0.1)
            if in_outage:
                self.sim.recover()
                self.stats.outage = "recovered"
        finally:
            if mqtt_cm is not None:
                await mqtt_cm.__aexit__(None, None, None)

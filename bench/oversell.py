"""Oversells avoided: one trading day sold through two tills and three online channels against
the same stock, with the channel figures kept up to date three ways.

A seeded, deterministic discrete-event simulation of one trading day (default 12 h) for N SKUs
(default 200) stocked in two stores and one warehouse. The same opening stock, the same customers
and the same deliveries (drawn once per seed) are run through each method:

1. **syncd**: the real `syncd.ledger.Ledger` (pure, no database) holds the stock. Every till sale,
   pick and delivery becomes a stock event from the location's authority (`sale`, `receipt`),
   every online order an `order` event (a reservation at the location it was routed to), its
   pick an `order_fulfilled` (or, when it could not be served, `order_cancelled`) event; rule 6
   settles the reservation once the authority's shipment delta is in. After each applied event
   the SKU's figures are computed with `syncd.figures.Figures.of`; a figure that moved is pushed
   and shows on the channel after the push latency plus that channel's own processing delay.
   Events reach the ledger as late as they do in production: till sales at once (their transit
   is inside the push latency), warehouse reports `WMS_DELAY` later, channel orders and their
   status changes after the channel's webhook or polling delay (table below).
2. **sync every 15 min**: the full periodic sync that Sellbrite, Teapplix and LitCommerce
   publish. Every 15 minutes each channel's figure is recomputed from the *true* stock and sent as
   one feed, applied after the same push latency and channel-side delay as syncd's. The tool is
   an oracle at sync time (it knows every order and sale at once, even Amazon's), which favours it.
3. **sync every 1 min**: the same, every minute.
4. **what-if: syncd, marketplaces without delays** (not a claim, an attribution): syncd as in 1,
   but every channel sends its orders by webhook (median 1 s) and shows a push as soon as it
   lands. The gap between 1 and 4 is what the marketplaces' own delays cost.

Between two updates a channel decrements its own figure for its own orders, as every channel does.
An update is an absolute quantity and overwrites those decrements: a figure computed before an
order reached syncd shows that unit again until the next update (Amazon's PATCH and feeds and
WooCommerce's `stock_quantity` are absolute; Shopify's compare-and-set is retried from the
current value). Updates of one channel and SKU are applied in the order they were computed.

Stock and demand:

- Locations: `dc` (warehouse, authority `wms`, safety stock 0), `store-a` and `store-b`
  (authority `pos`, safety stock 1: the online channels do not sell a store's last unit).
  Opening stock uniform 0-10 per SKU and location.
- Popularity: Zipf (exponent `ZIPF_S`) over the SKUs, the same ranking on every channel; a few
  SKUs are hot and short most of the day, most are quiet.
- Customers: a Poisson process per channel and SKU (rate = the channel's requests per day x the
  SKU's weight). At a till a customer takes 1-3 units, as many as are on the shelf. Online, a
  customer wants 1 (90 %) or 2 units and orders when the channel *shows* at least that many;
  otherwise the request is lost.
- Deliveries: 2-8 units per SKU and location at Poisson times, about `RESTOCK_RATIO` of the SKU's
  expected demand in total.
- Routing and picking (the same rule for every method): an accepted order line goes to the first
  location of its channel's `sells_from` whose true availability covers it (syncd's
  `choose_source`), else the first whose physically free stock covers it. It is picked 10-60 min
  later in a store, 30-240 min later at the warehouse. Until then the unit stays on the shelf.

| channel | sells from | requests / 12 h | orders reach syncd | shown after a push lands |
|---|---|---|---|---|
| till store-a, till store-b | its shelf | 900 each | at once (POS) | - |
| webshop (Shopify) | dc, store-a, store-b | 700 | orders/create webhook, median 1 s | at once |
| amazon (SP-API, MFN) | dc, store-a | 600 | searchOrders polled every 120 s | 5-60 s |
| marketplace2 (offer import) | dc | 300 | orders polled every 60 s | 10-120 s |

Push latency (a committed change to the channel's API accepting it) is log-normal with p50 30 ms
and p99 100 ms, benchmark 2's target (`--push-p50`, `--push-p99`). 120 s is the `amazon_sp`
connector's `poll_every` default. Amazon answers a Listings PATCH with `ACCEPTED` and applies it
later without a documented bound (5-60 s assumed); the second marketplace is an asynchronous
offer import (10-120 s assumed). Rate limits are not modelled (the load is far below them).

What is counted (the same for every method):

- **Oversold**: an order line is oversold when, at its acceptance, no location of its channel's
  `sells_from` physically holds its quantity free: on hand minus the units promised to every
  order accepted before it (safety stock does not count as missing). Its oversold units are the
  shortfall; the line is cancelled when it was due to be picked.
- Reported apart, not in "oversold": a unit promised to an unpicked store order that the store's
  till sells before the pick (the last promised order at that store loses it). No channel figure
  can prevent this race; it is about the same for every method.
- **Stale seconds per SKU**: for each online channel and SKU, the time the channel showed a
  quantity > 0 while the true figure was 0, summed over the channels and divided by the SKUs.
  The true figure is DESIGN.md's availability formula on the true stock at that instant (on hand
  minus units promised to unpicked orders, minus safety stock). Also reported: the time it showed
  more than the true figure (the oversell exposure) and less (lost sales; syncd keeps an order's
  reservation until its fulfilment is reported, so it errs on this side).

    python bench/oversell.py [--seeds 5] [--skus 200] [--hours 12]

Prints the machine, the parameters, one row per seed and method and the medians, and writes the
plot `docs/oversell.png` (`--plot` to change). It does not edit BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import heapq
import logging
import math
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, machine
from syncd.availability import published
from syncd.figures import Figures
from syncd.ledger import Changes, Ledger, LedgerConfig
from syncd.model import Channel, Event, EventType, Location
from syncd.reservations import choose_source

T0 = 1_795_428_000_000_000  # microseconds; the simulated day starts here
MIN = 60.0

LOCATIONS: dict[str, Location] = {
    "dc": Location("dc", "warehouse", "wms", safety_stock=0),
    "store-a": Location("store-a", "store", "pos", safety_stock=1, pickup=True),
    "store-b": Location("store-b", "store", "pos", safety_stock=1, pickup=True),
}
STOCK_MAX = 10  # opening stock uniform 0..STOCK_MAX per SKU and location
ZIPF_S = 1.0
RESTOCK_RATIO = 0.8  # restocked units / expected demand
RESTOCK_QTY = (2, 8)
TILL_REQUESTS = {"store-a": 900.0, "store-b": 900.0}  # per 12 h
TILL_QTY = ((1, 0.85), (2, 0.12), (3, 0.03))
ONLINE_QTY = ((1, 0.90), (2, 0.10))
PICK_DELAY = {"store": (10 * MIN, 60 * MIN), "warehouse": (30 * MIN, 240 * MIN)}
WMS_DELAY = 1.0  # seconds from a warehouse movement to its report reaching syncd
WEBHOOK_SIGMA = 0.7  # log-normal spread of webhook delivery (median given per channel)


@dataclass(frozen=True, slots=True)
class OnlineChannel:
    """An online channel: what it sells from, its demand and its delays."""

    name: str
    connector: str
    sells_from: tuple[str, ...]
    requests: float  # order requests per 12 h, all SKUs
    apply_delay: tuple[float, float]  # channel-side processing after a push, uniform seconds
    order_poll: float  # seconds between order polls; 0: webhook
    webhook_median: float = 1.0
    label: str = ""


CHANNELS: tuple[OnlineChannel, ...] = (
    OnlineChannel("webshop", "shop", ("dc", "store-a", "store-b"), 700.0, (0.0, 0.0), 0.0, 1.0,
                  "Shopify: orders/create webhook (median 1 s); inventorySetQuantities live"),
    OnlineChannel("amazon", "amazon", ("dc", "store-a"), 600.0, (5.0, 60.0), 120.0,
                  label="SP-API: searchOrders polled every 120 s; PATCH applied 5-60 s later"),
    OnlineChannel("marketplace2", "mp2", ("dc",), 300.0, (10.0, 120.0), 60.0,
                  label="offer-import API: orders polled every 60 s; applied 10-120 s later"),
)


@dataclass(frozen=True, slots=True)
class Params:
    skus: int = 200
    hours: float = 12.0
    push_p50: float = 0.030
    push_p99: float = 0.100


@dataclass(frozen=True, slots=True)
class Arrival:
    """One customer: at a till (`where` = a store) or on an online channel."""

    t: float
    sku: int
    where: str
    qty: int
    u_pick: float  # fixes the pick delay once the location is known
    z_in: float  # normal draw: webhook delay of the order
    z_out: float  # normal draw: webhook delay of its fulfilment or cancellation


@dataclass(frozen=True, slots=True)
class Restock:
    t: float
    sku: int
    loc: str
    qty: int


@dataclass(slots=True)
class World:
    """Everything exogenous of one seed, shared by the three methods."""

    opening: dict[tuple[int, str], int]
    arrivals: list[Arrival]
    restocks: list[Restock]
    poll_phase: dict[str, float]
    sync_phase: float


def _pick(rnd: random.Random, table: tuple[tuple[int, float], ...]) -> int:
    u = rnd.random()
    for value, p in table:
        if u < p:
            return value
        u -= p
    return table[-1][0]


def _poisson_times(rnd: random.Random, per_second: float, horizon: float) -> list[float]:
    out: list[float] = []
    if per_second <= 0:
        return out
    t = rnd.expovariate(per_second)
    while t < horizon:
        out.append(t)
        t += rnd.expovariate(per_second)
    return out


def make_world(seed: int, p: Params) -> World:
    rnd = random.Random(seed)
    horizon = p.hours * 3600.0
    scale = p.hours / 12.0
    weights = [1.0 / (rank + 1) ** ZIPF_S for rank in range(p.skus)]
    total_w = sum(weights)
    weights = [w / total_w for w in weights]
    opening = {(sku, loc): rnd.randint(0, STOCK_MAX) for sku in range(p.skus) for loc in LOCATIONS}
    arrivals: list[Arrival] = []
    sources: list[tuple[str, float, tuple[tuple[int, float], ...]]] = [
        (store, n, TILL_QTY) for store, n in TILL_REQUESTS.items()
    ] + [(ch.name, ch.requests, ONLINE_QTY) for ch in CHANNELS]
    for where, requests, qty_table in sources:
        for sku, w in enumerate(weights):
            for t in _poisson_times(rnd, requests * scale * w / horizon, horizon):
                arrivals.append(Arrival(t, sku, where, _pick(rnd, qty_table), rnd.random(),
                                        rnd.gauss(0.0, 1.0), rnd.gauss(0.0, 1.0)))
    expected_units = sum(n for _, n, _ in sources) * scale * 1.1  # mean qty is about 1.1
    restocks: list[Restock] = []
    mean_qty = sum(RESTOCK_QTY) / 2
    for sku, w in enumerate(weights):
        per_loc = RESTOCK_RATIO * expected_units * w / len(LOCATIONS) / mean_qty
        for loc in LOCATIONS:
            for t in _poisson_times(rnd, per_loc / horizon, horizon):
                restocks.append(Restock(t, sku, loc, rnd.randint(*RESTOCK_QTY)))
    arrivals.sort(key=lambda a: a.t)
    restocks.sort(key=lambda r: r.t)
    poll_phase = {ch.name: rnd.uniform(0.0, ch.order_poll) for ch in CHANNELS}
    return World(opening, arrivals, restocks, poll_phase, rnd.uniform(0.0, 15 * MIN))


def ledger_config() -> LedgerConfig:
    return LedgerConfig(
        locations=dict(LOCATIONS),
        channels={ch.name: Channel(ch.name, ch.connector, ch.sells_from) for ch in CHANNELS},
    )


@dataclass(slots=True)
class Order:
    oid: int
    ch: int
    sku: int
    qty: int
    loc: str
    accepted: float
    z_out: float
    state: str = "pending"  # pending | picked | oversold | bumped


@dataclass(frozen=True, slots=True)
class Method:
    """syncd (`period` None) or a periodic full sync every `period` seconds."""

    name: str
    period: float | None
    # what-if: every channel applies a push at once and sends its orders by webhook (median 1 s)
    instant: bool = False


METHODS: tuple[Method, ...] = (
    Method("syncd", None),
    Method("sync every 15 min", 15 * MIN),
    Method("sync every 1 min", 1 * MIN),
    Method("what-if: syncd, marketplaces without delays", None, instant=True),
)
BASELINE = "sync every 15 min"


@dataclass(slots=True)
class Result:
    method: str
    seed: int
    requests: int = 0
    accepted: int = 0
    # the headline: order lines accepted when the units were not there for them
    oversold_units: int = 0
    oversold_orders: int = 0
    # reported apart: units promised to an unpicked order, then sold at the store's till
    till_took_units: int = 0
    till_took_orders: int = 0
    stale: float = 0.0  # channel x SKU seconds showing > 0 while the truth is 0
    over: float = 0.0  # channel x SKU seconds showing more than the truth
    under: float = 0.0  # channel x SKU seconds showing less than the truth
    pushes: int = 0
    till_units: int = 0
    per_channel_oversold: dict[str, int] = field(default_factory=dict)


class Sim:
    """One method on one world."""

    def __init__(self, world: World, p: Params, method: Method, seed: int) -> None:
        self.w, self.p, self.m = world, p, method
        self.n = p.skus
        self.horizon = p.hours * 3600.0
        self.rnd = random.Random(f"{seed}/{method.name}")
        self.res = Result(method.name, seed)
        self.cfg = ledger_config()
        self.channels = [self.cfg.channels[ch.name] for ch in CHANNELS]
        self.sigma = math.log(p.push_p99 / p.push_p50) / 2.3263
        self.heap: list[tuple[float, int, Callable[[], None]]] = []
        self.seq = 0
        self.now = 0.0
        # the truth
        self.on_hand = dict(world.opening)
        self.pending = {key: 0 for key in world.opening}
        self.promised: dict[tuple[int, str], list[Order]] = {key: [] for key in world.opening}
        self.orders: list[Order] = []
        # what each channel shows, what is true, and since when (flat index ch * n + sku)
        size = len(CHANNELS) * self.n
        self.true = [0] * size
        self.shown = [0] * size
        self.since = [0.0] * size
        self.applied_version = [0] * size
        self.version = [0] * size
        self.desired = [0] * size
        self.feed_version = [0] * len(CHANNELS)
        self.feed_applied = [0] * len(CHANNELS)
        for ci in range(len(CHANNELS)):
            for sku in range(self.n):
                k = ci * self.n + sku
                self.true[k] = self.shown[k] = self.desired[k] = self._true_figure(ci, sku)
        self.ledger: Ledger | None = None
        self.figures: Figures | None = None
        if method.period is None:
            self._open_ledger()

    # -- plumbing --------------------------------------------------------------------------

    def at(self, t: float, fn: Callable[[], None]) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, fn))

    def net(self) -> float:
        return self.p.push_p50 * math.exp(self.sigma * self.rnd.gauss(0.0, 1.0))

    def channel_delay(self, ci: int) -> float:
        lo, hi = CHANNELS[ci].apply_delay
        return self.rnd.uniform(lo, hi) if hi > 0 and not self.m.instant else 0.0

    def inbound_delay(self, ci: int, t: float, z: float) -> float:
        """When an order (or its status change) made at `t` on channel `ci` reaches syncd."""
        ch = CHANNELS[ci]
        if ch.order_poll <= 0 or self.m.instant:
            return ch.webhook_median * math.exp(WEBHOOK_SIGMA * z)
        phase = self.w.poll_phase[ch.name]
        ticks = math.floor((t - phase) / ch.order_poll) + 1
        return phase + ticks * ch.order_poll - t

    @staticmethod
    def us(t: float) -> int:
        return T0 + round(t * 1_000_000)

    # -- the truth ---------------------------------------------------------------------------

    def _true_figure(self, ci: int, sku: int) -> int:
        ch = self.channels[ci]
        total = 0
        for loc in ch.sells_from:
            a = (self.on_hand[(sku, loc)] - self.pending[(sku, loc)]
                 - LOCATIONS[loc].safety_stock)
            if a > 0:
                total += a
        return published(total, ch.allocation, ch.safety_stock, ch.max_quantity)

    def _account(self, k: int) -> None:
        dt = self.now - self.since[k]
        if dt > 0:
            shown, true = self.shown[k], self.true[k]
            if shown > true:
                self.res.over += dt
                if true == 0:
                    self.res.stale += dt
            elif shown < true:
                self.res.under += dt
        self.since[k] = self.now

    def _truth_moved(self, sku: int) -> None:
        for ci in range(len(CHANNELS)):
            k = ci * self.n + sku
            fig = self._true_figure(ci, sku)
            if fig != self.true[k]:
                self._account(k)
                self.true[k] = fig

    def _show(self, k: int, qty: int) -> None:
        if qty != self.shown[k]:
            self._account(k)
            self.shown[k] = qty

    # -- syncd -------------------------------------------------------------------------------

    def _open_ledger(self) -> None:
        self.ledger = Ledger(self.cfg)
        self.figures = Figures(self.ledger)
        for (sku, loc), qty in self.w.opening.items():
            self.ledger.apply(Event(LOCATIONS[loc].authority, f"open-{sku}-{loc}",
                                    EventType.COUNT, f"SKU-{sku:05d}", qty, T0, location=loc),
                              T0, Changes())
        for ci, ch in enumerate(self.channels):
            for sku in range(self.n):
                fig = self.figures.of(ch, f"SKU-{sku:05d}", T0)[""]
                assert fig == self.true[ci * self.n + sku], "ledger and truth disagree at open"

    def to_ledger(self, delay: float, ev: Event, sku: int) -> None:
        if self.ledger is not None:
            self.at(self.now + delay, partial(self._apply, ev, sku))

    def _apply(self, ev: Event, sku: int) -> None:
        assert self.ledger is not None and self.figures is not None
        now = self.us(self.now)
        self.ledger.apply(ev, now, Changes())
        for ci, ch in enumerate(self.channels):
            fig = self.figures.of(ch, ev.sku, now)[""]
            k = ci * self.n + sku
            if fig != self.desired[k]:
                self.desired[k] = fig
                self.version[k] += 1
                self.res.pushes += 1
                self.at(self.now + self.net() + self.channel_delay(ci),
                        partial(self._push_lands, k, fig, self.version[k]))

    def _push_lands(self, k: int, qty: int, version: int) -> None:
        if version > self.applied_version[k]:
            self.applied_version[k] = version
            self._show(k, qty)

    # -- periodic full sync ----------------------------------------------------------------

    def _sync(self) -> None:
        for ci in range(len(CHANNELS)):
            figures = [self._true_figure(ci, sku) for sku in range(self.n)]
            self.feed_version[ci] += 1
            self.res.pushes += 1
            self.at(self.now + self.net() + self.channel_delay(ci),
                    partial(self._feed_lands, ci, figures, self.feed_version[ci]))
        assert self.m.period is not None
        self.at(self.now + self.m.period, self._sync)

    def _feed_lands(self, ci: int, figures: list[int], version: int) -> None:
        if version <= self.feed_applied[ci]:
            return
        self.feed_applied[ci] = version
        base = ci * self.n
        for sku, qty in enumerate(figures):
            self._show(base + sku, qty)

    # -- the world ---------------------------------------------------------------------------

    def _restock(self, r: Restock) -> None:
        self.on_hand[(r.sku, r.loc)] += r.qty
        self._truth_moved(r.sku)
        delay = WMS_DELAY if LOCATIONS[r.loc].authority == "wms" else 0.0
        self.to_ledger(delay, Event(LOCATIONS[r.loc].authority, f"rcv-{self.seq}",
                                    EventType.RECEIPT, f"SKU-{r.sku:05d}", r.qty,
                                    self.us(self.now), location=r.loc), r.sku)

    def _arrive(self, a: Arrival) -> None:
        if a.where in LOCATIONS:
            self._till(a)
        else:
            self._online(a)

    def _till(self, a: Arrival) -> None:
        key = (a.sku, a.where)
        sold = min(a.qty, self.on_hand[key])
        if sold <= 0:
            return
        self.res.till_units += sold
        self.on_hand[key] -= sold
        self.to_ledger(0.0, Event("pos", f"till-{self.seq}", EventType.SALE,
                                  f"SKU-{a.sku:05d}", sold, self.us(self.now),
                                  location=a.where), a.sku)
        # the shelf unit promised to an unpicked online order is gone: the last promised loses
        deficit = self.pending[key] - self.on_hand[key]
        promised = self.promised[key]
        while deficit > 0 and promised:
            o = promised.pop()
            o.state = "bumped"
            self.pending[key] -= o.qty
            self.res.till_took_units += min(o.qty, deficit)
            self.res.till_took_orders += 1
            deficit -= o.qty
        self._truth_moved(a.sku)

    def _oversold(self, ci: int, units: int) -> None:
        self.res.oversold_units += units
        self.res.oversold_orders += 1
        name = CHANNELS[ci].name
        self.res.per_channel_oversold[name] = self.res.per_channel_oversold.get(name, 0) + units

    def _online(self, a: Arrival) -> None:
        ci = next(i for i, ch in enumerate(CHANNELS) if ch.name == a.where)
        ch = CHANNELS[ci]
        k = ci * self.n + a.sku
        self.res.requests += 1
        if self.shown[k] < a.qty:
            return  # the channel shows too little: the customer goes elsewhere
        self.res.accepted += 1
        self._show(k, self.shown[k] - a.qty)  # the channel decrements its own figure
        # route: syncd's rule on the true availability, then any physically free stock
        avail = [(loc, self.on_hand[(a.sku, loc)] - self.pending[(a.sku, loc)]
                  - LOCATIONS[loc].safety_stock) for loc in ch.sells_from]
        free = [(loc, self.on_hand[(a.sku, loc)] - self.pending[(a.sku, loc)])
                for loc in ch.sells_from]
        loc, short = choose_source(avail, a.qty)
        if short:
            loc, short = choose_source(free, a.qty)
        o = Order(len(self.orders), ci, a.sku, a.qty, loc, self.now, a.z_out)
        self.orders.append(o)
        if short:
            o.state = "oversold"
            self._oversold(ci, a.qty - max(0, max(f for _, f in free)))
        else:
            self.pending[(a.sku, loc)] += a.qty
            self.promised[(a.sku, loc)].append(o)
            self._truth_moved(a.sku)
        lo, hi = PICK_DELAY[LOCATIONS[loc].kind]
        self.at(self.now + lo + a.u_pick * (hi - lo), partial(self._pick, o))
        self.to_ledger(self.inbound_delay(ci, self.now, a.z_in),
                       Event(ch.connector, f"order-{o.oid}", EventType.ORDER,
                             f"SKU-{a.sku:05d}", a.qty, self.us(self.now), location=loc,
                             order_id=f"O{o.oid}", channel=ch.name), a.sku)

    def _pick(self, o: Order) -> None:
        ch = CHANNELS[o.ch]
        sku = f"SKU-{o.sku:05d}"
        status_delay = self.inbound_delay(o.ch, self.now, o.z_out)
        if o.state != "pending":  # oversold: the line is cancelled when it cannot be picked
            self.to_ledger(status_delay, Event(ch.connector, f"cancel-{o.oid}",
                                               EventType.ORDER_CANCELLED, sku, o.qty,
                                               self.us(self.now), order_id=f"O{o.oid}",
                                               channel=ch.name), o.sku)
            return
        key = (o.sku, o.loc)
        o.state = "picked"
        self.promised[key].remove(o)
        self.pending[key] -= o.qty
        self.on_hand[key] -= o.qty
        assert self.on_hand[key] >= self.pending[key] >= 0
        authority = LOCATIONS[o.loc].authority
        self.to_ledger(WMS_DELAY if authority == "wms" else 0.0,
                       Event(authority, f"ship-{o.oid}", EventType.SALE, sku, o.qty,
                             self.us(self.now), location=o.loc), o.sku)
        self.to_ledger(status_delay, Event(ch.connector, f"done-{o.oid}",
                                           EventType.ORDER_FULFILLED, sku, o.qty,
                                           self.us(self.now), order_id=f"O{o.oid}",
                                           channel=ch.name), o.sku)

    # -- run -----------------------------------------------------------------------------

    def run(self) -> Result:
        for a in self.w.arrivals:
            self.at(a.t, partial(self._arrive, a))
        for r in self.w.restocks:
            self.at(r.t, partial(self._restock, r))
        if self.m.period is not None:
            self.at(self.w.sync_phase % self.m.period, self._sync)
        while self.heap and self.heap[0][0] < self.horizon:
            t, _, fn = heapq.heappop(self.heap)
            self.now = t
            fn()
        self.now = self.horizon
        for k in range(len(self.shown)):
            self._account(k)
        return self.res


def _ratio(base: float, value: float) -> str:
    if value <= 0:
        return f"> {base:,.0f}×" if base > 0 else "-"
    return f"{base / value:,.1f}×"


def describe(p: Params, seeds: int) -> str:
    lines = [
        f"Parameters: {p.skus} SKUs, {p.hours:g} h, seeds 1..{seeds}. Locations: "
        + ", ".join(f"{loc.name} ({loc.kind}, authority {loc.authority}, safety stock "
                    f"{loc.safety_stock})" for loc in LOCATIONS.values()) + ".",
        f"Opening stock uniform 0-{STOCK_MAX} per SKU and location; Zipf s = {ZIPF_S}; "
        f"restocks of {RESTOCK_QTY[0]}-{RESTOCK_QTY[1]} units, about {RESTOCK_RATIO:.0%} of "
        "expected demand; online orders picked within 10-60 min (store), 30-240 min "
        "(warehouse).",
        f"syncd: push latency log-normal p50 {p.push_p50 * 1000:.0f} ms, p99 "
        f"{p.push_p99 * 1000:.0f} ms; till sales reach the ledger at once, warehouse reports "
        f"{WMS_DELAY:g} s later. Periodic syncs: one feed per channel per sync, computed from "
        "the true stock, with the same push latency and channel-side delays.",
        "",
        "| channel | sells from | requests / 12 h | orders reach syncd; a push is shown after |",
        "|---|---|---|---|",
    ]
    for store, n in TILL_REQUESTS.items():
        lines.append(f"| till {store} | its shelf | {n:,.0f} | POS at once; "
                     "sells whatever is on the shelf |")
    for ch in CHANNELS:
        lines.append(f"| {ch.name} | {', '.join(ch.sells_from)} | {ch.requests:,.0f} | "
                     f"{ch.label} |")
    return "\n".join(lines)


def plot(path: Path, medians: dict[str, dict[str, float]], spans: dict[str, tuple[int, int]],
         p: Params, seeds: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    names = [m.name for m in METHODS]
    labels = ["syncd", "full sync\nevery 15 min", "full sync\nevery 1 min",
              "what-if: syncd,\nmarketplaces\nwithout delays"]
    colors = ["#2a9d8f", "#e76f51", "#f4a261", "#cfe8e5"]
    hatches = ["", "", "", "//"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.6))
    floor = 0.5  # a zero is drawn at 0.5 on the log axis and labelled 0
    units = [max(medians[m]["units"], floor) for m in names]
    err_lo = [u - max(spans[m][0], floor) for u, m in zip(units, names, strict=True)]
    err_hi = [max(spans[m][1], floor) - u for u, m in zip(units, names, strict=True)]
    bars = ax1.bar(labels, units, color=colors, edgecolor="#555555", yerr=[err_lo, err_hi],
                   capsize=4)
    for bar, hatch in zip(bars, hatches, strict=True):
        bar.set_hatch(hatch)
    ax1.set_yscale("log")
    ax1.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax1.set_ylim(floor * 0.8, max(max(spans[m][1] for m in names), 1) * 3)
    ax1.set_ylabel("oversold units per day (log scale)")
    ax1.set_title("Oversold units (accepted, not there)", fontsize=10)
    ax1.text(0.99, 0.98, "a zero is drawn at 0.5", transform=ax1.transAxes, ha="right",
             va="top", fontsize=7, color="#555555")
    for i, m in enumerate(names):
        ax1.text(i + 0.22, units[i] * 1.08, f"{medians[m]['units']:,.0f}", fontsize=9)
    stale = [medians[m]["stale"] for m in names]
    bars = ax2.bar(labels, stale, color=colors, edgecolor="#555555")
    for bar, hatch in zip(bars, hatches, strict=True):
        bar.set_hatch(hatch)
    ax2.set_ylabel("seconds per SKU per day")
    ax2.set_title("Stale availability: channel shows > 0, truly 0", fontsize=10)
    for i, value in enumerate(stale):
        ax2.text(i, value + max(stale) * 0.01, f"{value:,.0f} s", ha="center", fontsize=9)
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"bench/oversell.py: {p.skus} SKUs, 2 stores + 1 warehouse, 2 tills + 3 online "
                 f"channels, {p.hours:g} h; median of {seeds} seeds (whiskers: min-max)",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5, help="seeds 1..N (default 5)")
    ap.add_argument("--skus", type=int, default=200)
    ap.add_argument("--hours", type=float, default=12.0)
    ap.add_argument("--push-p50", type=float, default=30.0, help="push latency p50, ms")
    ap.add_argument("--push-p99", type=float, default=100.0, help="push latency p99, ms")
    ap.add_argument("--plot", type=Path, default=ROOT / "docs" / "oversell.png")
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # the ledger logs every oversold order line
    p = Params(args.skus, args.hours, args.push_p50 / 1000, args.push_p99 / 1000)
    started = time.perf_counter()
    print(machine())
    print()
    print(describe(p, args.seeds))
    print()
    results: dict[str, list[Result]] = {m.name: [] for m in METHODS}
    rows = ["| seed | method | online requests | accepted | oversold units | oversold orders "
            "| stale s/SKU | shown > true s/SKU | shown < true s/SKU | promised units sold "
            "at a till | pushes / feeds |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for seed in range(1, args.seeds + 1):
        world = make_world(seed, p)
        for method in METHODS:
            r = Sim(world, p, method, seed).run()
            results[method.name].append(r)
            rows.append(f"| {seed} | {method.name} | {r.requests:,} | {r.accepted:,} | "
                        f"{r.oversold_units:,} | {r.oversold_orders:,} | "
                        f"{r.stale / p.skus:,.1f} | {r.over / p.skus:,.1f} | "
                        f"{r.under / p.skus:,.1f} | {r.till_took_units:,} | {r.pushes:,} |")
    print("\n".join(rows))
    print()
    medians: dict[str, dict[str, float]] = {}
    spans: dict[str, tuple[int, int]] = {}
    for name, rs in results.items():
        medians[name] = {
            "units": statistics.median(r.oversold_units for r in rs),
            "orders": statistics.median(r.oversold_orders for r in rs),
            "stale": statistics.median(r.stale / p.skus for r in rs),
            "over": statistics.median(r.over / p.skus for r in rs),
            "under": statistics.median(r.under / p.skus for r in rs),
            "accepted": statistics.median(r.accepted for r in rs),
            "till": statistics.median(r.till_took_units for r in rs),
            "total": sum(r.oversold_units for r in rs),
        }
        spans[name] = (min(r.oversold_units for r in rs), max(r.oversold_units for r in rs))
    base = medians[BASELINE]["units"]
    table = [
        f"Medians of {args.seeds} seeds:",
        "",
        "| method | oversold units | oversold orders | stale seconds per SKU | ratio vs 15-min "
        "sync | shown > true, s per SKU | shown < true, s per SKU | online orders accepted |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in results:
        m = medians[name]
        table.append(f"| {name} | {m['units']:,.0f} | {m['orders']:,.0f} | "
                     f"{m['stale']:,.1f} | {_ratio(base, m['units'])} | "
                     f"{m['over']:,.1f} | {m['under']:,.1f} | {m['accepted']:,.0f} |")
    print("\n".join(table))
    print()
    total_base = medians[BASELINE]["total"]
    print(f"Oversold units summed over the {args.seeds} seeds: " + ", ".join(
        f"{name} {m['total']:,.0f} ({_ratio(total_base, m['total'])})"
        for name, m in medians.items()) + ".")
    print("By channel (median units): " + "; ".join(
        f"{name}: " + ", ".join(
            f"{ch.name} {statistics.median(r.per_channel_oversold.get(ch.name, 0) for r in rs):g}"
            for ch in CHANNELS)
        for name, rs in results.items()) + ".")
    print("Not counted above, the same for every method (no channel figure can prevent it): "
          "units promised to an unpicked store order and sold at that store's till before the "
          "pick, median " + ", ".join(f"{name} {m['till']:,.0f}" for name, m in medians.items())
          + ".")
    print("Target: syncd ≥ 100× fewer oversold units than the 15-minute sync.")
    plot(args.plot, medians, spans, p, args.seeds)
    shown = args.plot.relative_to(ROOT) if args.plot.is_relative_to(ROOT) else args.plot
    print(f"Plot: {shown}; {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()

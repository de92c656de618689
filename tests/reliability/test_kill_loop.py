"""The SIGKILL loop: a real `syncd run` (SQLite) with the MQTT POS connector on a real mosquitto,
the Shopify connector on the simulator and the HTTP API, under mixed traffic, killed with SIGKILL
at random (seeded) moments.

Traffic, all of it running while the daemon is killed:

- a till publishes sales (and counts of other SKUs) over MQTT QoS 1 with a persistent session; a
  message is *acknowledged* once the broker answered its PUBLISH (the till never publishes twice);
- a back office posts receipts at the warehouse through `POST /v1/events` (acknowledged = 2xx);
- click-and-collect holds are created, collected and released through `/v1/holds`;
- Shopify delivers `orders/create` webhooks to `/webhooks/shop`, signed; some are redelivered.

A request whose answer was lost in a kill is sent again after the restart, as a real client would
(holds by `hold_id`, events by `event_id`, webhooks by `X-Shopify-Event-Id`).

After every kill (the database as the restart finds it): the ledger replayed from scratch equals
the stored levels and reservations; no `(connector, event_id)` twice. At the end, after a last
restart that drains everything: every acknowledged sale, receipt, hold, collect, release and order
is in the ledger; the number of applied sales equals the distinct sales published; on-hand equals
the initial count minus those sales and collects; and Shopify shows, for every SKU, the figure the
ledger publishes.

`SYNCD_SOAK=1` runs more kills (see RELIABILITY.md and bench/soak.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest

from connectors.shopify.sim import ShopifySim, running_sim
from syncd.model import to_micros
from syncd.reservations import order_res_id
from tests.reliability.helpers import (
    WEBHOOK_SECRET,
    DaemonProc,
    RecordingSim,
    duplicates,
    iso,
    load,
    now_us,
    published_figures,
    record,
    replay_matches,
    retail_config,
    snapshot,
    soak,
    sqlite_rows,
    until,
)
from tests.servers import MosquittoServer, free_port

SEED = int(os.environ.get("SYNCD_KILL_SEED", "20261123"))
KILLS = int(os.environ.get("SYNCD_KILLS", "60" if soak() else "20"))
SOLD = [f"K{i:02d}" for i in range(10)]  # sold at the till, held, ordered on the webshop
COUNTED = [f"N{i:02d}" for i in range(3)]  # only counted at the till
SKUS = SOLD + COUNTED
INITIAL = 100_000


@dataclass
class Ledgerless:
    """What the outside world was told (acknowledged) and what it still has to resend."""

    sales: dict[str, str] = field(default_factory=dict)  # event_id -> sku (broker acked)
    counts: dict[str, tuple[str, int, int]] = field(default_factory=dict)  # id -> sku,qty,at
    receipts: dict[str, dict[str, Any]] = field(default_factory=dict)  # acked
    receipts_unknown: dict[str, dict[str, Any]] = field(default_factory=dict)
    holds: dict[str, dict[str, Any]] = field(default_factory=dict)  # acked creates
    holds_unknown: dict[str, dict[str, Any]] = field(default_factory=dict)
    ends: dict[str, str] = field(default_factory=dict)  # hold_id -> "collect"/"release" acked
    ends_unknown: dict[str, str] = field(default_factory=dict)
    orders: dict[str, tuple[int, str, int]] = field(default_factory=dict)  # event id -> order
    orders_unknown: dict[str, tuple[int, str, int]] = field(default_factory=dict)
    http_errors: Counter[str] = field(default_factory=Counter)
    redeliveries: int = 0


class Till:
    """One POS till: a persistent MQTT session publishing QoS 1 for the whole test."""

    def __init__(self, broker: MosquittoServer, seen: Ledgerless, rnd: random.Random) -> None:
        self.broker = broker
        self.seen = seen
        self.rnd = rnd
        self.seq = 0
        self.running = True
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        host, port = self.broker.url.removeprefix("mqtt://").split(":")
        async with aiomqtt.Client(host, int(port), identifier="till-rel-1",
                                  clean_session=False) as client:
            while self.running:
                batch = []
                for _ in range(self.rnd.randint(1, 4)):
                    self.seq += 1
                    at = now_us()
                    if self.rnd.random() < 0.05:
                        sku = self.rnd.choice(COUNTED)
                        qty = self.rnd.randint(0, 500)
                        ev = {"event_id": f"T1-{self.seq:07d}", "seq": self.seq, "source": "T1",
                              "type": "count", "sku": sku, "qty": qty, "occurred_at": iso(at)}
                    else:
                        ev = {"event_id": f"T1-{self.seq:07d}", "seq": self.seq, "source": "T1",
                              "type": "sale", "sku": self.rnd.choice(SOLD), "qty": 1,
                              "occurred_at": iso(at)}
                    batch.append(ev)
                payload = json.dumps({"events": batch} if len(batch) > 1 else batch[0])
                await client.publish("syncd/pos/paris/events", payload, qos=1)
                for ev in batch:  # the broker acknowledged the PUBLISH
                    if ev["type"] == "sale":
                        self.seen.sales[str(ev["event_id"])] = str(ev["sku"])
                    else:
                        self.seen.counts[str(ev["event_id"])] = (
                            str(ev["sku"]), int(ev["qty"]),  # type: ignore[call-overload]
                            to_micros(datetime.fromisoformat(str(ev["occurred_at"]))))
                await asyncio.sleep(0.004)

    def start(self) -> None:
        self.task = asyncio.create_task(self.run())

    async def stop(self) -> None:
        self.running = False
        if self.task is not None:
            await asyncio.wait_for(self.task, 30)


class Clients:
    """The HTTP side of the traffic against one daemon instance: back office, holds, Shopify."""

    def __init__(self, d: DaemonProc, sim: ShopifySim, seen: Ledgerless,
                 rnd: random.Random, round_no: int) -> None:
        self.d = d
        self.sim = sim
        self.seen = seen
        self.rnd = rnd
        self.round = round_no
        self.running = True
        self.n = 0
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    def _uid(self, kind: str) -> str:
        self.n += 1
        return f"{kind}-{self.round:03d}-{self.n:05d}"

    async def _post(self, method: str, path: str, body: Any = None) -> tuple[int, Any] | None:
        try:
            return await self.d.call(method, path, body, limit=10)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.seen.http_errors[type(exc).__name__] += 1
            return None

    # -- the resends of what a kill left without an answer --------------------------------------

    async def resend(self) -> None:
        s = self.seen
        for body in list(s.receipts_unknown.values()):
            await self._receipt(body)
        for body in list(s.holds_unknown.values()):
            await self._hold(body)
        for hid, verb in list(s.ends_unknown.items()):
            await self._end(hid, verb)
        for eid, order in list(s.orders_unknown.items()):
            await self._order(eid, order)

    # -- one operation each ---------------------------------------------------------------------

    async def _receipt(self, body: dict[str, Any]) -> int | None:
        got = await self._post("POST", "/v1/events", body)
        if got is None or got[0] >= 500:
            self.seen.receipts_unknown[body["event_id"]] = body
            return None
        assert got[0] == 200, got
        self.seen.receipts[body["event_id"]] = body
        self.seen.receipts_unknown.pop(body["event_id"], None)
        return got[0]

    async def _hold(self, body: dict[str, Any]) -> int | None:
        got = await self._post("POST", "/v1/holds", body)
        if got is None or got[0] >= 500:
            self.seen.holds_unknown[body["hold_id"]] = body
            return None
        assert got[0] in (200, 201), got
        self.seen.holds[body["hold_id"]] = body
        self.seen.holds_unknown.pop(body["hold_id"], None)
        return got[0]

    async def _end(self, hold_id: str, verb: str) -> int | None:
        if verb == "collect":
            got = await self._post("POST", f"/v1/holds/{hold_id}/collect")
        else:
            got = await self._post("DELETE", f"/v1/holds/{hold_id}")
        if got is None or got[0] >= 500:
            self.seen.ends_unknown[hold_id] = verb
            return None
        # 409: the hold expired (short TTL) before it was collected or released
        assert got[0] in (200, 409), got
        if got[0] == 200:
            self.seen.ends[hold_id] = verb
        self.seen.ends_unknown.pop(hold_id, None)
        return got[0]

    async def _order(self, event_id: str, order: tuple[int, str, int]) -> int | None:
        order_id, sku, qty = order
        payload = self.sim.order_payload(order_id, [(sku, qty)])
        try:
            res = await self.sim.send_webhook("orders/create", payload,
                                              f"{self.d.base}/webhooks/shop", WEBHOOK_SECRET,
                                              event_id=event_id, session=self.http)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.seen.http_errors[type(exc).__name__] += 1
            self.seen.orders_unknown[event_id] = order
            return None
        if res.status >= 500:
            self.seen.orders_unknown[event_id] = order
            return None
        assert res.status == 200, res
        self.seen.orders[event_id] = order
        self.seen.orders_unknown.pop(event_id, None)
        return res.status

    # -- the loops ------------------------------------------------------------------------------

    async def backoffice(self) -> None:
        while self.running:
            eid = self._uid("R")
            await self._receipt({"connector": "backoffice", "location": "lyon", "event_id": eid,
                                 "type": "receipt", "sku": self.rnd.choice(SOLD),
                                 "qty": self.rnd.randint(1, 5), "occurred_at": iso(now_us())})
            await asyncio.sleep(0.02)

    async def holds(self) -> None:
        while self.running:
            acked = [h for h in self.seen.holds if h not in self.seen.ends
                     and h not in self.seen.ends_unknown]
            roll = self.rnd.random()
            if acked and roll < 0.25:
                await self._end(self.rnd.choice(acked), "collect")
            elif acked and roll < 0.45:
                await self._end(self.rnd.choice(acked), "release")
            else:
                hid = self._uid("H")
                await self._hold({"hold_id": hid, "order_id": f"W{hid}",
                                  "sku": self.rnd.choice(SOLD), "location": "paris",
                                  "qty": self.rnd.randint(1, 3),
                                  "ttl": self.rnd.choice(["1h", "1h", "2s"])})
            await asyncio.sleep(0.03)

    async def orders(self) -> None:
        while self.running:
            if self.seen.orders and self.rnd.random() < 0.15:  # Shopify redelivers
                eid = self.rnd.choice(list(self.seen.orders))
                if await self._order(eid, self.seen.orders[eid]) is not None:
                    self.seen.redeliveries += 1
            else:
                eid = self._uid("O")
                order = (10_000_000 + len(self.seen.orders) + len(self.seen.orders_unknown)
                         + self.round * 100_000 + self.n, self.rnd.choice(SOLD),
                         self.rnd.randint(1, 2))
                await self._order(eid, order)
            await asyncio.sleep(0.05)

    async def run(self) -> None:
        await asyncio.gather(self.backoffice(), self.holds(), self.orders())

    async def close(self) -> None:
        await self.http.close()


async def check_after_kill(state: Path, cfg_text: str, seen: Ledgerless) -> list[str]:
    """The database as the restart will find it: replay equals state, nothing stored twice,
    and every HTTP 2xx so far (receipts, holds, their ends, orders) is in it."""
    snap = await snapshot(state)
    _, problems = replay_matches(snap, load(cfg_text).ledger_config())
    dup = duplicates(snap)
    if dup:
        problems.append(f"{dup} (connector, event_id) pairs stored twice")
    ids = {(e.connector, e.event_id) for e, _, _ in snap.events}
    problems += [f"acknowledged receipt {eid} missing" for eid in seen.receipts
                 if ("backoffice", eid) not in ids]
    problems += [f"acknowledged hold {hid} missing" for hid in seen.holds
                 if hid not in snap.reservations]
    problems += [f"acknowledged {verb} of {hid} missing" for hid, verb in seen.ends.items()
                 if snap.reservations.get(hid, ("?",))[0]
                 != ("collected" if verb == "collect" else "released")]
    problems += [f"acknowledged order {o} missing" for o, sku, _ in seen.orders.values()
                 if order_res_id("webshop", str(o), sku) not in snap.reservations]
    return problems


@pytest.mark.timeout(600)
async def test_sigkill_loop_loses_nothing_and_doubles_nothing(
    tmp_path: Path, mosquitto: MosquittoServer, request: pytest.FixtureRequest
) -> None:
    rnd = random.Random(SEED)
    sim = RecordingSim()
    sim.add_items(SKUS, available=0)
    seen = Ledgerless()
    state = tmp_path / "state"
    port = free_port()
    started = time.monotonic()
    kills = 0
    round_problems: list[str] = []
    ready_times: list[float] = []
    async with running_sim(sim) as shop_url:
        cfg_text = retail_config(state, port, mqtt_url=mosquitto.url, shop_url=shop_url)
        config = tmp_path / "syncd.toml"
        config.write_text(cfg_text)
        till = Till(mosquitto, seen, rnd)

        for round_no in range(KILLS + 1):
            d = DaemonProc(config, port)
            ready_times.append(await d.wait_ready())
            clients = Clients(d, sim, seen, rnd, round_no)
            if round_no == 0:
                # the initial counts, then the till starts selling (its session exists now)
                t0 = now_us()
                counts = [{"connector": "pos", "location": "paris", "event_id": f"init-{s}",
                           "type": "count", "sku": s, "qty": INITIAL, "occurred_at": iso(t0)}
                          for s in SOLD]
                status, body = await d.call("POST", "/v1/events", {"events": counts})
                assert status == 200, body
                till.start()
            await clients.resend()
            if round_no == KILLS:
                break
            traffic = asyncio.create_task(clients.run())
            await asyncio.sleep(rnd.uniform(0.1, 0.9))
            code = await d.kill()
            assert code == -9
            kills += 1
            clients.running = False
            with contextlib.suppress(Exception):
                await asyncio.wait_for(traffic, 30)
            await clients.close()
            for p in await check_after_kill(state, cfg_text, seen):
                round_problems.append(f"after kill {kills}: {p}")

        # the last instance: the till stops, everything is drained and pushed
        clients.running = False
        await till.stop()
        await clients.resend()
        assert not (seen.receipts_unknown or seen.holds_unknown or seen.ends_unknown
                    or seen.orders_unknown)
        # the short-TTL holds expire and the sweeper records them (and pushes the units back)
        await asyncio.sleep(2.2)

        def unswept_expiries() -> int:
            return sqlite_rows(state, "SELECT count(*) FROM reservations WHERE state = 'held' "
                                      "AND expires_at <= ?", now_us())[0][0]

        await until(lambda: unswept_expiries() == 0, "expired holds recorded", within=30)

        def applied_sales() -> int:
            return sqlite_rows(state, "SELECT count(*) FROM events WHERE connector = 'pos' "
                                      "AND type = 'sale'")[0][0]

        await until(lambda: applied_sales() >= len(seen.sales), "every published sale",
                    within=60)

        async def drained() -> bool:
            _, st = await d.call("GET", "/v1/status")
            return bool(st["channels"]["webshop"]["pending"] == 0 and st["queue"] == 0)

        catch_up = await until(drained, "the webshop outbox drained", within=60)
        shown = {s: sim.available(s) for s in SKUS}
        await clients.close()
        assert await d.stop() == 0, d.tail()
        elapsed = time.monotonic() - started

    # -- the invariants at the end ----------------------------------------------------------
    snap = await snapshot(state)
    cfg = load(cfg_text)
    ledger, problems = replay_matches(snap, cfg.ledger_config())
    problems = round_problems + problems
    ids = {(e.connector, e.event_id): (e, outcome) for e, _, outcome in snap.events}
    doubled = duplicates(snap)
    lost: list[str] = []
    for eid in seen.sales:
        if ("pos", eid) not in ids:
            lost.append(f"sale {eid}")
    for eid in seen.counts:
        if ("pos", eid) not in ids:
            lost.append(f"count {eid}")
    for eid in seen.receipts:
        if ("backoffice", eid) not in ids or ids[("backoffice", eid)][1] != "applied":
            lost.append(f"receipt {eid}")
    for hid in seen.holds:
        if hid not in snap.reservations:
            lost.append(f"hold {hid}")
    for hid, verb in seen.ends.items():
        want = "collected" if verb == "collect" else "released"
        if snap.reservations.get(hid, ("?",))[0] != want:
            lost.append(f"{verb} of {hid}: {snap.reservations.get(hid)}")
    for _eid, (order_id, sku, _qty) in seen.orders.items():
        if order_res_id("webshop", str(order_id), sku) not in snap.reservations:
            lost.append(f"order {order_id}")
    applied = Counter(e.sku for e, _, o in snap.events
                      if e.connector == "pos" and e.type.value == "sale" and o == "applied")
    published = Counter(seen.sales.values())
    doubled += sum(max(0, applied[s] - published[s]) for s in SOLD)
    # on-hand at the store: the initial count, less the sales and the collected holds
    collected = Counter()
    for rid, (st, sku, loc, qty) in snap.reservations.items():
        if st == "collected" and loc == "paris" and rid in seen.holds:
            collected[sku] += qty
    for s in SOLD:
        got = snap.levels[(s, "paris")].on_hand
        want = INITIAL - published[s] - collected[s]
        if got != want:
            problems.append(f"on-hand {s}: {got} != {want}")
    for s in COUNTED:
        latest = max((c for c in seen.counts.values() if c[0] == s), key=lambda c: c[2],
                     default=None)
        if latest is not None and snap.levels[(s, "paris")].on_hand != latest[1]:
            problems.append(f"on-hand {s}: {snap.levels[(s, 'paris')].on_hand} != {latest[1]}")
    # the channel shows what the ledger publishes
    want_shown = published_figures(ledger, cfg, "webshop", SKUS, now_us())
    stored_desired = {sku: row.desired for (ch, sku, _loc), row in snap.outbox.items()
                      if ch == "webshop"}
    for s in SKUS:
        if shown[s] != want_shown[s] or stored_desired.get(s) != want_shown[s]:
            problems.append(f"webshop {s}: Shopify shows {shown[s]}, the ledger publishes "
                            f"{want_shown[s]}, the outbox holds {stored_desired.get(s)}")

    acknowledged = {"sales": len(seen.sales), "counts": len(seen.counts),
                    "receipts": len(seen.receipts), "holds": len(seen.holds),
                    "hold_ends": len(seen.ends), "orders": len(seen.orders),
                    "webhook_redeliveries": seen.redeliveries}
    record("kill_loop", f"python3 -m pytest -q '{request.node.nodeid}'"
           + (" (SYNCD_SOAK=1)" if soak() else ""),
           seed=SEED, kills=KILLS, kills_survived=kills if not problems else None,
           events_lost=len(lost), events_doubled=doubled, acknowledged=acknowledged,
           ledger_rows=len(snap.events), lost_http_answers=dict(seen.http_errors),
           restart_to_ready_s_max=round(max(ready_times), 2),
           final_catch_up_s=round(catch_up, 2), seconds=round(elapsed, 1))
    for line in [*problems, *lost[:50]]:
        print("[kill loop]", line)  # shown by pytest when the test fails
    assert not lost, lost[:20]
    assert doubled == 0
    assert not problems, problems[:20]
    assert kills == KILLS

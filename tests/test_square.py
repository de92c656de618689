"""The Square connector against the Square simulator on a real loopback HTTP server, feeding the
real engine on SQLite.

A Square POS named "pos" is the authority of paris and lille in `retailer()`; Square location
L-PARIS maps to paris and L-LILLE to lille. Signed `inventory.count.updated` webhooks become
counts in the ledger (signature, notification URL, malformed bodies, redeliveries, late
deliveries), polling reconciles what webhooks missed (high-water mark, paging, stale re-reads,
429 and 5xx with backoff, the poll loop itself), unusable counts are dead-lettered, and signed
fuzzed bodies always get a clean answer. The simulator is held to the documented shapes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from connectors._http import serve_app
from connectors.base import Connector, ConnectorContext, PermanentPushError, PushItem
from connectors.square import SquareConfig, SquareConnector
from connectors.square.connector import POLL_OVERLAP
from connectors.square.mapping import (
    MappingError,
    parse_quantity,
    parse_time,
    rfc3339,
    sign,
    verify_signature,
)
from connectors.square.sim import SquareSim, WebhookResult, running_sim
from syncd.engine import Engine
from syncd.ledger import Verdict
from syncd.model import EventType, Outcome
from syncd.store import sqlite_url
from tests.core import retailer, running_engine, until

FIXTURES = Path(__file__).parent / "fixtures" / "square"
TOKEN = "sq-simulator-token"
KEY = "sq-signature-key-test"
# the URL of the Square subscription: a proxy forwards it to syncd's loopback listener
PUBLIC = "https://syncd.example.com/webhooks/pos"
LOCATIONS = {"L-PARIS": "paris", "L-LILLE": "lille"}


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQUARE_TOKEN", TOKEN)
    monkeypatch.setenv("SQUARE_SIGNATURE_KEY", KEY)


def config(base_url: str = "https://connect.squareup.com", **overrides: Any) -> SquareConfig:
    raw: dict[str, Any] = {
        "base_url": base_url, "access_token": "env:SQUARE_TOKEN",
        "webhook_signature_key": "env:SQUARE_SIGNATURE_KEY", "notification_url": PUBLIC,
        "locations": LOCATIONS,
    }
    raw.update(overrides)
    return SquareConfig.model_validate(raw)


def connector(base_url: str, http: aiohttp.ClientSession | None, *, autopoll: bool = False,
              **overrides: Any) -> SquareConnector:
    ctx = ConnectorContext(locations=retailer().locations, channels={}, http=http)
    conn = SquareConnector("pos", config(base_url, **overrides), ctx, autopoll=autopoll)
    conn.client.backoff_base = 0.01  # keep the retries of the tests short
    return conn


def up(conn: SquareConnector) -> bool:
    """`connected`, read afresh (a property that changes under the test's feet)."""
    return conn.connected


@dataclass
class Harness:
    engine: Engine
    conn: SquareConnector
    sim: SquareSim
    url: str  # syncd's POST /webhooks/pos on loopback
    http: aiohttp.ClientSession
    verdicts: list[list[Verdict]] = field(default_factory=list)

    async def send(self, counts: Any, *, key: str = KEY, notification_url: str = PUBLIC,
                   **kw: Any) -> WebhookResult:
        return await self.sim.send_webhook(self.url, notification_url, key, counts,
                                           session=self.http, **kw)

    def on_hand(self, sku: str, loc: str = "paris") -> int | None:
        lvl = self.engine.ledger.levels.get((sku, loc))
        return lvl.on_hand if lvl else None

    def outcomes(self) -> list[Outcome]:
        return [v.outcome for v in self.verdicts[-1]]

    def counted(self, outcome: str) -> float:
        value: float = self.engine.metrics.events.labels("pos", "count", outcome)._value.get()
        return value

    async def rows(self, sql: str) -> list[tuple[Any, ...]]:
        async with self.engine.db.connect() as db:
            return [tuple(r) for r in (await db.exec_driver_sql(sql)).fetchall()]


async def _feed(conn: SquareConnector, engine: Engine) -> None:
    """The daemon's intake: every `Inbound` of `events()` into the engine."""
    async for inbound in conn.events():
        await engine.submit(inbound)


@asynccontextmanager
async def syncd_with_square(tmp_path: Path, sim: SquareSim, *, autopoll: bool = False,
                            **overrides: Any) -> AsyncIterator[Harness]:
    async with running_engine(sqlite_url(tmp_path), retailer()) as engine, \
            running_sim(sim) as base, aiohttp.ClientSession() as http:
        conn = connector(base, http, autopoll=autopoll, **overrides)
        verdicts: list[list[Verdict]] = []

        async def handle(request: web.Request) -> web.Response:
            """`POST /webhooks/{connector}`: the reply is sent after the commit."""
            body = await request.read()
            reply = await conn.webhook({k.lower(): v for k, v in request.headers.items()}, body)
            if reply.status >= 400:
                return web.json_response({"error": reply.error, "detail": reply.detail},
                                         status=reply.status)
            out = await engine.apply(reply.events, reply.dead) if reply.events or reply.dead \
                else []
            verdicts.append(out)
            return web.json_response({"outcomes": [v.outcome.value for v in out]})

        app = web.Application()
        app.router.add_post("/webhooks/pos", handle)
        async with serve_app(app) as base:
            await conn.start()
            feeder = asyncio.create_task(_feed(conn, engine))
            try:
                yield Harness(engine, conn, sim, f"{base}/webhooks/pos", http, verdicts)
            finally:
                await conn.close()
                await asyncio.wait_for(feeder, 5)  # events() ends at close()


# -- configuration ------------------------------------------------------------------------------


def test_config_is_validated_and_secrets_are_references() -> None:
    cfg = config()
    assert cfg.base_url == "https://connect.squareup.com"
    assert (cfg.poll_every, cfg.timeout, cfg.square_version) == (300.0, 10.0, "2026-01-22")
    assert TOKEN not in repr(cfg) and KEY not in repr(cfg)
    assert config("http://127.0.0.1:9/", poll_every="30s").base_url == "http://127.0.0.1:9"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"base_url": "http://connect.squareup.com"}, "https"),
        ({"access_token": "EAAAinline"}, "never inline"),
        ({"locations": {}}, "at least 1"),
        ({"locations": {"A": "paris", "B": "paris"}}, "overwrite each other"),
        ({"notification_url": "syncd.example.com/hook"}, "URL"),
        ({"notification_url": PUBLIC + " "}, "byte for byte"),
        ({"square_version": "2026-01"}, "Square API version"),
        ({"poll_every": 300}, "duration"),
        ({"poll_every": "0s"}, "greater than 0"),
        ({"merchant": "x"}, "Extra inputs"),
    ]
    for bad, match in cases:
        with pytest.raises(ValidationError, match=match):
            config(**bad)
    conn = connector("https://connect.squareup.com", None)
    assert isinstance(conn, Connector)
    assert (conn.max_batch, conn.per_location, conn.basis) == (1, False, "available")
    assert not conn.connected


async def test_square_serves_no_channel() -> None:
    conn = connector("https://connect.squareup.com", None)
    with pytest.raises(PermanentPushError, match="stock source"):
        await conn.push("web", [PushItem("web", "A", "", 1, 1, None, "k")])
    with pytest.raises(NotImplementedError):
        await conn.read_levels("web", [("A", "")])
    conn.on_reservation(None)  # type: ignore[arg-type]  # a no-op whatever it is given


# -- webhooks -----------------------------------------------------------------------------------


async def test_a_signed_count_reaches_the_ledger_and_bad_ones_apply_nothing(
        tmp_path: Path) -> None:
    sim = SquareSim()
    vid = sim.add_variation("SKU-1")
    async with syncd_with_square(tmp_path, sim) as h:
        count = sim.set_count("SKU-1", "L-PARIS", 7)
        res = await h.send([count])
        assert res.status == 200 and h.outcomes() == [Outcome.APPLIED]
        assert h.on_hand("SKU-1") == 7
        lvl = h.engine.ledger.levels[("SKU-1", "paris")]
        assert lvl.watermark == parse_time(count["calculated_at"])
        assert await h.rows("SELECT event_id, type, source FROM events") == [
            (f"{res.event_id}:{vid}:L-PARIS", "count", "L-PARIS")]
        # the variation was looked up by id, not by listing the catalog
        assert [(m, p) for m, p, _ in sim.requests] == [("POST", "/v2/catalog/batch-retrieve")]
        assert sim.versions == ["2026-01-22"]

        newer = sim.set_count("SKU-1", "L-PARIS", 50)
        res = await h.send([newer], key="another-key")
        assert res.status == 401 and json.loads(res.body)["error"] == "bad_signature"
        res = await h.send([newer], notification_url="https://evil.example.com/webhooks/pos")
        assert res.status == 401  # signed for another subscription URL
        res = await h.send([newer], signature="")
        assert res.status == 401
        body = json.dumps(sim.notification([newer])).encode()
        tampered = body.replace(b'"50"', b'"500"')
        res = await h.send(tampered, signature=sign(KEY.encode(), PUBLIC, body))
        assert res.status == 401
        async with h.http.post(h.url, data=body) as resp:  # no signature header at all
            assert resp.status == 401
        res = await h.send(b'{"type": "inventory.count.updated", "data": [')
        assert res.status == 400 and json.loads(res.body)["error"] == "malformed"
        res = await h.send(b'["not", "an", "object"]')
        assert res.status == 400
        assert len(h.verdicts) == 1 and h.on_hand("SKU-1") == 7
        # another event type, signed: acknowledged, nothing to do
        other = {**sim.notification([newer]), "type": "catalog.version.updated"}
        res = await h.send(other)
        assert res.status == 200 and h.verdicts[-1] == [] and h.on_hand("SKU-1") == 7


async def test_a_redelivered_event_is_a_duplicate_and_a_late_one_is_stale(
        tmp_path: Path) -> None:
    sim = SquareSim()
    sim.add_variations(["SKU-1", "SKU-2"])
    async with syncd_with_square(tmp_path, sim) as h:
        first = sim.set_count("SKU-1", "L-PARIS", 5)
        both = [first, sim.set_count("SKU-2", "L-LILLE", 3)]
        res = await h.send(both, event_id="evt-1")
        assert h.outcomes() == [Outcome.APPLIED, Outcome.APPLIED]
        again = await h.send(both, event_id=res.event_id)  # Square delivers it again
        assert again.status == 200
        assert h.outcomes() == [Outcome.DUPLICATE, Outcome.DUPLICATE]
        assert (h.on_hand("SKU-1"), h.on_hand("SKU-2", "lille")) == (5, 3)
        # a sale, then the notification of an earlier state arrives late
        sale = sim.set_count("SKU-1", "L-PARIS", 4)
        await h.send([sale])
        assert h.outcomes() == [Outcome.APPLIED] and h.on_hand("SKU-1") == 4
        earlier = {**first, "quantity": "9"}
        await h.send([earlier])
        assert h.outcomes() == [Outcome.STALE] and h.on_hand("SKU-1") == 4
        assert h.counted("duplicate") == 2 and h.counted("stale") == 1


async def test_unusable_counts_are_dead_lettered_and_other_locations_ignored(
        tmp_path: Path) -> None:
    sim = SquareSim()
    sim.add_variation("SKU-1")
    no_sku = sim.add_variation(None, name="Coffee")  # sold at the till, not stocked by syncd
    twin_a, twin_b = sim.add_variation("TWIN"), sim.add_variation("TWIN")
    async with syncd_with_square(tmp_path, sim) as h:
        good = sim.set_count("SKU-1", "L-PARIS", 6)
        unknown = {**good, "catalog_object_id": "NOPE00000000000000000000"}
        fractional = {**sim.count_payload("SKU-1", "L-LILLE", "2.5")}
        elsewhere = sim.count_payload("SKU-1", "L-MARSEILLE", 11)
        waste = sim.count_payload("SKU-1", "L-PARIS", 1, state="WASTE")
        coffee = sim.count_payload(no_sku, "L-PARIS", 40)
        res = await h.send([good, unknown, fractional, elsewhere, waste, coffee])
        assert res.status == 200
        assert h.outcomes() == [Outcome.APPLIED] and h.on_hand("SKU-1") == 6
        assert h.on_hand("SKU-1", "lille") is None
        assert sorted(await h.rows("SELECT connector, reason, origin FROM dead_letters")) == [
            ("pos", "quantity 2.5 is not a whole number of units",
             "webhook inventory.count.updated"),
            ("pos", "unknown catalog object NOPE00000000000000000000",
             "webhook inventory.count.updated"),
        ]
        # only another location, or nothing usable: acknowledged, no event, no dead letter
        res = await h.send([sim.count_payload("SKU-1", "L-MARSEILLE", 2), coffee])
        assert res.status == 200 and h.verdicts[-1] == []
        # a SKU carried by two variations: set aside rather than let them overwrite each other
        await h.send([sim.count_payload(twin_a, "L-PARIS", 1),
                      sim.count_payload(twin_b, "L-PARIS", 2)])
        (reason,) = {r for (r,) in await h.rows(
            "SELECT reason FROM dead_letters WHERE reason LIKE 'SKU TWIN%'")}
        assert reason == f"SKU TWIN is on several catalog objects: " \
                         f"{', '.join(sorted([twin_a, twin_b]))}"
        assert h.on_hand("TWIN") is None
        # signed but not a notification of counts: dead-lettered, acknowledged
        res = await h.send({"type": "inventory.count.updated", "event_id": "e-9", "data": {}})
        assert res.status == 200
        assert ("data.object.inventory_counts is missing or not a list",) in await h.rows(
            "SELECT reason FROM dead_letters")
        # a variation created in Square since is found on the next notification
        sim.add_variation("NEW-1", variation_id="NEW00000000000000000000000")
        res = await h.send([sim.set_count("NEW-1", "L-PARIS", 2)])
        assert h.outcomes() == [Outcome.APPLIED] and h.on_hand("NEW-1") == 2


async def test_a_catalog_outage_during_a_webhook_asks_square_to_deliver_again(
        tmp_path: Path) -> None:
    sim = SquareSim()
    sim.add_variation("SKU-1")
    async with syncd_with_square(tmp_path, sim) as h:
        count = sim.set_count("SKU-1", "L-PARIS", 8)
        sim.fail_next(10, 500)
        res = await h.send([count], event_id="evt-outage")
        assert res.status == 503 and json.loads(res.body)["error"] == "catalog_unavailable"
        assert h.verdicts == [] and h.on_hand("SKU-1") is None
        sim.heal()
        res = await h.send([count], event_id="evt-outage")  # Square retries the delivery
        assert res.status == 200 and h.outcomes() == [Outcome.APPLIED]
        assert h.on_hand("SKU-1") == 8


async def test_documented_notification_maps_to_a_count(tmp_path: Path) -> None:
    sim = SquareSim(locations=["YYQR03DGCTXA4"])
    sim.add_variation("CHEMISE-LIN-M", variation_id="FGQ5JJWT2PYTHF35CKZ2DSKP")
    async with running_sim(sim) as base, aiohttp.ClientSession() as http:
        conn = connector(base, http, locations={"YYQR03DGCTXA4": "paris"})
        await conn.start()
        body = (FIXTURES / "inventory_count_updated.json").read_bytes()
        headers = {"X-Square-HmacSha256-Signature": sign(KEY.encode(), PUBLIC, body)}
        reply = await conn.webhook(headers, body)
        await conn.close()
    assert reply.status == 200 and not reply.dead
    (e,) = reply.events  # the WASTE count of the same state change is not stock on hand
    assert (e.type, e.event_id, e.sku, e.qty, e.location, e.connector) == (
        EventType.COUNT,
        "df5f3813-a913-45a1-94e9-fdc3f7d5e3b6:FGQ5JJWT2PYTHF35CKZ2DSKP:YYQR03DGCTXA4",
        "CHEMISE-LIN-M", 10, "paris", "pos")
    assert e.occurred_at == parse_time("2019-10-29T18:38:45.102960Z")


# -- polling ------------------------------------------------------------------------------------


async def test_polling_reconciles_what_webhooks_missed(tmp_path: Path) -> None:
    sim = SquareSim(catalog_page_size=2)
    skus = [f"SKU-{i}" for i in range(5)]
    sim.add_variations(skus)
    coffee = sim.add_variation(None)
    for i, sku in enumerate(skus):
        sim.set_count(sku, "L-PARIS", 10 + i)
    sim.set_count("SKU-0", "L-LILLE", 3)
    sim.set_count("SKU-0", "L-MARSEILLE", 99)  # a Square location syncd does not map
    newest = sim.set_count(coffee, "L-PARIS", 12)
    async with syncd_with_square(tmp_path, sim) as h:
        h.conn.page_limit = 2
        r = await h.conn.poll_once()
        assert r.committed and not r.error and h.conn.connected
        assert (r.pages, r.counts, r.events, r.dead) == (4, 7, 6, 0)
        assert [h.on_hand(s) for s in skus] == [10, 11, 12, 13, 14]
        assert h.on_hand("SKU-0", "lille") == 3
        bodies = [b for m, p, b in sim.requests if p == "/v2/inventory/counts/batch-retrieve"]
        assert all(b["location_ids"] == ["L-PARIS", "L-LILLE"] and b["states"] == ["IN_STOCK"]
                   and b["limit"] == 2 for b in bodies)
        assert "updated_after" not in bodies[0]  # the first poll reads everything
        assert [b.get("cursor") is not None for b in bodies] == [False, True, True, True]
        catalog = [b for m, p, b in sim.requests if p == "/v2/catalog/list"]
        assert len(catalog) == 3 and catalog[0] == {"types": "ITEM_VARIATION"}

        # a sale whose webhook never came
        sim.set_count("SKU-3", "L-PARIS", 12)
        r = await h.conn.poll_once()
        assert r.committed and r.events == 1 and h.on_hand("SKU-3") == 12
        # read since the newest count the previous poll saw, less the overlap
        assert sim.requests[-1][2]["updated_after"] == rfc3339(
            parse_time(newest["calculated_at"]) - int(POLL_OVERLAP * 1_000_000))
        assert len([p for _, p, _ in sim.requests if p == "/v2/catalog/list"]) == 3

        # a webhook applied a newer state than the one polling reads (Square's replica lag)
        before = datetime.now(UTC) - timedelta(milliseconds=1)
        fresh = sim.set_count("SKU-2", "L-PARIS", 4)
        await h.send([fresh])
        assert h.on_hand("SKU-2") == 4
        sim.set_count("SKU-2", "L-PARIS", 9, at=before)
        stale_before = h.counted("stale")
        r = await h.conn.poll_once()
        assert r.committed and r.events == 1
        assert h.counted("stale") == stale_before + 1 and h.on_hand("SKU-2") == 4

        # nothing new: the overlap re-read is not sent again
        r = await h.conn.poll_once()
        assert r.committed and r.events == 0

    # a restart forgets the high-water mark: everything is read again, and is a duplicate
    async with syncd_with_square(tmp_path, sim) as h2:
        r = await h2.conn.poll_once()
        assert r.committed and r.events == 6
        assert h2.counted("duplicate") == 6 and h2.counted("applied") == 0
        assert [h2.on_hand(s) for s in skus] == [10, 11, 4, 12, 14]


async def test_unusable_counts_read_by_polling_are_dead_lettered(tmp_path: Path) -> None:
    sim = SquareSim()
    vid = sim.add_variation("SKU-1")
    sim.set_count(vid, "L-PARIS", 2)
    sim.set_count(vid, "L-LILLE", "1.25")
    async with syncd_with_square(tmp_path, sim) as h:
        r = await h.conn.poll_once()  # the catalog is read first
        assert r.committed and (r.events, r.dead) == (1, 1) and h.on_hand("SKU-1") == 2
        # created, counted and deleted in Square between two polls
        late = sim.add_variation("LATE")
        sim.set_count(late, "L-PARIS", 4)
        sim.remove_variation(late)
        sim.set_count("SKU-1", "L-PARIS", 3)
        r = await h.conn.poll_once()
        assert r.committed and (r.events, r.dead) == (1, 1) and h.on_hand("SKU-1") == 3
        assert h.on_hand("LATE") is None
        rows = await h.rows("SELECT reason, origin, payload FROM dead_letters ORDER BY id")
        assert [(reason, origin) for reason, origin, _ in rows] == [
            ("quantity 1.25 is not a whole number of units", "poll inventory counts"),
            (f"unknown catalog object {late}", "poll inventory counts"),
        ]
        assert json.loads(rows[0][2])["quantity"] == "1.25"  # the count, for the operator


async def test_rate_limits_and_outages_during_a_poll_are_waited_out(tmp_path: Path) -> None:
    sim = SquareSim()
    sim.add_variations(["SKU-1", "SKU-2"])
    sim.set_count("SKU-1", "L-PARIS", 4)
    async with syncd_with_square(tmp_path, sim) as h:
        sim.rate_limit_next(3)
        r = await h.conn.poll_once()
        assert r.committed and h.on_hand("SKU-1") == 4
        assert sim.rate_limited == 3 and h.conn.client.rate_limited == 3
        delays = h.conn.client.backoffs
        assert len(delays) == 3 and all(0.005 <= d <= 0.04 for d in delays)
        assert delays[2] >= 0.02  # exponential: the third wait is at least 2x the base

        # an outage longer than the retries: the poll gives up, nothing crashes
        sim.set_count("SKU-2", "L-PARIS", 6)
        sim.fail_next(8, 503)
        r = await h.conn.poll_once()
        assert not r.committed and "SERVICE_UNAVAILABLE" in r.error and not up(h.conn)
        assert h.on_hand("SKU-2") is None
        r = await h.conn.poll_once()  # Square is back after two more failures
        assert r.committed and up(h.conn) and h.on_hand("SKU-2") == 6

    # a revoked token is not retried
    async with syncd_with_square(tmp_path, SquareSim(access_token="another-token")) as h:
        r = await h.conn.poll_once()
        assert not r.committed and "UNAUTHORIZED" in r.error and not h.conn.connected
        assert h.sim.unauthorized == 1 and TOKEN not in r.error


async def test_the_poll_loop_keeps_running(tmp_path: Path) -> None:
    sim = SquareSim()
    sim.add_variation("SKU-1")
    sim.set_count("SKU-1", "L-PARIS", 1)
    async with syncd_with_square(tmp_path, sim, autopoll=True, poll_every="50ms") as h:
        await until(lambda: h.on_hand("SKU-1") == 1 and h.conn.connected)
        sim.fail_next(20, 500)  # outlasts one poll's retries
        await until(lambda: not h.conn.connected)
        sim.set_count("SKU-1", "L-PARIS", 2)
        await until(lambda: h.on_hand("SKU-1") == 2 and h.conn.connected)
        assert h.conn.polls >= 3
    assert h.conn._poller is None  # closed cleanly


async def test_a_poll_whose_commit_failed_is_read_again_whole(tmp_path: Path) -> None:
    sim = SquareSim()
    sim.add_variations(["SKU-1", "SKU-2"])
    sim.set_count("SKU-1", "L-PARIS", 5)
    sim.set_count("SKU-2", "L-LILLE", 6)
    async with running_sim(sim) as base, aiohttp.ClientSession() as http:
        conn = connector(base, http)
        await conn.start()
        taken: list[int] = []

        async def failing_intake() -> None:  # the database is down: every commit fails
            async for inbound in conn.events():
                taken.append(len(inbound.events))
                assert inbound.on_failure is not None
                inbound.on_failure(RuntimeError("database is locked"))

        intake = asyncio.create_task(failing_intake())
        r = await conn.poll_once()
        assert (r.events, r.committed, taken) == (2, False, [2])
        intake.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await intake
        async with running_engine(sqlite_url(tmp_path), retailer()) as engine:
            feeder = asyncio.create_task(_feed(conn, engine))
            r = await conn.poll_once()
            bodies = [b for _, p, b in sim.requests if p.endswith("counts/batch-retrieve")]
            assert "updated_after" not in bodies[-1]  # the high-water mark did not move
            assert r.committed and r.events == 2
            assert engine.ledger.levels[("SKU-2", "lille")].on_hand == 6
            r = await conn.poll_once()
            assert "updated_after" in sim.requests[-1][2] and r.events == 0
            await conn.close()
            await asyncio.wait_for(feeder, 5)


async def test_an_unreachable_square_is_retried_then_reported(
        caplog: pytest.LogCaptureFixture) -> None:
    async with running_sim(SquareSim()) as base:
        pass  # the port is closed again: connections are refused
    async with aiohttp.ClientSession() as http:
        conn = connector(base, http, locations={"L-PARIS": "paris", "L-LYON": "lyon",
                                                "L-X": "nowhere"})
        with caplog.at_level("WARNING", logger="connectors.square"):
            await conn.start()
        messages = [r.getMessage() for r in caplog.records]
        assert any("'lyon', whose authority is 'wms'" in m for m in messages)
        assert any("'nowhere', which is not a syncd location" in m for m in messages)
        r = await conn.poll_once()
        assert "cannot reach Square" in r.error and not conn.connected
        assert len(conn.client.backoffs) == conn.client.max_attempts - 1
        body = json.dumps(SquareSim().notification([{
            "catalog_object_id": "V1", "state": "IN_STOCK", "location_id": "L-PARIS",
            "quantity": "1", "calculated_at": "2026-11-23T10:00:00Z"}])).encode()
        reply = await conn.webhook({"x-square-hmacsha256-signature":
                                    sign(KEY.encode(), PUBLIC, body)}, body)
        assert reply.status == 503
        await conn.close()


@pytest.mark.parametrize(("text", "qty"), [
    ("79", 79), ("-3", -3), ("0", 0), ("12.00000", 12), ("1e3", 1000), (" 4 ", 4), (5, 5),
    ("12.375", None), ("0.5", None), ("x", None), ("", None), ("NaN", None), ("Infinity", None),
    ("1e999999999", None), ("2000000000", None), (10**5000, None), (2.0, None), (True, None),
    (None, None), ("9" * 40, None),
], ids=lambda v: f"int{v.bit_length()}bits" if isinstance(v, int) else repr(v)[:20])
def test_quantities_are_whole_units_or_refused(text: Any, qty: int | None) -> None:
    if qty is None:
        with pytest.raises(MappingError):
            parse_quantity(text)
    else:
        assert parse_quantity(text) == qty


def test_times_carry_a_zone() -> None:
    assert parse_time("2019-10-29T18:38:45.455006797Z") == parse_time(
        "2019-10-29T19:38:45.455006+01:00")
    for bad in ("2019-10-29T18:38:45", "2019-10-29", "yesterday", "", None, 17, "9" * 80):
        with pytest.raises(MappingError):
            parse_time(bad)
    us = parse_time("2026-11-23T10:00:00.000001Z")
    assert rfc3339(us) == "2026-11-23T10:00:00.000001Z" and parse_time(rfc3339(us)) == us


# -- the simulator's contract -------------------------------------------------------------------


async def test_simulator_follows_the_documented_shapes() -> None:
    sim = SquareSim(catalog_page_size=1)
    a, b = sim.add_variations(["A", "B"])
    sim.set_count(a, "L-PARIS", 5, at="2026-11-23T10:00:00Z")
    sim.set_count(b, "L-PARIS", 6, at="2026-11-23T11:00:00Z")
    sim.set_count(a, "L-LILLE", 7, at="2026-11-23T12:00:00Z")
    sim.set_count(a, "L-PARIS", 1, at="2026-11-23T12:30:00Z", state="WASTE")
    auth = {"Authorization": f"Bearer {TOKEN}", "Square-Version": "2026-01-22"}
    async with running_sim(sim) as base, aiohttp.ClientSession(base_url=base) as http:
        async def call(path: str, body: Any = None, headers: Any = auth,
                       params: Any = None) -> tuple[int, Any]:
            method = http.get if body is None else http.post
            async with method(path, json=body, headers=headers, params=params) as resp:
                return resp.status, await resp.json()

        status, doc = await call("/v2/inventory/counts/batch-retrieve", {}, headers={})
        assert (status, doc) == (401, json.loads((FIXTURES / "unauthorized.json").read_text()))
        status, doc = await call("/v2/catalog/list", headers={**auth, "Square-Version": "1"})
        assert status == 400 and doc["errors"][0]["code"] == "INVALID_SQUARE_VERSION_FORMAT"
        sim.rate_limit_next(1)
        status, doc = await call("/v2/inventory/counts/batch-retrieve", {})
        assert (status, doc) == (429, json.loads((FIXTURES / "rate_limited.json").read_text()))

        # ListCatalog pages with a cursor; objects have the documented shape
        documented = json.loads((FIXTURES / "list_catalog_item_variations.json").read_text())
        status, page1 = await call("/v2/catalog/list", params={"types": "ITEM_VARIATION"})
        assert status == 200 and set(page1) == set(documented)
        obj = page1["objects"][0]
        assert set(obj) == set(documented["objects"][0])
        assert set(documented["objects"][0]["item_variation_data"]) <= \
            set(obj["item_variation_data"])
        status, page2 = await call("/v2/catalog/list",
                                   params={"types": "ITEM_VARIATION", "cursor": page1["cursor"]})
        assert "cursor" not in page2
        got = {o["item_variation_data"]["sku"] for o in page1["objects"] + page2["objects"]}
        assert got == {"A", "B"}

        # BatchRetrieveInventoryCounts: newest first, filters, limit, cursor bound to its query
        documented = json.loads(
            (FIXTURES / "batch_retrieve_inventory_counts_response.json").read_text())
        status, doc = await call("/v2/inventory/counts/batch-retrieve", {})
        assert status == 200 and set(doc["counts"][0]) == set(documented["counts"][0])
        assert [c["quantity"] for c in doc["counts"]] == ["1", "7", "6", "5"]
        query = {"location_ids": ["L-PARIS"], "states": ["IN_STOCK"], "limit": 1}
        status, doc = await call("/v2/inventory/counts/batch-retrieve", query)
        assert [c["quantity"] for c in doc["counts"]] == ["6"] and doc["cursor"]
        status, doc2 = await call("/v2/inventory/counts/batch-retrieve",
                                  {**query, "cursor": doc["cursor"]})
        assert [c["quantity"] for c in doc2["counts"]] == ["5"] and "cursor" not in doc2
        status, err = await call("/v2/inventory/counts/batch-retrieve",
                                 {**query, "limit": 2, "cursor": doc["cursor"]})
        assert status == 400 and err["errors"][0]["code"] == "INVALID_CURSOR"
        status, doc = await call("/v2/inventory/counts/batch-retrieve",
                                 {"updated_after": "2026-11-23T11:00:00Z",
                                  "states": ["IN_STOCK"]})
        assert [c["quantity"] for c in doc["counts"]] == ["7"]  # strictly after
        for body, code in [({"limit": 0}, "VALUE_TOO_LOW"), ({"limit": 1001}, "VALUE_TOO_HIGH"),
                           ({"states": ["ON_SHELF"]}, "INVALID_ENUM_VALUE"),
                           ({"updated_after": "yesterday"}, "INVALID_TIME")]:
            status, err = await call("/v2/inventory/counts/batch-retrieve", body)
            assert status == 400 and err["errors"][0]["code"] == code
            assert err["errors"][0]["category"] == "INVALID_REQUEST_ERROR"
        status, doc = await call("/v2/catalog/batch-retrieve", {"object_ids": [b, "NOPE"]})
        assert [o["id"] for o in doc["objects"]] == [b]


def test_signature_is_base64_hmac_sha256_of_url_and_body() -> None:
    body = b'{"event_id":"1"}'
    expected = base64.b64encode(
        hmac.new(b"k", b"https://h.example/hook" + body, hashlib.sha256).digest()).decode()
    assert sign(b"k", "https://h.example/hook", body) == expected
    assert verify_signature(b"k", "https://h.example/hook", body, expected)
    assert not verify_signature(b"k", "https://h.example/hook/", body, expected)
    assert not verify_signature(b"k", "https://h.example/hook", body, "not base64!")
    assert not verify_signature(b"k", "https://h.example/hook", body, None)


# -- fuzzing (against the simulator, on a loop of its own) --------------------------------------


@dataclass
class _Live:
    loop: asyncio.AbstractEventLoop
    conn: SquareConnector
    known: str

    def webhook(self, headers: dict[str, str], body: bytes) -> Any:
        return asyncio.run_coroutine_threadsafe(self.conn.webhook(headers, body),
                                                self.loop).result(30)


@pytest.fixture(scope="module")
def live() -> Iterator[_Live]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    sim = SquareSim()
    known = sim.add_variation("KNOWN")
    sim.add_variation(None, variation_id="NOSKU000000000000000000000")
    stack = contextlib.AsyncExitStack()

    async def setup() -> SquareConnector:
        base = await stack.enter_async_context(running_sim(sim))
        http = await stack.enter_async_context(aiohttp.ClientSession())
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SQUARE_TOKEN", TOKEN)
            mp.setenv("SQUARE_SIGNATURE_KEY", KEY)
            conn = connector(base, http)
        await conn.start()
        stack.push_async_callback(conn.close)
        return conn

    conn = asyncio.run_coroutine_threadsafe(setup(), loop).result(30)
    try:
        yield _Live(loop, conn, known)
    finally:
        asyncio.run_coroutine_threadsafe(stack.aclose(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["2026-11-23T10:00:00Z", "2026-11-23", "1", "-3", "2.5", "1e3", "NaN"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=3),
    max_leaves=10,
)


def _counts(known: str) -> Any:
    ids = st.sampled_from([known, "NOSKU000000000000000000000", "UNKNOWN1"])
    plausible = st.fixed_dictionaries({
        "catalog_object_id": ids,
        "catalog_object_type": st.just("ITEM_VARIATION"),
        "state": st.sampled_from(["IN_STOCK", "IN_STOCK", "WASTE"]),
        "location_id": st.sampled_from(["L-PARIS", "L-LILLE", "L-OTHER"]),
        "quantity": st.integers(-10**6, 10**6).map(str)
        | st.sampled_from(["2.5", "3.00000", "1e2", "x", "1e99999", ""]),
        "calculated_at": st.datetimes(timezones=st.just(UTC)).map(
            lambda d: d.isoformat().replace("+00:00", "Z"))
        | st.sampled_from(["2026-11-23T10:00:00.123456789Z", "2026-11-23T10:00:00", "x"]),
    })
    chaotic = st.fixed_dictionaries({}, optional={
        "catalog_object_id": ids | json_values,
        "catalog_object_type": st.sampled_from(["ITEM_VARIATION", "ITEM"]) | json_values,
        "state": st.sampled_from(["IN_STOCK", "WASTE"]) | json_values,
        "location_id": st.sampled_from(["L-PARIS", "L-OTHER"]) | json_values,
        "quantity": json_values,
        "calculated_at": json_values,
    })
    return st.lists(plausible | chaotic | json_values, max_size=5)


def _notifications(known: str) -> Any:
    counts = _counts(known)
    plausible = st.fixed_dictionaries({
        "type": st.just("inventory.count.updated"),
        "event_id": st.text(min_size=1, max_size=300),
        "data": st.fixed_dictionaries({"type": st.just("inventory"),
                                       "object": st.fixed_dictionaries(
                                           {"inventory_counts": counts})}),
    })
    chaotic = st.fixed_dictionaries({}, optional={
        "type": st.sampled_from(["inventory.count.updated", "payment.created"]) | json_values,
        "event_id": st.text(max_size=300) | json_values,
        "data": st.fixed_dictionaries({}, optional={
            "object": st.fixed_dictionaries({}, optional={
                "inventory_counts": counts | json_values}) | json_values,
            "inventory_counts": counts,
        }) | json_values,
    })
    return plausible | chaotic | json_values


def _check(reply: Any, body_is_object: bool) -> None:
    assert reply.status == (200 if body_is_object else 400)
    for e in reply.events:
        assert e.connector == "pos" and e.type is EventType.COUNT and e.sku == "KNOWN"
        assert e.event_id and len(e.event_id) <= 255 and e.location in ("paris", "lille")
        assert isinstance(e.qty, int) and isinstance(e.occurred_at, int)
    for d in reply.dead:
        assert d.reason and d.connector == "pos" and len(d.reason) <= 500


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_signed_notifications_are_mapped_or_dead_lettered(live: _Live,
                                                              data: st.DataObject) -> None:
    payload = data.draw(_notifications(live.known))
    body = json.dumps(payload).encode()
    headers = {"x-square-hmacsha256-signature": sign(KEY.encode(), PUBLIC, body)}
    reply = live.webhook(headers, body)
    _check(reply, isinstance(payload, dict))
    event(f"events: {bool(reply.events)}, dead letters: {bool(reply.dead)}")


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=300), signed=st.booleans(), signature=st.text(max_size=60))
def test_fuzz_any_bytes_get_a_clean_reply(live: _Live, body: bytes, signed: bool,
                                          signature: str) -> None:
    headers = {"x-square-hmacsha256-signature":
               sign(KEY.encode(), PUBLIC, body) if signed else signature}
    reply = live.webhook(headers, body)
    if not signed:
        assert reply.status == 401 and not reply.events and not reply.dead
        return
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        doc = None
    _check(reply, isinstance(doc, dict))

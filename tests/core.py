"""Builders for core tests: a small retailer, an engine on a real database, a fake channel,
and the daemon's webhook route in front of a connector (the webshop connectors' tests).

`FakeChannel` is a connector (the outside seam syncd pushes through) that records what it was
asked to set and can be told to fail; it is not a mock of any syncd internal.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from connectors._http import serve_app
from connectors.base import (
    Connector,
    Inbound,
    PushItem,
    PushResult,
    PushStatus,
    TransientPushError,
    WebhookReply,
)
from syncd.engine import Engine
from syncd.ledger import LedgerConfig, Verdict
from syncd.metrics import Metrics
from syncd.model import Channel, Event, EventType, Location, Outcome, Reservation, to_micros
from syncd.store import open_engine, sqlite_url, upgrade

T0 = to_micros(datetime(2026, 11, 23, 10, 0, tzinfo=UTC))
SEC = 1_000_000
# an expiry that no run of the suite reaches: T0 is a fixed day, engines without a fixed clock
# read the real one (T0 + 10**12, 11.6 days, had holds created expired from 2026-12-04 on)
FAR = T0 + 100 * 365 * 86_400 * SEC
_ids = itertools.count()


async def until(cond: Callable[[], object], within: float = 20.0) -> None:
    """Wait for `cond`; fails the test if it is not true within `within` seconds (a ceiling
    for a slow machine: the tests using it finish far sooner)."""
    deadline = asyncio.get_running_loop().time() + within
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def retailer(**channel_overrides: Any) -> LedgerConfig:
    """Two stores (POS authority) and a warehouse (WMS authority), a webshop and kiosks."""
    locations = {
        "paris": Location("paris", "store", "pos", safety_stock=1, pickup=True),
        "lille": Location("lille", "store", "pos", safety_stock=0, pickup=True),
        "lyon": Location("lyon", "warehouse", "wms"),
    }
    web = dict(name="web", connector="shop", sells_from=("lyon", "paris"), safety_stock=2,
               allocation=1.0, max_quantity=10_000)
    web.update(channel_overrides)
    channels = {
        "web": Channel(**web),  # type: ignore[arg-type]
        "kiosk": Channel("kiosk", "pos", ("paris", "lille"), per_location=True),
    }
    return LedgerConfig(locations=locations, channels=channels,
                        order_reservation_max_age=14 * 86_400 * SEC)


def ev(
    type_: EventType | str,
    sku: str = "SKU-1",
    qty: int = 1,
    at: int = T0,
    location: str | None = "paris",
    connector: str = "pos",
    event_id: str | None = None,
    **kw: Any,
) -> Event:
    return Event(
        connector=connector, event_id=event_id or f"e{next(_ids)}", type=EventType(type_),
        sku=sku, qty=qty, occurred_at=at, location=location, **kw,
    )


class FakeChannel:
    """A channel connector at the transport seam: records pushes, fails on demand."""

    per_location = False
    basis = "available"

    def __init__(self, name: str = "shop", max_batch: int = 250) -> None:
        self.name = name
        self.max_batch = max_batch
        self.shown: dict[tuple[str, str], int] = {}
        self.calls: list[list[PushItem]] = []
        self.fail_next = 0  # whole calls that raise TransientPushError
        self.conflict_once: set[tuple[str, str]] = set()
        self.refuse: set[str] = set()  # SKUs refused permanently
        self.gate: asyncio.Event | None = None

    async def start(self) -> None:
        return None

    async def events(self) -> AsyncIterator[Inbound]:  # pragma: no cover - push only
        nothing: tuple[Inbound, ...] = ()
        for inbound in nothing:
            yield inbound

    async def push(self, channel: str, items: Sequence[PushItem]) -> Sequence[PushResult]:
        if self.gate is not None:
            await self.gate.wait()
        self.calls.append(list(items))
        if self.fail_next:
            self.fail_next -= 1
            raise TransientPushError("503 Service Unavailable")
        out = []
        for it in items:
            key = (it.sku, it.location)
            if it.sku in self.refuse:
                out.append(PushResult(it.sku, it.location, PushStatus.PERMANENT,
                                      reason="unknown SKU"))
            elif key in self.conflict_once:
                self.conflict_once.discard(key)
                out.append(PushResult(it.sku, it.location, PushStatus.CONFLICT,
                                      remote=self.shown.get(key, 0)))
            else:
                self.shown[key] = it.desired
                out.append(PushResult(it.sku, it.location, PushStatus.OK))
        return out

    async def read_levels(
        self, channel: str, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], int]:
        return {k: self.shown[k] for k in keys if k in self.shown}

    async def webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookReply:
        return WebhookReply(404)

    def on_reservation(self, r: Reservation) -> None:
        return None

    @property
    def connected(self) -> bool:
        return True

    async def close(self) -> None:
        return None


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test against SQLite and against a real PostgreSQL."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path)
    pg = request.getfixturevalue("postgres")
    url: str = pg.create_database(f"t_{uuid.uuid4().hex[:12]}")
    return url


@asynccontextmanager
async def running_engine(
    url: str, config: LedgerConfig | None = None, **kw: Any
) -> AsyncIterator[Engine]:
    db = open_engine(url)
    await upgrade(db)
    engine = Engine(db, config or retailer(), Metrics(CollectorRegistry()), **kw)
    await engine.start()
    try:
        yield engine
    finally:
        if engine.running:
            await engine.stop()
        await db.dispose()


def outcomes(verdicts: list[list[Verdict]]) -> list[Outcome]:
    """The outcomes of the last webhook delivery."""
    return [v.outcome for v in verdicts[-1]]


@asynccontextmanager
async def webhook_endpoint(
    conn: Connector, engine: Engine, verdicts: list[list[Verdict]]
) -> AsyncIterator[str]:
    """The daemon's `POST /webhooks/{connector}`: reply after the commit."""

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        reply = await conn.webhook(headers, body)
        if reply.status >= 400:
            return web.json_response({"error": reply.error, "detail": reply.detail},
                                     status=reply.status)
        out = await engine.apply(reply.events, reply.dead) if reply.events or reply.dead else []
        verdicts.append(out)
        return web.json_response({"outcomes": [v.outcome.value for v in out]},
                                 status=reply.status)

    app = web.Application()
    app.router.add_post("/webhooks/shop", handle)
    async with serve_app(app) as base:
        yield f"{base}/webhooks/shop"

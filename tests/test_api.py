"""The HTTP API of a running daemon (real aiohttp listener, real SQLite): every route and every
error code, with JSON errors and never a traceback."""

from __future__ import annotations

import gc
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from syncd.app import Daemon
from syncd.config import parse_config
from syncd.model import Event, EventType
from syncd.sdnotify import Notifier
from syncd.tuning import GEN0_THRESHOLD, SWITCH_INTERVAL
from tests.servers import free_port

TOKEN = "test-token-5f1c9e"


def config_text(state_dir: Path, port: int, extra: str = "") -> str:
    return f"""
[daemon]
state_dir = "{state_dir}"
http_listen = "127.0.0.1:{port}"
api_token = "env:SYNCD_API_TOKEN"
max_body_bytes = 65536
hold_ttl = "1h"

[locations.paris]
kind = "store"
authority = "backoffice"
safety_stock = 1
pickup = true

[locations.lyon]
kind = "warehouse"
authority = "backoffice"

[connectors.backoffice]
type = "http_source"
{extra}
"""


class Api:
    def __init__(self, base: str, session: aiohttp.ClientSession, daemon: Daemon) -> None:
        self.base = base
        self.session = session
        self.daemon = daemon

    async def call(self, method: str, path: str, body: Any = None, *, token: str | None = TOKEN,
                   raw: bytes | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                            else None)
        async with self.session.request(method, self.base + path, data=data,
                                        headers=headers) as resp:
            text = await resp.text()
            assert "Traceback" not in text
            return resp.status, json.loads(text) if text else None


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    port = free_port()
    cfg = parse_config(config_text(tmp_path, port), environ={"SYNCD_API_TOKEN": TOKEN})
    daemon = Daemon(cfg, registry=CollectorRegistry(), notifier=Notifier(None))
    await daemon.start()
    async with aiohttp.ClientSession() as session:
        yield Api(f"http://127.0.0.1:{port}", session, daemon)
    await daemon.shutdown()


def count(sku: str = "A", qty: int = 5, loc: str = "paris", eid: str = "c1") -> dict[str, Any]:
    return {"connector": "backoffice", "location": loc, "event_id": eid, "type": "count",
            "sku": sku, "qty": qty, "occurred_at": "2026-11-23T10:00:00Z"}


async def test_health_and_readiness(api: Api) -> None:
    assert await api.call("GET", "/healthz", token=None) == (200, {"status": "ok"})
    code, body = await api.call("GET", "/readyz", token=None)
    assert code == 200
    assert body == {"ready": True, "database": True, "connectors": {"backoffice": True}}


async def test_v1_needs_the_bearer_token(api: Api) -> None:
    for token in (None, "wrong", TOKEN + "x"):
        code, body = await api.call("GET", "/v1/stock/A", token=token)
        assert code == 401
        assert body["error"] == "unauthorized"
    code, _ = await api.call("GET", "/v1/stock/A")
    assert code == 200


async def test_events_are_applied_and_answered_after_commit(api: Api) -> None:
    code, body = await api.call("POST", "/v1/events", {"events": [
        count(), {**count(), "event_id": "s1", "type": "sale", "qty": 2,
                  "occurred_at": "2026-11-23T10:00:01+01:00"}]})
    assert code == 200
    assert [r["outcome"] for r in body["results"]] == ["applied", "stale"]
    code, body = await api.call("POST", "/v1/events", count())
    assert body["results"][0]["outcome"] == "duplicate"
    code, stock = await api.call("GET", "/v1/stock/A")
    assert stock["locations"]["paris"] == {"on_hand": 5, "reserved": 0, "available": 4}
    engine = api.daemon.engine
    assert engine is not None
    async with engine.db.connect() as conn:
        rows = await conn.exec_driver_sql("SELECT event_id, outcome FROM events ORDER BY id")
        assert rows.fetchall() == [("c1", "applied"), ("s1", "stale")]


@pytest.mark.parametrize(("body", "detail"), [
    ({**count(), "qty": -1}, "qty: must be >= 0 for count"),
    ({**count(), "occurred_at": "2026-11-23T10:00:00"}, "occurred_at: timestamp must carry"),
    ({**count(), "connector": "nope"}, "events.1.connector: unknown connector 'nope'"),
    ({**count(), "location": "mars"}, "events.1.location: unknown location 'mars'"),
    ({**count(), "colour": "red"}, "events.1: unknown key 'colour'"),
    ({k: v for k, v in count().items() if k != "location"}, "location: required key missing"),
    (42, "events.1: must be a JSON object"),
])
async def test_bad_events_get_400_and_change_nothing(
    api: Api, body: Any, detail: str
) -> None:
    code, err = await api.call("POST", "/v1/events", {"events": [count(eid="ok"), body]})
    assert code == 400
    assert err["error"] == "bad_event"
    assert detail in err["detail"]
    _, stock = await api.call("GET", "/v1/stock/A")
    assert stock["locations"] == {}  # the good event in the same request was not applied


async def test_malformed_json_and_oversized_bodies(api: Api) -> None:
    code, err = await api.call("POST", "/v1/events", raw=b"{not json")
    assert (code, err["error"]) == (400, "bad_request")
    code, err = await api.call("POST", "/v1/events", raw=b"[" + b" " * 70_000 + b"]")
    assert (code, err["error"]) == (413, "body_too_large")


async def test_unknown_routes_and_methods_are_json(api: Api) -> None:
    code, err = await api.call("GET", "/v1/nothing-here")
    assert (code, err["error"]) == (404, "not_found")
    code, err = await api.call("PUT", "/v1/holds")
    assert (code, err["error"]) == (405, "method_not_allowed")
    code, err = await api.call("POST", "/webhooks/ghost", {})
    assert (code, err["error"]) == (404, "not_found")
    code, err = await api.call("POST", "/webhooks/backoffice", {})
    assert code == 404


async def test_hold_lifecycle_through_the_api(api: Api) -> None:
    await api.call("POST", "/v1/events", count(qty=5))  # available 4 (safety stock 1)
    req = {"hold_id": "H1", "order_id": "W-1", "sku": "A", "location": "paris", "qty": 3}
    code, hold = await api.call("POST", "/v1/holds", req)
    assert code == 201
    assert hold["state"] == "held"
    assert hold["qty"] == 3
    # the same body again is the same hold; a different body under the same id conflicts
    assert (await api.call("POST", "/v1/holds", req))[0] == 200
    code, err = await api.call("POST", "/v1/holds", {**req, "qty": 1})
    assert (code, err["error"]) == (409, "hold_conflict")
    code, err = await api.call("POST", "/v1/holds", {**req, "hold_id": "H2", "qty": 2})
    assert (code, err["error"]) == (409, "insufficient_stock")
    code, got = await api.call("GET", "/v1/holds/H1")
    assert (code, got["state"]) == (200, "held")
    code, done = await api.call("POST", "/v1/holds/H1/collect")
    assert (code, done["state"]) == (200, "collected")
    _, stock = await api.call("GET", "/v1/stock/A")
    assert stock["locations"]["paris"] == {"on_hand": 2, "reserved": 0, "available": 1}
    code, err = await api.call("DELETE", "/v1/holds/H1")
    assert (code, err["error"]) == (409, "hold_collected")


async def test_hold_release_and_errors(api: Api) -> None:
    await api.call("POST", "/v1/events", count(qty=5))
    code, err = await api.call("GET", "/v1/holds/nope")
    assert (code, err["error"]) == (404, "unknown_hold")
    code, err = await api.call("DELETE", "/v1/holds/nope")
    assert (code, err["error"]) == (404, "unknown_hold")
    req = {"hold_id": "H9", "order_id": "W-9", "sku": "A", "location": "paris", "qty": 1}
    await api.call("POST", "/v1/holds", req)
    code, rel = await api.call("DELETE", "/v1/holds/H9")
    assert (code, rel["state"]) == (200, "released")
    assert (await api.call("DELETE", "/v1/holds/H9"))[0] == 200  # idempotent
    for bad, field in [({**req, "qty": 0}, "qty"), ({**req, "extra": 1}, "extra"),
                       ({**req, "ttl": "forever"}, "ttl"), ({**req, "location": "mars"},
                                                             "location")]:
        code, err = await api.call("POST", "/v1/holds", {**bad, "hold_id": "X"})
        assert (code, err["error"]) == (400, "bad_request")
        assert err["detail"].startswith(field)
    code, err = await api.call("POST", "/v1/holds",
                               {**req, "hold_id": "X", "location": "lyon"})
    assert (code, err["error"]) == (400, "not_pickup_location")


async def test_metrics_are_exposed_with_bounded_labels(api: Api) -> None:
    await api.call("POST", "/v1/events", count(sku="SKU-SECRET-123"))
    async with api.session.get(api.base + "/metrics") as resp:
        text = await resp.text()
    assert 'syncd_events_total{connector="backoffice",outcome="applied",type="count"} 1.0' in text
    assert "syncd_batch_apply_seconds_bucket" in text
    assert "SKU-SECRET-123" not in text


async def test_the_run_process_tunes_the_collector_around_the_loaded_state(
    tmp_path: Path,
) -> None:
    """`syncd run` (tune) raises the young-generation threshold before the engine loads its
    state and freezes that state afterwards, and shortens the GIL's switch interval; the daemon
    works as before."""
    before = gc.get_threshold()
    switch = sys.getswitchinterval()
    port = free_port()
    cfg = parse_config(config_text(tmp_path, port), environ={"SYNCD_API_TOKEN": TOKEN})
    daemon = Daemon(cfg, registry=CollectorRegistry(), notifier=Notifier(None), tune=True)
    gc.unfreeze()
    try:
        await daemon.start()
        assert gc.get_threshold()[0] == GEN0_THRESHOLD
        assert gc.get_freeze_count() > 0
        assert sys.getswitchinterval() == SWITCH_INTERVAL != switch
        engine = daemon.require_engine()
        await engine.apply([Event("backoffice", "c1", EventType.COUNT, "A", 5, 1, "paris")])
        assert engine.ledger.levels[("A", "paris")].on_hand == 5
    finally:
        await daemon.shutdown()
        gc.unfreeze()
        gc.set_threshold(*before)
        sys.setswitchinterval(switch)

"""Hypothesis fuzzing of every inbound parser, and of the HTTP bodies against a running daemon.

Allowed outcomes: a clear error (`MalformedMessage`, `EdiError`), a dead letter, or a 4xx with a
JSON error. Not allowed: any other exception, a 5xx, a hang (every request has a deadline), or a
partial application (after a refused request the ledger, the levels and the reservations are
exactly as before).

The number of inputs tried per parser is written to the figures file (RELIABILITY.md).
`SYNCD_SOAK=1` tries ten times more.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.base import ConnectorContext
from connectors.edi_inventory import Document, EdiError, parse_any
from connectors.edi_inventory.parse import decode
from connectors.shopify import ShopifyConfig, ShopifyConnector
from connectors.shopify.mapping import TOPICS, sign
from syncd.model import Channel, Location
from syncd.wire import MalformedMessage, parse_api_events, parse_message
from tests.reliability.helpers import (
    API_TOKEN,
    REPO,
    SECRET_ENV,
    WATCH,
    WEBHOOK_SECRET,
    levels_now,
    record,
    retail_config,
    soak,
    sqlite_rows,
)
from tests.servers import free_port

SCALE = 10 if soak() else 1
PURE = settings(max_examples=600 * SCALE, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
HTTP = settings(max_examples=150 * SCALE, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
TRIED: Counter[str] = Counter()
LOCATIONS = ("paris", "lyon")
CONNECTORS = ("backoffice", "shop")
EDI_FIXTURES = sorted((REPO / "tests" / "fixtures" / "edi").glob("*.edi"))


@pytest.fixture(scope="module", autouse=True)
def _figures() -> Iterator[None]:
    yield
    record("fuzzing", "python3 -m pytest -q tests/reliability/test_fuzz.py"
           + (" (SYNCD_SOAK=1)" if soak() else ""),
           inputs_by_parser=dict(sorted(TRIED.items())), inputs_total=sum(TRIED.values()))


# -- strategies -------------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40))
json_any = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=12), inner, max_size=5), max_leaves=16)
texts = st.text(max_size=300) | st.sampled_from(["", " ", "\x00", "\ud800", "a" * 256, "é" * 300])
stamps = st.sampled_from([
    "2026-11-23T10:00:00Z", "2026-11-23T10:00:00", "2026-11-23T10:00:00+14:00",
    "1969-12-31T23:59:59Z", "9999-12-31T23:59:59-12:00", "2026-02-30T10:00:00Z", "now", "",
]) | texts
event_like = st.fixed_dictionaries(
    {
        "event_id": texts | scalars,
        "type": st.sampled_from(["count", "sale", "return", "receipt", "adjust", "pickup",
                                 "order", "hold_create", "COUNT"]) | scalars,
        "sku": texts | scalars,
        "qty": st.integers(-(10**10), 10**10) | st.integers(-(2**70), 2**70) | scalars,
        "occurred_at": stamps | scalars,
    },
    optional={
        "connector": st.sampled_from([*CONNECTORS, "pos", "api", "syncd"]) | scalars,
        "location": st.sampled_from([*LOCATIONS, "mars", ""]) | scalars,
        "seq": st.integers(-5, 2**64) | scalars, "source": texts | scalars,
        "hold_id": texts | scalars, "extra": json_any,
    },
)
messages = (event_like | st.fixed_dictionaries({"events": st.lists(event_like, max_size=5)})
            | st.fixed_dictionaries({"events": json_any}) | json_any)


def as_bytes(doc: Any) -> bytes:
    return json.dumps(doc).encode()


payloads = (messages.map(as_bytes) | st.binary(max_size=300)
            | st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n)
            | st.integers(1, 3000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n))


# -- pure parsers -----------------------------------------------------------------------------


@PURE
@given(location=st.sampled_from([*LOCATIONS, "mars"]) | st.text(max_size=10), payload=payloads)
def test_mqtt_pos_messages(location: str, payload: bytes) -> None:
    TRIED["mqtt_pos message (syncd.wire.parse_message)"] += 1
    try:
        events = parse_message(location, payload, LOCATIONS, connector="pos", max_payload=4096)
    except MalformedMessage as exc:
        reason = exc.reason
        assert reason
        return
    assert events and all(e.location == location and e.connector == "pos" for e in events)
    assert all(len(e.event_id) <= 255 and len(e.sku) <= 255 for e in events)


@PURE
@given(payload=payloads)
def test_api_event_bodies(payload: bytes) -> None:
    TRIED["POST /v1/events body (syncd.wire.parse_api_events)"] += 1
    try:
        events = parse_api_events(payload, LOCATIONS, CONNECTORS)
    except MalformedMessage as exc:
        reason = exc.reason
        assert reason
        return
    assert events and all(e.connector in CONNECTORS and e.location in LOCATIONS for e in events)


def shop_connector() -> ShopifyConnector:
    cfg = ShopifyConfig.model_validate({
        "shop_url": "https://example.myshopify.com", "access_token": "env:SHOPIFY_TOKEN",
        "webhook_secret": "env:SHOPIFY_WEBHOOK_SECRET",
        "location_id": "gid://shopify/Location/1"})
    ctx = ConnectorContext(
        locations={"paris": Location("paris", "store", "pos", pickup=True)},
        channels={"web": Channel("web", "shop", ("paris",))}, http=None)
    return ShopifyConnector("shop", cfg, ctx)


@pytest.fixture(autouse=True)
def _shop_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in SECRET_ENV.items():
        monkeypatch.setenv(k, v)


shop_payloads = (json_any | st.fixed_dictionaries({}, optional={
    "id": scalars | st.integers(-3, 10**20), "line_items": json_any | st.lists(
        st.fixed_dictionaries({}, optional={"sku": texts | scalars,
                                            "quantity": st.integers(-5, 10**10) | scalars}),
        max_size=4),
    "created_at": stamps | scalars, "updated_at": stamps | scalars,
    "cancelled_at": stamps | scalars, "location_id": scalars, "fulfillments": json_any,
    "inventory_item_id": scalars | st.integers(0, 10**20), "available": scalars,
})).map(as_bytes) | st.binary(max_size=300)
topics = st.sampled_from([*TOPICS, "orders/updated", "", "ORDERS/CREATE"]) | st.text(max_size=20)


@PURE
@given(body=shop_payloads, topic=topics, signed=st.booleans(), event_id=texts,
       signature=st.text(max_size=60))
def test_shopify_webhooks(body: bytes, topic: str, signed: bool, event_id: str,
                          signature: str) -> None:
    TRIED["Shopify webhook (ShopifyConnector.webhook)"] += 1
    conn = shop_connector()
    headers = {"X-Shopify-Topic": topic, "X-Shopify-Event-Id": event_id,
               "X-Shopify-Hmac-SHA256": sign(WEBHOOK_SECRET.encode(), body) if signed
               else signature}
    reply = asyncio.run(conn.webhook(headers, body))
    assert reply.status in (200, 400, 401)
    if not signed:
        assert reply.status == 401 and not reply.events and not reply.dead
    for e in reply.events:
        assert e.connector == "shop" and 0 < len(e.event_id) <= 255 and len(e.sku) <= 255
    for d in reply.dead:
        assert d.reason


def edi_outcome(text: str) -> None:
    try:
        doc = parse_any(text)
    except EdiError as err:
        reason = str(err)
        assert reason
        return
    assert isinstance(doc, Document)
    assert all(isinstance(q, int) and q >= 0 for _, q in doc.lines)


@PURE
@given(data=st.binary(max_size=400) | st.text(max_size=400).map(str.encode))
def test_edi_arbitrary_files(data: bytes) -> None:
    TRIED["EDI file (parse_any), arbitrary"] += 1
    edi_outcome(decode(data))


@PURE
@given(name=st.sampled_from(EDI_FIXTURES), cuts=st.lists(
    st.tuples(st.integers(0, 5000), st.integers(0, 40), st.binary(max_size=8)),
    min_size=1, max_size=4))
def test_edi_mutated_files(name: Path, cuts: list[tuple[int, int, bytes]]) -> None:
    TRIED["EDI file (parse_any), mutated fixtures"] += 1
    data = name.read_bytes()
    for at, drop, insert in cuts:
        i = at % (len(data) + 1)
        data = data[:i] + insert + data[i + drop:]
    edi_outcome(decode(data))


# -- the HTTP bodies against a running daemon -------------------------------------------------


class Running:
    """A `syncd run` subprocess for synchronous (hypothesis) tests."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.state = tmp / "state"
        config = tmp / "syncd.toml"
        # the webshop's Shopify is unreachable: orders are taken, pushes fail and are retried
        config.write_text(retail_config(self.state, self.port,
                                        shop_url="http://127.0.0.1:9"))
        self.log = tmp / "fuzz-daemon.log"
        WATCH.logs.append(self.log)
        self._log = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "syncd.cli", "run", "--config", str(config)], cwd=REPO,
            env={**os.environ, **SECRET_ENV}, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if self.request("GET", "/healthz", token=None)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.05)

    def request(self, method: str, path: str, data: bytes | None = None, *,
                token: str | None = API_TOKEN,
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data,
                                     method=method, headers=headers or {})
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        text = raw.decode("utf-8", "replace")
        WATCH.body(text)
        assert "Traceback" not in text
        return status, json.loads(text) if text else None

    def fingerprint(self) -> tuple[Any, ...]:
        return (
            sqlite_rows(self.state, "SELECT count(*), max(id) FROM events")[0],
            sorted(asyncio.run(levels_now(self.state)).items()),
            sqlite_rows(self.state, "SELECT count(*), group_concat(state) FROM reservations")[0],
        )

    def stop(self) -> int:
        self.proc.terminate()
        code = self.proc.wait(40)
        self._log.close()
        return code


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    r = Running(tmp_path_factory.mktemp("fuzz"))
    status, _ = r.request("POST", "/v1/events", json.dumps({"events": [
        {"connector": "backoffice", "location": loc, "event_id": f"seed-{loc}",
         "type": "count", "sku": "FZ", "qty": 1000, "occurred_at": "2026-01-01T00:00:00Z"}
        for loc in LOCATIONS]}).encode())
    assert status == 200
    yield r
    assert r.stop() == 0, r.log.read_text()[-3000:]


def refused_cleanly(r: Running, before: tuple[Any, ...], status: int, body: Any) -> None:
    assert status < 500, (status, body)
    if status >= 400:
        assert isinstance(body, dict) and isinstance(body.get("error"), str), body
        assert r.fingerprint() == before, "a refused request changed the state"


api_events = (st.fixed_dictionaries({"events": st.lists(
    event_like.map(lambda d: {"connector": "backoffice", "location": "paris", **d}),
    min_size=1, max_size=4)}) | event_like).map(as_bytes) | payloads


@HTTP
@given(body=api_events)
def test_http_post_events(running: Running, body: bytes) -> None:
    TRIED["HTTP POST /v1/events"] += 1
    before = running.fingerprint()
    status, answer = running.request("POST", "/v1/events", body)
    refused_cleanly(running, before, status, answer)
    if status == 200:
        assert len(answer["results"]) >= 1


holds = st.fixed_dictionaries(
    {"order_id": texts | scalars, "sku": st.sampled_from(["FZ", "NONE"]) | texts | scalars,
     "location": st.sampled_from([*LOCATIONS, "mars"]) | scalars,
     "qty": st.integers(-3, 2000) | st.integers(-(2**70), 2**70) | scalars},
    optional={"hold_id": texts | scalars, "ttl": st.sampled_from(
        ["1s", "15m", "0s", "-1h", "forever", "10000000000000d", ""]) | scalars,
        "extra": json_any})


def shallow(body: bytes) -> bool:
    """Not nested past Python's recursion limit (see the xfail test below)."""
    return body.count(b"[") + body.count(b"{") < 500


@HTTP
@given(body=holds.map(as_bytes) | payloads.filter(shallow))
def test_http_post_holds(running: Running, body: bytes) -> None:
    TRIED["HTTP POST /v1/holds"] += 1
    before = running.fingerprint()
    status, answer = running.request("POST", "/v1/holds", body)
    refused_cleanly(running, before, status, answer)
    assert status in (200, 201, 400, 404, 409, 413), (status, answer)


@pytest.mark.parametrize("body", [b"[" * 5000 + b"]" * 5000, b'{"a":' * 3000 + b"1" + b"}" * 3000],
                         ids=["array", "object"])
def test_http_deeply_nested_hold_body_is_a_400(running: Running, body: bytes) -> None:
    before = running.fingerprint()
    status, answer = running.request("POST", "/v1/holds", body)
    assert status == 400, (status, answer)
    refused_cleanly(running, before, status, answer)


@HTTP
@given(hold_id=st.text(min_size=1, max_size=80), verb=st.sampled_from(["GET", "POST", "DELETE"]))
def test_http_hold_paths(running: Running, hold_id: str, verb: str) -> None:
    TRIED["HTTP /v1/holds/{id} (GET, collect, DELETE)"] += 1
    quoted = urllib.request.quote(hold_id, safe="")
    path = f"/v1/holds/{quoted}" + ("/collect" if verb == "POST" else "")
    before = running.fingerprint()
    status, answer = running.request(verb, path)
    refused_cleanly(running, before, status, answer)


@HTTP
@given(body=shop_payloads, topic=topics, signed=st.booleans())
def test_http_shopify_webhooks(running: Running, body: bytes, topic: str, signed: bool) -> None:
    TRIED["HTTP POST /webhooks/shop"] += 1
    headers = {"X-Shopify-Topic": topic if topic.isprintable() and topic.isascii() else "x",
               "X-Shopify-Hmac-SHA256": sign(WEBHOOK_SECRET.encode(), body) if signed else "x"}
    before = running.fingerprint()
    status, answer = running.request("POST", "/webhooks/shop", body, token=None,
                                     headers=headers)
    refused_cleanly(running, before, status, answer)
    if not signed:
        assert status == 401

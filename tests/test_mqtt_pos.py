"""The MQTT POS connector against a real mosquitto and the real engine on SQLite.

What matters most: a message is acknowledged to the broker only after its commit, so nothing the
broker considers delivered is ever lost — not when the connector closes early, not when its
connection drops, not when the broker restarts, not on SIGKILL (a child process is killed).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import ValidationError
from sqlalchemy import select

from connectors.base import Connector, ConnectorContext, PushItem, TransientPushError
from connectors.mqtt_pos import MalformedMessage, MqttPosConnector, parse_message, topic_sku
from connectors.mqtt_pos._connector import _taken_over
from syncd.engine import Engine
from syncd.model import EventType, to_micros
from syncd.push import Pusher
from syncd.store import open_engine, sqlite_url
from syncd.store import repository as repo
from syncd.store import tables as t
from tests.core import SEC, T0, ev, retailer, running_engine
from tests.servers import MosquittoServer

T0_ISO = "2026-11-23T10:00:00Z"
WAIT = 15.0  # generous upper bound for anything to arrive; tests finish far sooner
LOCATIONS = {"paris", "lille", "lyon"}
PARIS = "syncd/pos/paris/events"


# -- helpers -----------------------------------------------------------------------------------


def at(seconds: float) -> str:
    ts = datetime(2026, 11, 23, 10, 0, tzinfo=UTC) + timedelta(seconds=seconds)
    return ts.isoformat().replace("+00:00", "Z")


def event(
    event_id: str, type_: str = "sale", qty: int = 1, sku: str = "SKU-1", when: float = 1,
    **kw: Any,
) -> dict[str, Any]:
    return {"event_id": event_id, "type": type_, "sku": sku, "qty": qty,
            "occurred_at": at(when), **kw}


def dumps(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def on_hand(engine: Engine, sku: str = "SKU-1", loc: str = "paris") -> int | None:
    lvl = engine.ledger.levels.get((sku, loc))
    return None if lvl is None else lvl.on_hand


async def until(pred: Callable[[], bool], what: str, within: float = WAIT) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def make_connector(url: str, engine: Engine, name: str = "pos", **cfg: Any) -> MqttPosConnector:
    config = MqttPosConnector.config_model.model_validate({"url": url, **cfg})
    ledger_cfg = engine.ledger.config
    ctx = ConnectorContext(
        locations=ledger_cfg.locations,
        channels={n: c for n, c in ledger_cfg.channels.items() if c.connector == name},
        read_available=engine.available_by_location,
        last_seq=lambda src: engine.last_seq.get((name, src)),
    )
    return MqttPosConnector(name, config, ctx)


class Wiring:
    """connector → engine, as the daemon does it: `events()` feeds `engine.submit`."""

    def __init__(self, conn: MqttPosConnector, engine: Engine) -> None:
        self.conn = conn
        self.engine = engine
        self.task: asyncio.Task[None] | None = None

    def consume(self) -> None:
        async def feed() -> None:
            async for inbound in self.conn.events():
                await self.engine.submit(inbound)

        self.task = asyncio.create_task(feed())


@asynccontextmanager
async def wired(
    url: str, engine: Engine, *, consume: bool = True, **cfg: Any
) -> AsyncIterator[Wiring]:
    conn = make_connector(url, engine, **cfg)
    engine.reservation_listeners.append(conn.on_reservation)
    w = Wiring(conn, engine)
    await conn.start()
    assert conn.connected
    if consume:
        w.consume()
    try:
        yield w
    finally:
        if w.task is not None:
            w.task.cancel()
            with suppress(asyncio.CancelledError):
                await w.task
        await conn.close()
        engine.reservation_listeners.remove(conn.on_reservation)


@asynccontextmanager
async def mqtt_client(
    url: str, client_id: str | None = None, *, persistent: bool = False
) -> AsyncIterator[aiomqtt.Client]:
    host, port = host_port(url)
    props = None
    if persistent:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
    async with aiomqtt.Client(
        host, port, identifier=client_id or f"t-{uuid.uuid4().hex[:8]}",
        protocol=aiomqtt.ProtocolVersion.V5, clean_start=not persistent, properties=props,
        max_inflight_messages=1000,
    ) as client:
        client.pending_calls_threshold = 10_000
        yield client


async def publish_all(url: str, messages: list[tuple[str, bytes]]) -> None:
    async with mqtt_client(url) as pub:
        for topic, payload in messages:
            await pub.publish(topic, payload, qos=1)


async def next_message(client: aiomqtt.Client, within: float = WAIT) -> aiomqtt.Message:
    async with asyncio.timeout(within):
        async for message in client.messages:
            return message
    raise AssertionError("unreachable")


@pytest.fixture
def url(tmp_path: Path) -> str:
    return sqlite_url(tmp_path)


# -- contract ----------------------------------------------------------------------------------


async def test_is_a_connector_with_the_documented_defaults(
    mosquitto: MosquittoServer, url: str
) -> None:
    async with running_engine(url, retailer()) as engine:
        conn = make_connector(mosquitto.url, engine)
        assert isinstance(conn, Connector)
        assert conn.client_id == "syncd-pos"
        assert (conn.max_batch, conn.per_location, conn.basis) == (500, True, "available")
        cfg = conn.config
        assert (cfg.topic_prefix, cfg.session_expiry, cfg.max_payload, cfg.reconnect_max) == (
            "syncd", 7 * 86400.0, 262144, 30.0)
        reply = await conn.webhook({}, b"{}")
        assert (reply.status, reply.error) == (404, "not_found")
        with pytest.raises(NotImplementedError):
            await conn.read_levels("kiosk", [("SKU-1", "paris")])


def test_config_validation() -> None:
    model = MqttPosConnector.config_model
    ok = model.model_validate({"url": "mqtts://broker.example"})
    assert (ok.host, ok.port, ok.tls) == ("broker.example", 8883, True)
    ok = model.model_validate({"url": "mqtt://[::1]"})
    assert (ok.host, ok.port, ok.tls) == ("::1", 1883, False)
    for bad in ("http://x:1883", "mqtt://user:pw@x:1883", "mqtt://x:99999", "mqtt://x/path",
                "mqtt://"):
        with pytest.raises(ValidationError) as exc:
            model.model_validate({"url": bad})
        assert "pw" not in str(exc.value)
    for key, value in (("topic_prefix", "a/+/b"), ("topic_prefix", "/x"), ("session_expiry", 3),
                       ("session_expiry", "0s"), ("max_payload", "1000"), ("surprise", 1),
                       ("password", "inline-secret")):
        with pytest.raises(ValidationError) as exc:
            model.model_validate({"url": "mqtt://x", key: value})
        assert "inline-secret" not in str(exc.value)
    with pytest.raises(ValidationError, match="username"):
        model.model_validate({"url": "mqtt://x", "password": "env:PATH"})
    ok = model.model_validate({"url": "mqtt://x", "username": "u", "password": "env:PATH",
                               "session_expiry": "1h", "reconnect_max": "500ms"})
    assert (ok.session_expiry, ok.reconnect_max) == (3600.0, 0.5)
    assert "PATH" not in repr(ok) and os.environ["PATH"] not in repr(ok)


# -- 1. inbound ------------------------------------------------------------------------------


async def test_sales_reach_the_ledger_exactly(mosquitto: MosquittoServer, url: str) -> None:
    async with running_engine(url, retailer()) as engine, wired(mosquitto.url, engine) as w:
        msgs = [(PARIS, dumps(event("c1", "count", 100, when=0)))]
        msgs += [(PARIS, dumps(event(f"s{i}", qty=1, when=i))) for i in range(1, 21)]
        msgs.append((PARIS, dumps({"events": [event(f"b{i}", qty=2, when=30 + i)
                                                for i in range(5)]})))
        msgs.append(("syncd/pos/lille/events", dumps(event("l1", "receipt", 7))))
        await publish_all(mosquitto.url, msgs)
        await until(lambda: w.conn.stats.acked == len(msgs), "every message acknowledged")
        assert on_hand(engine) == 100 - 20 - 10
        assert on_hand(engine, loc="lille") == 7
        assert w.conn.stats.dead == 0


# -- 2. acknowledgement after commit ---------------------------------------------------------


async def test_unacknowledged_messages_are_redelivered_to_a_new_instance(
    mosquitto: MosquittoServer, url: str
) -> None:
    msgs = [(PARIS, dumps(event("c1", "count", 10, when=0)))]
    msgs += [(PARIS, dumps(event(f"s{i}", when=i))) for i in range(1, 5)]
    async with running_engine(url, retailer()) as engine:
        # received, never handed to the engine: nothing may be acknowledged
        async with wired(mosquitto.url, engine, consume=False) as w:
            await publish_all(mosquitto.url, msgs)
            await until(lambda: w.conn.stats.received == len(msgs), "messages received")
            assert w.conn.stats.acked == 0
        assert on_hand(engine) is None

        # a new instance with the same client id gets them again from the broker
        async with wired(mosquitto.url, engine) as w2:
            await until(lambda: w2.conn.stats.acked == len(msgs), "redelivered and acknowledged")
            assert w2.conn.stats.received == len(msgs)
            assert on_hand(engine) == 6

        # all acknowledged now: a third instance receives nothing
        async with wired(mosquitto.url, engine) as w3:
            await asyncio.sleep(0.3)
            assert w3.conn.stats.received == 0
        assert on_hand(engine) == 6


async def test_dropped_connection_redelivers_and_skips_stale_acks(
    mosquitto: MosquittoServer, url: str
) -> None:
    msgs = [(PARIS, dumps(event("c1", "count", 10, when=0)))]
    msgs += [(PARIS, dumps(event(f"s{i}", when=i))) for i in range(1, 5)]
    async with running_engine(url, retailer()) as engine, \
            wired(mosquitto.url, engine, consume=False) as w:
        conn = w.conn
        await publish_all(mosquitto.url, msgs)
        await until(lambda: conn.stats.received == len(msgs), "messages received")
        # the TCP connection dies without a DISCONNECT (as when the process is killed)
        live = conn._conn
        assert live is not None
        sock = live.paho.socket()
        assert isinstance(sock, socket.socket)
        sock.shutdown(socket.SHUT_RDWR)
        await until(lambda: conn.stats.connections == 2 and conn.connected, "reconnected")
        await until(lambda: conn.stats.received == 2 * len(msgs), "broker re-sent everything")
        w.consume()
        # the first copies commit after their connection is gone: their acks are skipped
        await until(lambda: conn.stats.acked == len(msgs), "second copies acknowledged")
        assert conn.stats.ack_skipped == len(msgs)
        assert on_hand(engine) == 6
        assert engine.metrics.events.labels("pos", "sale", "duplicate")._value.get() == 4


async def test_a_second_client_with_our_client_id(mosquitto: MosquittoServer, url: str) -> None:
    async with running_engine(url, retailer()) as engine, \
            wired(mosquitto.url, engine, reconnect_max="200ms") as w:
        async with mqtt_client(mosquitto.url, "syncd-pos"):
            await until(lambda: w.conn.stats.connections >= 2, "the connector took it back")
        await until(lambda: w.conn.connected, "connected")
        await publish_all(mosquitto.url, [(PARIS, dumps(event("c1", "count", 3)))])
        await until(lambda: on_hand(engine) == 3, "events flow again")
    # brokers that say why (DISCONNECT 0x8E, which mosquitto 2.0.11 does not send) are logged
    # as a shared client id and retried at the slowest pace
    taken = aiomqtt.MqttCodeError(ReasonCode(PacketTypes.DISCONNECT, identifier=0x8E))
    wrapped = aiomqtt.MqttError("Disconnected during message iteration")
    wrapped.__cause__ = taken
    assert _taken_over(taken) and _taken_over(wrapped)
    assert not _taken_over(aiomqtt.MqttError("Operation timed out"))


# -- 2b. SIGKILL -----------------------------------------------------------------------------

CHILD = "child"


async def _child_main(broker: str, db: str, delay: float) -> None:  # pragma: no cover
    async with running_engine(db, retailer()) as engine:
        conn = make_connector(broker, engine)
        await conn.start()
        print("ready", flush=True)
        async for inbound in conn.events():
            if delay:
                await asyncio.sleep(delay)  # a slow engine: deliveries wait, unacknowledged
            await engine.submit(inbound)


@contextmanager
def child(broker: str, db: str, delay: float = 0.0) -> Iterator[subprocess.Popen[str]]:
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.Popen(
        [sys.executable, __file__, CHILD, broker, db, str(delay)], cwd=root, env=env,
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


async def _levels(db: str) -> int | None:
    """The on-hand the database gives (level row plus the ledger after it)."""
    dbe = open_engine(db)
    try:
        async with dbe.connect() as c:
            found = await repo.load_levels(c, [("SKU-1", "paris")])
    finally:
        await dbe.dispose()
    lvl = found.get(("SKU-1", "paris"))
    return None if lvl is None else lvl.on_hand


async def test_sigkill_loses_nothing(mosquitto: MosquittoServer, tmp_path: Path) -> None:
    db = sqlite_url(tmp_path)
    n = 300
    msgs = [(PARIS, dumps(event("c1", "count", 1000, when=0)))]
    msgs += [(PARIS, dumps(event(f"s{i}", when=i))) for i in range(1, n + 1)]
    async with running_engine(db, retailer()):
        pass  # create the schema once
    with child(mosquitto.url, db, delay=0.01) as proc:
        publisher = asyncio.create_task(publish_all(mosquitto.url, msgs))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while (await _levels(db) or 1000) > 1000 - 20:
            assert loop.time() < deadline, "child made no progress"
            await asyncio.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream, with deliveries in flight
        await asyncio.wait_for(publisher, WAIT)
    killed_at = await _levels(db)
    assert killed_at is not None and killed_at > 1000 - n
    with child(mosquitto.url, db):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while await _levels(db) != 1000 - n:
            assert loop.time() < deadline, f"on-hand {await _levels(db)}, want {1000 - n}"
            await asyncio.sleep(0.02)


# -- 3. broker restart ------------------------------------------------------------------------


async def test_broker_restart_mid_stream_loses_nothing(
    mosquitto: MosquittoServer, url: str
) -> None:
    n = 60
    msgs = [(PARIS, dumps(event(f"s{i}", when=i))) for i in range(1, n + 1)]
    async with running_engine(url, retailer()) as engine, \
            wired(mosquitto.url, engine, reconnect_max="500ms") as w:
        conn = w.conn
        await publish_all(mosquitto.url, [(PARIS, dumps(event("c1", "count", 500, when=0)))])
        await until(lambda: on_hand(engine) == 500, "count applied")
        # slow the engine down so that deliveries are in flight when the broker goes away
        assert w.task is not None
        w.task.cancel()
        with suppress(asyncio.CancelledError):
            await w.task
        await publish_all(mosquitto.url, msgs[: n // 2])
        await until(lambda: conn.stats.received >= 1 + n // 2, "first half received")
        await asyncio.to_thread(mosquitto.restart)
        w.consume()
        await until(lambda: conn.stats.connections >= 2 and conn.connected, "reconnected")
        await publish_all(mosquitto.url, msgs[n // 2 :])
        await until(lambda: on_hand(engine) == 500 - n, f"on-hand {500 - n}")
        assert not conn.stats.dead


# -- 4. malformed messages --------------------------------------------------------------------

MALFORMED: list[tuple[str, bytes, str]] = [
    (PARIS, b"{nope", "not JSON"),
    (PARIS, b"\xff\xfe{}", "not UTF-8"),
    (PARIS, dumps({k: v for k, v in event("m1").items() if k != "sku"}),
     "events.0.sku: is required"),
    (PARIS, dumps(event("m2", foo=1)), "events.0: unknown key 'foo'"),
    (PARIS, dumps(event("m3", qty=-2)), "events.0.qty: must be > 0 for sale"),
    (PARIS, dumps({**event("m4"), "occurred_at": "2026-11-23T10:00:00"}),
     "events.0.occurred_at: timestamp must carry a time zone"),
    ("syncd/pos/nowhere/events", dumps(event("m5")), "unknown location 'nowhere'"),
    (PARIS, dumps(event("m6", "teleport")), "events.0.type: unknown event type 'teleport'"),
    (PARIS, dumps(event("m7", qty="3")), "events.0.qty: must be an integer"),  # type: ignore[arg-type]
    (PARIS, dumps({"events": [event("m8a"), event("m8b", "sale", 0)]}),
     "events.1.qty: must be > 0 for sale"),
    (PARIS, dumps({"events": [event(f"m9-{i}") for i in range(40)]}),
     "exceeds max_payload 2048"),
]


async def test_malformed_messages_are_dead_lettered_and_the_loop_goes_on(
    mosquitto: MosquittoServer, url: str
) -> None:
    async with running_engine(url, retailer()) as engine, \
            wired(mosquitto.url, engine, max_payload=2048) as w:
        await publish_all(mosquitto.url, [(topic, body) for topic, body, _ in MALFORMED])
        await publish_all(mosquitto.url, [(PARIS, dumps(event("ok", "count", 5)))])
        await until(lambda: on_hand(engine) == 5, "the valid event after the bad ones")
        await until(lambda: w.conn.stats.acked == len(MALFORMED) + 1, "all acknowledged")
        async with engine.db.connect() as c:
            rows = (await c.execute(select(t.dead_letters).order_by(t.dead_letters.c.id))).all()
            events = (await c.execute(select(t.events.c.event_id))).scalars().all()
        assert len(rows) == len(MALFORMED)
        for row, (topic, body, reason) in zip(rows, MALFORMED, strict=True):
            assert reason in row.reason, (row.reason, reason)
            assert (row.connector, row.origin, bytes(row.payload)) == ("pos", topic, body)
        assert list(events) == ["ok"]  # nothing of a partly bad message was applied
        value = engine.metrics.registry.get_sample_value(
            "syncd_dead_letters_total", {"connector": "pos"})
        assert value == len(MALFORMED)


# -- 5. sequence gaps -------------------------------------------------------------------------


async def test_sequence_gap_asks_the_till_for_fresh_counts(
    mosquitto: MosquittoServer, url: str
) -> None:
    def seq(n: int) -> tuple[str, bytes]:
        return PARIS, dumps(event(f"T1-{n}", "receipt", 1, when=n, source="T1", seq=n))

    async with running_engine(url, retailer()) as engine, mqtt_client(mosquitto.url) as sub:
        await sub.subscribe("syncd/pos/paris/resync", qos=1)
        async with wired(mosquitto.url, engine) as w:
            await publish_all(mosquitto.url, [seq(1), seq(2), seq(5), seq(2), seq(6)])
            msg = await next_message(sub)
            body = json.loads(_payload(msg))
            assert (body["source"], body["expected_seq"], body["received_seq"]) == ("T1", 3, 5)
            assert body["requested_at"].endswith("Z")
            assert not msg.retain
            await until(lambda: w.conn.stats.acked == 5, "all acknowledged")
            assert w.conn.stats.resyncs == 1  # a duplicate (2) and the next (6) are fine
        assert engine.last_seq[("pos", "T1")] == 6
        # a new instance starts from the committed sequence number
        async with wired(mosquitto.url, engine):
            await publish_all(mosquitto.url, [seq(9)])
            body = json.loads(_payload(await next_message(sub)))
            assert (body["expected_seq"], body["received_seq"]) == (7, 9)


def _payload(msg: aiomqtt.Message) -> bytes:
    assert isinstance(msg.payload, bytes)
    return msg.payload


# -- 6. retained availability -----------------------------------------------------------------


async def test_retained_availability_per_location(mosquitto: MosquittoServer, url: str) -> None:
    weird = "A/B+C#1"
    async with running_engine(url, retailer()) as engine, wired(mosquitto.url, engine) as w:
        pusher = Pusher(channel="kiosk", connector=w.conn, outbox=engine.outbox,
                        metrics=engine.metrics, clock=engine.clock)
        pusher.start()
        try:
            await publish_all(mosquitto.url, [
                (PARIS, dumps(event("c1", "count", 10, when=0))),
                ("syncd/pos/lille/events", dumps(event("c2", "count", 3, when=0))),
                ("syncd/pos/lille/events", dumps(event("c3", "count", 4, sku=weird, when=0))),
            ])

            def settled() -> bool:
                # the engine queues the figures that moved; the connector fills in the others
                keys = [("kiosk", "SKU-1", "paris"), ("kiosk", "SKU-1", "lille"),
                        ("kiosk", weird, "lille")]
                rows = [engine.outbox.rows.get(k) for k in keys]
                return all(r is not None and not r.pending for r in rows)

            await until(settled, "availability pushed")
        finally:
            await pusher.stop()
        async with mqtt_client(mosquitto.url) as sub:  # a kiosk that starts now
            await sub.subscribe("syncd/availability/#", qos=1)
            got: dict[str, Any] = {}
            async with asyncio.timeout(WAIT):
                async for msg in sub.messages:
                    assert msg.retain
                    got[msg.topic.value] = json.loads(_payload(msg))
                    if len(got) == 2:
                        break
        one = got["syncd/availability/SKU-1"]
        assert one["sku"] == "SKU-1"
        assert one["locations"] == {"paris": 9, "lille": 3}  # paris keeps 1 as safety stock
        assert datetime.fromisoformat(one["updated_at"]).tzinfo is not None
        level = topic_sku(weird)
        assert level == "A%2FB%2BC%231" and unquote(level) == weird
        assert got[f"syncd/availability/{level}"] == {
            "sku": weird, "locations": {"paris": 0, "lille": 4},
            "updated_at": got[f"syncd/availability/{level}"]["updated_at"]}


async def test_push_without_a_broker_is_transient(url: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    async with running_engine(url, retailer()) as engine:
        conn = make_connector(f"mqtt://127.0.0.1:{port}", engine)
        conn.start_timeout = 0.2
        await conn.start()
        try:
            assert not conn.connected
            item = PushItem("kiosk", "SKU-1", "paris", 3, 1, None, "k1")
            with pytest.raises(TransientPushError):
                await conn.push("kiosk", [item])
        finally:
            await conn.close()
        # events() ends after close()
        assert [i async for i in conn.events()] == []


# -- 7. holds ---------------------------------------------------------------------------------


def hold_create(hold_id: str, location: str = "paris", qty: int = 2) -> Any:
    return ev(EventType.HOLD_CREATE, sku="SKU-1", qty=qty, location=location, connector="api",
              hold_id=hold_id, order_id=f"W-{hold_id}", expires_at=T0 + 3600 * SEC,
              event_id=f"hold:{hold_id}:create")


def hold_release(hold_id: str) -> Any:
    return ev(EventType.HOLD_RELEASE, connector="api", hold_id=hold_id, location=None,
              event_id=f"hold:{hold_id}:release")


async def test_hold_notifications_reach_the_store(mosquitto: MosquittoServer, url: str) -> None:
    async with running_engine(url, retailer(), clock=lambda: T0) as engine, \
            mqtt_client(mosquitto.url, "staff-paris", persistent=True) as sub:
        await sub.subscribe("syncd/pos/+/holds", qos=1)
        await engine.apply([ev(EventType.COUNT, qty=10, location="paris"),
                            ev(EventType.COUNT, qty=10, location="lyon", connector="wms")])
        async with wired(mosquitto.url, engine) as w:
            await engine.apply([hold_create("H1")])
            await engine.apply([hold_create("H2", location="lyon")])  # the WMS's, not ours
            await engine.apply([hold_release("H1")])
            first = await next_message(sub)
            second = await next_message(sub)
            assert first.topic.value == second.topic.value == "syncd/pos/paris/holds"
            held, released = json.loads(_payload(first)), json.loads(_payload(second))
            assert held == {
                "hold_id": "H1", "order_id": "W-H1", "sku": "SKU-1", "qty": 2, "state": "held",
                "expires_at": "2026-11-23T11:00:00.000Z", "location": "paris",
                "at": "2026-11-23T10:00:00.000Z",
            }
            assert released["state"] == "released"

            # a notice raised while the broker is down goes out after the reconnection
            await asyncio.to_thread(mosquitto.terminate)
            await until(lambda: not w.conn.connected, "connection lost")
            await engine.apply([hold_create("H3")])
            await asyncio.to_thread(mosquitto.restart)
            await until(lambda: w.conn.stats.holds_published == 3, "queued notice sent")
    # the staff client's persistent session kept it while it was away. QoS 1 is at least once:
    # a notice whose PUBACK the broker had not processed when it was stopped comes again first
    async with mqtt_client(mosquitto.url, "staff-paris", persistent=True) as sub:
        again: list[tuple[str, str]] = []
        while (body := json.loads(_payload(await next_message(sub))))["hold_id"] != "H3":
            again.append((body["hold_id"], body["state"]))
        assert body["state"] == "held"
        assert set(again) <= {("H1", "held"), ("H1", "released")}


# -- 8. parse_message properties --------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
FIELDS = ["event_id", "seq", "source", "type", "sku", "qty", "occurred_at", "hold_id"]
near_events = st.dictionaries(
    st.sampled_from([*FIELDS, "extra"]),
    json_values | st.sampled_from(["sale", "count", "adjust", "pickup", T0_ISO,
                                   "2026-11-23T10:00:00", -1, 0, 1, 2**70]),
    max_size=9,
)


def _parse(payload: bytes, location: str = "paris") -> list[Any]:
    return parse_message(location, payload, LOCATIONS, connector="pos", max_payload=4096)


@given(st.binary(max_size=600))
@settings(max_examples=300, deadline=None)
def test_parse_arbitrary_bytes_only_raises_malformed(payload: bytes) -> None:
    with suppress(MalformedMessage):
        _parse(payload)


@given(st.one_of(json_values, near_events, st.fixed_dictionaries({"events": st.lists(
    near_events, max_size=3)})), st.sampled_from(["paris", "nowhere", ""]))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_parse_arbitrary_json_only_raises_malformed(doc: Any, location: str) -> None:
    reason = ""
    try:
        events = _parse(json.dumps(doc).encode(), location)
    except MalformedMessage as exc:
        reason = exc.reason
        assert reason and len(reason) < 500
    if not reason:
        assert events and all(e.location == location for e in events)


ident = st.text(
    st.characters(codec="utf-8", min_codepoint=0x20).filter(lambda c: not 0x7F <= ord(c) <= 0x9F),
    min_size=1, max_size=40,
)


@st.composite
def valid_events(draw: st.DrawFn) -> dict[str, Any]:
    typ = draw(st.sampled_from(["count", "sale", "return", "receipt", "adjust", "pickup"]))
    if typ == "count":
        qty = draw(st.integers(0, 10**6))
    elif typ == "adjust":
        qty = draw(st.integers(-(10**6), 10**6).filter(bool))
    else:
        qty = draw(st.integers(1, 10**6))
    zones = st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-9))])
    when = draw(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1),
                             timezones=zones))
    doc: dict[str, Any] = {"event_id": draw(ident), "type": typ, "sku": draw(ident), "qty": qty,
                           "occurred_at": when.isoformat()}
    if draw(st.booleans()):
        doc["source"] = draw(ident)
        doc["seq"] = draw(st.integers(0, 2**63 - 1))
    if typ == "pickup" and draw(st.booleans()):
        doc["hold_id"] = draw(ident)
    return doc


@given(st.lists(valid_events(), min_size=1, max_size=5), st.booleans())
@settings(max_examples=200, deadline=None)
def test_valid_events_round_trip(docs: list[dict[str, Any]], wrap: bool) -> None:
    payload = {"events": docs} if wrap or len(docs) > 1 else docs[0]
    events = parse_message("lille", json.dumps(payload).encode(), LOCATIONS, connector="pos")
    assert len(events) == len(docs)
    for e, d in zip(events, docs, strict=True):
        assert (e.connector, e.location, e.event_id, e.type.value, e.sku, e.qty) == (
            "pos", "lille", d["event_id"], d["type"], d["sku"], d["qty"])
        assert e.occurred_at == to_micros(datetime.fromisoformat(d["occurred_at"]))
        assert (e.source, e.seq, e.hold_id) == (d.get("source"), d.get("seq"), d.get("hold_id"))


REASONS: list[tuple[bytes, str]] = [
    (b"[]", 'must be a JSON object: one event or {"events": [...]}'),
    (b'{"events": []}', "events: must not be empty"),
    (b'{"events": {}}', "events: must be a list"),
    (b'{"events": [1]}', "events.0: must be a JSON object"),
    (b'{"events": [], "x": 1}', "unknown key 'x'"),
    (b'{"event_id": "a", "event_id": "b"}', "duplicate key 'event_id'"),
    (b'{"qty": NaN}', "not JSON: NaN is not a JSON number"),
    (b"[" * 1500 + b"]" * 1500, "not JSON: nested too deeply"),
    (dumps(event("a", "count", -1)), "events.0.qty: must be >= 0 for count"),
    (dumps(event("a", "adjust", 0)), "events.0.qty: must not be 0 for adjust"),
    (dumps(event("a", qty=True)), "events.0.qty: must be an integer"),
    (dumps(event("a", qty=10**10)), "events.0.qty: must be <= 1000000000"),
    (dumps(event("a", hold_id="H1")), "events.0.hold_id: only a pickup names a hold"),
    (dumps(event("a", seq=-1)), "events.0.seq: must be >= 0"),
    (dumps(event("", )), "events.0.event_id: must not be empty"),
    (dumps(event("a\x00b")), "events.0.event_id: must not contain control characters"),
    (b'{"event_id": "\\ud800", "type": "sale", "sku": "S", "qty": 1, "occurred_at": "'
     + T0_ISO.encode() + b'"}', "events.0.event_id: must be valid Unicode"),
    (dumps({**event("a"), "occurred_at": "yesterday"}),
     "events.0.occurred_at: not an ISO-8601 timestamp: 'yesterday'"),
    (dumps({**event("a"), "occurred_at": 1700000000}),
     "events.0.occurred_at: must be an ISO-8601 string"),
    (dumps({**event("a"), "occurred_at": "1960-01-01T00:00:00Z"}),
     "events.0.occurred_at: timestamp is before 1970"),
]


@pytest.mark.parametrize(("payload", "reason"), REASONS, ids=[r[:40] for _, r in REASONS])
def test_parse_reasons(payload: bytes, reason: str) -> None:
    with pytest.raises(MalformedMessage) as exc:
        _parse(payload)
    assert exc.value.reason.startswith(reason), exc.value.reason


def test_single_event_with_nulls() -> None:
    doc = {**event("T3-000123", when=0), "seq": None, "source": None, "hold_id": None}
    (e,) = _parse(dumps(doc))
    assert e.occurred_at == T0 and e.seq is None and e.source is None and e.hold_id is None


if __name__ == "__main__" and sys.argv[1:2] == [CHILD]:  # pragma: no cover
    asyncio.run(_child_main(sys.argv[2], sys.argv[3], float(sys.argv[4])))

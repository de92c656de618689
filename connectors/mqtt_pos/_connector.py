"""The MQTT POS connector: store tills publish stock facts, syncd publishes availability and holds.

Acknowledge after commit
------------------------
paho-mqtt sends a QoS 1 PUBACK as soon as its `on_message` callback returns, long before our
batch is committed: a crash in between would lose a message the broker considers delivered.
So the paho client runs with manual acknowledgement. aiomqtt 2.x does not expose paho's
`manual_ack` option, so each `aiomqtt.Client` we create has it switched on through
`client._client.manual_ack_set(True)` before it connects (the check in `_paho_of` makes an
aiomqtt upgrade that moves this attribute fail loudly instead of silently acking early).

Every received message becomes one `Inbound` whose `on_commit` calls
`paho.ack(message.mid, qos)` — the PUBACK — and runs only after the engine committed the
events, or the dead letter, of that message. The engine commits deliveries in the order we hand
them over, so PUBACKs go out in the order the PUBLISHes came in.

A PUBACK belongs to the connection that received the PUBLISH. Each connection gets a fresh
paho client and a `_Connection` record; an ack whose connection is gone (or was replaced) is
skipped. That is safe: the session is persistent (MQTT v5, fixed client id, `clean_start=False`,
`SessionExpiryInterval`), so the broker re-sends every unacknowledged message on the next
connection, and the engine deduplicates by `event_id`. If a commit fails, the connector drops
the connection on purpose so that the broker re-sends what was not acknowledged.

Back-pressure: at most `RECEIVE_MAXIMUM` unacknowledged messages are in flight. We ask the
broker for that (the v5 Receive Maximum) and enforce it ourselves (`_gate.ReadGate` stops reading
the socket, because mosquitto 2.0.11 overshoots when it replays a stored session), and the
hand-over to the engine is a bounded queue: a slow engine means fewer acks, which means we stop
reading and the broker keeps the rest queued for our session.

Per-source sequence numbers detect messages that never arrived (a till that lost its own
outbox, a bridge with QoS 0): on a gap the till is asked for fresh counts on
`{prefix}/pos/{location}/resync`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Final

import aiomqtt
import paho.mqtt.client as paho_mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from connectors.base import (
    ConnectorContext,
    DeadLetter,
    Inbound,
    PushItem,
    PushResult,
    PushStatus,
    TransientPushError,
    WebhookReply,
)
from connectors.mqtt_pos._gate import ReadGate
from syncd.model import Channel, Event, Reservation, ReservationKind, from_micros
from syncd.wire import MalformedMessage, parse_message, topic_sku

from ._config import MqttPosConfig

__all__ = ["DEAD_PAYLOAD_MAX", "INBOX_SIZE", "RECEIVE_MAXIMUM", "MqttPosConnector", "MqttPosStats"]

log = logging.getLogger("syncd.connectors.mqtt_pos")

INBOX_SIZE: Final = 1000  # deliveries waiting for the engine
RECEIVE_MAXIMUM: Final = 1000  # unacknowledged QoS 1 messages the broker may have in flight to us
OUTGOING_MAX: Final = 10_000  # hold notices and resync requests waiting for a connection
DEAD_PAYLOAD_MAX: Final = 64 * 1024
PUBLISH_TIMEOUT: Final = 10.0
KEEPALIVE: Final = 30
BACKOFF_BASE: Final = 0.1


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _now_iso() -> str:
    return _iso(datetime.now(UTC))


def _as_bytes(payload: Any) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if payload is None:
        return b""
    return str(payload).encode("utf-8", "surrogatepass")


def _paho_of(client: aiomqtt.Client) -> paho_mqtt.Client:
    """The paho client inside an aiomqtt client (aiomqtt 2.x keeps it in `_client`)."""
    inner = getattr(client, "_client", None)
    if not isinstance(inner, paho_mqtt.Client):
        raise RuntimeError(
            "aiomqtt no longer exposes its paho client: manual acknowledgement is impossible"
        )
    return inner


class _ConnectionLost(Exception):
    pass


_SESSION_TAKEN_OVER: Final = 0x8E


def _taken_over(exc: BaseException) -> bool:
    """Whether the broker dropped us because a client with the same id connected."""
    for e in (exc, exc.__cause__):
        if isinstance(e, aiomqtt.MqttCodeError) and e.rc == _SESSION_TAKEN_OVER:
            return True
    return False


@dataclass(slots=True, eq=False)
class _Connection:
    """One broker connection: acknowledgements are only valid on the one that received."""

    client: aiomqtt.Client
    paho: paho_mqtt.Client
    generation: int
    gate: ReadGate
    subscribed: bool = False
    lost: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(slots=True)
class MqttPosStats:
    """Counters for operators and tests (the daemon's metrics cover the rest)."""

    connections: int = 0
    received: int = 0
    dead: int = 0
    acked: int = 0
    ack_skipped: int = 0  # committed after its connection was gone: the broker re-sends it
    resyncs: int = 0
    holds_published: int = 0
    dropped_outgoing: int = 0


class MqttPosConnector:
    """Store tills over MQTT: `{prefix}/pos/{location}/events` in, availability and holds out."""

    config_model: ClassVar[type[MqttPosConfig]] = MqttPosConfig
    max_batch: int = 500
    per_location: bool = True
    basis: str = "available"
    # how long `start()` waits for the first connection before returning anyway
    start_timeout: float = 10.0

    def __init__(self, name: str, config: MqttPosConfig, context: ConnectorContext) -> None:
        self.name = name
        self.config = config
        self.context = context
        self.client_id = config.client_id or f"syncd-{name}"
        self.stats = MqttPosStats()
        prefix = config.topic_prefix
        self._events_filter = f"{prefix}/pos/+/events"
        self._events_head = f"{prefix}/pos/"
        self._log_extra = {"connector": name}
        self._inbox: asyncio.Queue[Inbound | None] = asyncio.Queue(maxsize=INBOX_SIZE)
        self._outgoing: deque[tuple[str, bytes]] = deque()
        self._outgoing_wake = asyncio.Event()
        self._up = asyncio.Event()
        self._conn: _Connection | None = None
        self._generation = 0
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._last_seq: dict[str, int] = {}
        self._tls: ssl.SSLContext | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the client task; return once connected, or after `start_timeout` regardless
        (it keeps retrying in the background; readiness is the daemon's concern)."""
        if self._task is not None:
            return
        if self._closing:  # started again after close(): its end-of-stream marker goes
            self._inbox = asyncio.Queue(maxsize=INBOX_SIZE)
        self._closing = False
        self._task = asyncio.create_task(self._run(), name=f"mqtt-pos-{self.name}")
        self._sender = asyncio.create_task(self._send_loop(), name=f"mqtt-pos-{self.name}-out")
        try:
            await asyncio.wait_for(self._up.wait(), self.start_timeout)
        except TimeoutError:
            log.warning("not connected to %s yet; still trying", self._where(),
                        extra=self._log_extra)

    async def close(self) -> None:
        """Disconnect cleanly. Deliveries not yet committed are not acknowledged: the broker
        keeps them in our session and sends them again on the next connection."""
        self._closing = True
        for task in (self._sender, self._task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._sender = self._task = None
        self._conn = None
        self._up.clear()
        while not self._inbox.empty():
            self._inbox.get_nowait()
        self._inbox.put_nowait(None)

    @property
    def connected(self) -> bool:
        return self._live() is not None

    def _live(self) -> _Connection | None:
        conn = self._conn
        return conn if conn is not None and not conn.lost.is_set() else None

    def _where(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    # -- the connection -------------------------------------------------------------------------

    def _new_client(self) -> tuple[aiomqtt.Client, paho_mqtt.Client]:
        cfg = self.config
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = int(cfg.session_expiry)
        props.ReceiveMaximum = RECEIVE_MAXIMUM
        if cfg.tls and self._tls is None:
            self._tls = ssl.create_default_context()
        client = aiomqtt.Client(
            cfg.host,
            cfg.port,
            username=cfg.username,
            password=cfg.password.get_secret_value() if cfg.password is not None else None,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            keepalive=KEEPALIVE,
            timeout=PUBLISH_TIMEOUT,
            max_inflight_messages=100,
            properties=props,
            tls_context=self._tls if cfg.tls else None,
        )
        client.pending_calls_threshold = 10 * self.max_batch
        paho = _paho_of(client)
        paho.manual_ack_set(True)  # PUBACK only from `on_commit`, after the batch commit
        return client, paho

    def _watch(self, conn: _Connection) -> None:
        """Learn about a dropped connection at once, not when the reader next looks."""
        loop = asyncio.get_running_loop()
        aiomqtt_callback = conn.paho.on_disconnect

        def on_disconnect(*args: Any) -> None:
            loop.call_soon_threadsafe(self._mark_lost, conn)
            if aiomqtt_callback is not None:
                aiomqtt_callback(*args)

        conn.paho.on_disconnect = on_disconnect

    def _mark_lost(self, conn: _Connection) -> None:
        conn.lost.set()
        if conn is self._conn:
            self._up.clear()

    def _stopping(self) -> bool:
        return self._closing

    def _backoff(self, failures: int) -> float:
        ceiling = min(self.config.reconnect_max, BACKOFF_BASE * 2.0 ** min(failures, 30))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    async def _run(self) -> None:
        failures = 0
        while not self._closing:
            client, paho = self._new_client()
            conn = _Connection(client, paho, self._generation + 1,
                               ReadGate(paho, RECEIVE_MAXIMUM))
            self._watch(conn)
            try:
                async with client:
                    self._generation = conn.generation
                    self._conn = conn
                    # The session's queued messages arrive before the SUBACK: consume them
                    # while subscribing, or a backlog larger than the window blocks the SUBACK.
                    subscribing = asyncio.create_task(self._subscribe(conn))
                    try:
                        async for message in client.messages:
                            await self._receive(conn, message)
                    finally:
                        subscribing.cancel()
            except aiomqtt.MqttError as exc:
                if self._stopping():
                    break
                if _taken_over(exc):
                    # Another client connected with our client id. Taking the session straight
                    # back would make both flap and re-send each other's unacknowledged messages.
                    log.error("another client connected as %s and took over the session: is "
                              "client_id shared by two syncd instances?", self.client_id,
                              extra=self._log_extra)
                    failures = max(failures, 30)
                else:
                    what = "lost the connection to" if conn is self._conn else "cannot connect to"
                    log.warning("%s %s: %s", what, self._where(), exc, extra=self._log_extra)
            except Exception:
                log.exception("MQTT client error", extra=self._log_extra)
            finally:
                self._mark_lost(conn)
                if self._conn is conn:
                    self._conn = None
                if conn.subscribed:
                    failures = 0  # it was up: the next attempt starts from the short delay
            if self._stopping():
                break
            delay = self._backoff(failures)
            failures += 1
            await asyncio.sleep(delay)

    async def _subscribe(self, conn: _Connection) -> None:
        try:
            await conn.client.subscribe(self._events_filter, qos=1)
        except aiomqtt.MqttError as exc:
            log.warning("cannot subscribe on %s: %s; reconnecting", self._where(), exc,
                        extra=self._log_extra)
            self._mark_lost(conn)
            conn.paho.disconnect()
            return
        if conn.lost.is_set():
            return
        conn.subscribed = True
        self._up.set()
        self.stats.connections += 1
        log.info("connected to %s as %s (connection %d)", self._where(), self.client_id,
                 conn.generation, extra=self._log_extra)

    # -- inbound --------------------------------------------------------------------------------

    def _topic_location(self, topic: str) -> str | None:
        head, tail = self._events_head, "/events"
        if topic.startswith(head) and topic.endswith(tail):
            loc = topic[len(head) : -len(tail)]
            if loc and "/" not in loc:
                return loc
        return None

    async def _receive(self, conn: _Connection, message: aiomqtt.Message) -> None:
        self.stats.received += 1
        topic = message.topic.value
        payload = _as_bytes(message.payload)
        location = self._topic_location(topic)
        inbound: Inbound
        try:
            if location is None:
                raise MalformedMessage(f"unexpected topic {topic[:200]!r}")
            events = parse_message(
                location,
                payload,
                self.context.locations,
                connector=self.name,
                max_payload=self.config.max_payload,
            )
        except MalformedMessage as exc:
            inbound = self._dead(exc.reason, payload, topic)
        except Exception as exc:  # a bug must not stop the loop either
            log.exception("cannot parse a message", extra=self._log_extra)
            inbound = self._dead(f"internal error: {type(exc).__name__}", payload, topic)
        else:
            inbound = Inbound(events=events)
            self._check_sequence(location or "", events)
        inbound.on_commit = self._ack_after_commit(conn, message.mid, message.qos)
        inbound.on_failure = self._commit_failed(conn)
        await self._inbox.put(inbound)

    def _dead(self, reason: str, payload: bytes, topic: str) -> Inbound:
        self.stats.dead += 1
        log.warning("malformed message on %s: %s", topic[:200], reason, extra=self._log_extra)
        return Inbound(dead=[DeadLetter(self.name, reason, payload[:DEAD_PAYLOAD_MAX], topic)])

    def _ack_after_commit(self, conn: _Connection, mid: int, qos: int) -> Callable[[], None]:
        def ack() -> None:
            if qos == 0:
                return
            if conn is not self._conn or conn.lost.is_set():
                self.stats.ack_skipped += 1
                return  # the broker re-sends it on the current connection
            rc = conn.paho.ack(mid, qos)
            if rc != paho_mqtt.MQTT_ERR_SUCCESS:
                self.stats.ack_skipped += 1
                log.warning("PUBACK %d not sent (%s); the broker will re-send it", mid,
                            paho_mqtt.error_string(rc), extra=self._log_extra)
                return
            self.stats.acked += 1
            conn.gate.acked()

        return ack

    def _commit_failed(self, conn: _Connection) -> Callable[[BaseException], None]:
        def on_failure(exc: BaseException) -> None:
            if conn is not self._conn or conn.lost.is_set():
                return
            # The message stays unacknowledged and would block its slot in the broker's
            # in-flight window until the next connection: reconnect now to have it re-sent.
            log.warning("commit failed; reconnecting so that the broker re-sends the "
                        "unacknowledged messages", extra=self._log_extra)
            self._mark_lost(conn)
            conn.paho.disconnect()

        return on_failure

    async def events(self) -> AsyncIterator[Inbound]:
        """Deliveries, in the order received, until `close()`."""
        while True:
            item = await self._inbox.get()
            if item is None:
                self._inbox.put_nowait(None)  # later iterators end too
                return
            yield item

    def _check_sequence(self, location: str, events: Sequence[Event]) -> None:
        for ev in events:
            if ev.source is None or ev.seq is None:
                continue
            last = self._last_seq.get(ev.source)
            if last is None and self.context.last_seq is not None:
                last = self.context.last_seq(ev.source)
            if last is not None and ev.seq > last + 1:
                self._request_resync(location, ev.source, last + 1, ev.seq)
            if last is None or ev.seq > last:
                self._last_seq[ev.source] = ev.seq

    def _request_resync(self, location: str, source: str, expected: int, received: int) -> None:
        self.stats.resyncs += 1
        log.warning("sequence gap from %s at %s: expected %d, received %d; asking for fresh "
                    "counts", source, location, expected, received, extra=self._log_extra)
        body = {"source": source, "expected_seq": expected, "received_seq": received,
                "requested_at": _now_iso()}
        self._send_later(f"{self.config.topic_prefix}/pos/{location}/resync", body)

    # -- outbound: holds and resync requests ----------------------------------------------------

    def on_reservation(self, r: Reservation) -> None:
        """Announce a hold's state to its store (called after commit; never blocks)."""
        if r.kind is not ReservationKind.HOLD:
            return
        loc = self.context.locations.get(r.location)
        if loc is None or loc.authority != self.name:
            return
        body = {
            "hold_id": r.res_id,
            "order_id": r.order_id,
            "sku": r.sku,
            "qty": r.qty,
            "state": r.state.value,
            "expires_at": _iso(from_micros(r.expires_at)) if r.expires_at is not None else None,
            "location": r.location,
            "at": _iso(from_micros(r.updated_at)) if r.updated_at else _now_iso(),
        }
        self._send_later(f"{self.config.topic_prefix}/pos/{r.location}/holds", body)

    def _send_later(self, topic: str, body: Mapping[str, Any]) -> None:
        if len(self._outgoing) >= OUTGOING_MAX:
            self._outgoing.popleft()
            self.stats.dropped_outgoing += 1
            log.warning("outgoing queue full; dropped the oldest notice", extra=self._log_extra)
        self._outgoing.append((topic, json.dumps(body, separators=(",", ":")).encode()))
        self._outgoing_wake.set()

    async def _send_loop(self) -> None:
        failures = 0
        while True:
            if not self._outgoing:
                self._outgoing_wake.clear()
                await self._outgoing_wake.wait()
                continue
            conn = self._live()
            if conn is None:
                await self._up.wait()
                continue
            topic, payload = self._outgoing[0]
            try:
                await self._publish(conn, topic, payload, retain=False)
            except (aiomqtt.MqttError, _ConnectionLost) as exc:
                failures += 1
                log.info("notice not published yet (%s); will retry", exc, extra=self._log_extra)
                await asyncio.sleep(self._backoff(failures))
                continue
            except ValueError as exc:  # refused by paho as invalid: retrying cannot help
                log.error("notice on %s dropped: %s", topic[:200], exc, extra=self._log_extra)
            else:
                if topic.endswith("/holds"):
                    self.stats.holds_published += 1
            failures = 0
            self._outgoing.popleft()

    async def _publish(self, conn: _Connection, topic: str, payload: bytes, *,
                       retain: bool) -> None:
        """Publish QoS 1 and wait for the PUBACK, or fail as soon as the connection drops."""
        if conn.lost.is_set():
            raise _ConnectionLost("not connected")
        pub = asyncio.ensure_future(
            conn.client.publish(topic, payload, qos=1, retain=retain, timeout=PUBLISH_TIMEOUT)
        )
        lost = asyncio.ensure_future(conn.lost.wait())
        try:
            await asyncio.wait({pub, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not pub.done():
                pub.cancel()
        if pub.cancelled():
            raise _ConnectionLost("connection lost before the broker acknowledged")
        pub.result()

    # -- outbound: availability -----------------------------------------------------------------

    async def push(self, channel: str, items: Sequence[PushItem]) -> Sequence[PushResult]:
        """Publish retained `{prefix}/availability/{sku}` with every location of the channel."""
        conn = self._live()
        if conn is None:
            raise TransientPushError("not connected to the MQTT broker")
        ch = self.context.channels.get(channel)
        overlays: dict[str, dict[str, int]] = {}
        for it in items:
            overlays.setdefault(it.sku, {})[it.location] = it.desired
        prefix = self.config.topic_prefix

        async def publish(sku: str, overlay: dict[str, int]) -> str | None:
            body = {"sku": sku, "locations": self._figures(ch, sku, overlay),
                    "updated_at": _now_iso()}
            payload = json.dumps(body, separators=(",", ":")).encode()
            try:
                await self._publish(conn, f"{prefix}/availability/{topic_sku(sku)}", payload,
                                    retain=True)
            except (aiomqtt.MqttError, _ConnectionLost, ValueError) as exc:
                return str(exc) or type(exc).__name__
            return None

        errors = await asyncio.gather(*(publish(s, o) for s, o in overlays.items()))
        failed = {sku: err for sku, err in zip(overlays, errors, strict=True) if err is not None}
        if failed and len(failed) == len(overlays):
            raise TransientPushError(f"publish failed: {next(iter(failed.values()))}")
        return [
            PushResult(it.sku, it.location, PushStatus.TRANSIENT, reason=failed[it.sku])
            if it.sku in failed
            else PushResult(it.sku, it.location, PushStatus.OK)
            for it in items
        ]

    def _figures(self, ch: Channel | None, sku: str, overlay: Mapping[str, int]) -> dict[str, int]:
        """Every location of the channel: the current availability, overlaid with the pushed
        values (which are the committed desired figures of those locations)."""
        figures: dict[str, int] = {}
        read = self.context.read_available
        if ch is not None and read is not None:
            avail = read(sku)
            keys = dict(ch.location_map) or {loc: loc for loc in ch.sells_from}
            for loc, remote in keys.items():
                figures[remote] = min(max(0, avail.get(loc, 0)), ch.max_quantity)
        figures.update(overlay)
        return figures

    async def read_levels(
        self, channel: str, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], int]:
        # The retained availability is ours alone: there is nothing to reconcile against.
        raise NotImplementedError("mqtt_pos has no remote state to read back")

    async def webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookReply:
        return WebhookReply(404, error="not_found", detail="mqtt_pos takes no webhooks")

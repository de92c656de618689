"""Shopify webhooks as syncd events: signature check and payload mapping, pure functions.

Deliveries (shopify.dev, "Verify webhook deliveries" / "Delivery structure") carry:

- `X-Shopify-Hmac-SHA256`: base64 of HMAC-SHA256 over the *raw* body, keyed with the app's
  client secret (our `webhook_secret`). Compared in constant time.
- `X-Shopify-Topic`, `X-Shopify-Shop-Domain`, `X-Shopify-API-Version`, `X-Shopify-Webhook-Id`
  (one delivery), `X-Shopify-Event-Id` (the event; the same across redeliveries) and
  `X-Shopify-Triggered-At`.

Deduplication uses the event id: every syncd event made from a delivery has an `event_id` built
from `X-Shopify-Event-Id`, so a redelivered webhook is a `duplicate` in the ledger (rule 1).

Topics mapped:

| topic | events |
|---|---|
| `orders/create` | one `order` per SKU (lines of one SKU merged), `event_id = "{event id}:{sku}"` |
| `orders/cancelled` | one `order_cancelled` for the whole order (`sku = ""`) |
| `orders/fulfilled` | one `order_fulfilled` (`sku = ""`), at the latest fulfilment's time |
| `inventory_levels/update` | one `channel_level`: what Shopify shows now (rule 5, drift) |

Line items without a SKU (custom items, tips, gift cards) are skipped: syncd does not stock them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from connectors._orders import MAX_QTY as _MAX_QTY
from connectors._orders import MappingError, line_event_id, order_lines
from syncd.model import Channel, Event, EventType, to_micros

__all__ = [
    "TOPICS",
    "Delivery",
    "MappingError",
    "item_gid",
    "level_event",
    "location_gid",
    "order_cancelled_event",
    "order_events",
    "order_fulfilled_event",
    "parse_body",
    "parse_time",
    "read_delivery",
    "verify_signature",
]

TOPICS = ("orders/create", "orders/cancelled", "orders/fulfilled", "inventory_levels/update")


@dataclass(frozen=True, slots=True)
class Delivery:
    topic: str
    event_id: str  # X-Shopify-Event-Id, else the webhook id, else a digest of the body
    webhook_id: str
    shop_domain: str
    triggered_at: int | None


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in headers.items():
        if isinstance(k, str) and isinstance(v, str):
            out[k.lower()] = v
    return out


def verify_signature(secret: bytes, body: bytes, signature: str | None) -> bool:
    """Whether `signature` is base64(HMAC-SHA256(secret, body)). Constant-time comparison."""
    if not signature:
        return False
    try:
        given = base64.b64decode(signature.strip().encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return False
    expected = hmac.new(secret, body, hashlib.sha256).digest()
    return hmac.compare_digest(given, expected)


def sign(secret: bytes, body: bytes) -> str:
    """The `X-Shopify-Hmac-SHA256` value Shopify sends for `body` (used by the simulator)."""
    return base64.b64encode(hmac.new(secret, body, hashlib.sha256).digest()).decode("ascii")


def read_delivery(headers: Mapping[str, str], body: bytes) -> Delivery:
    h = _lower(headers)
    event_id = h.get("x-shopify-event-id", "").strip()
    webhook_id = h.get("x-shopify-webhook-id", "").strip()
    if not event_id:
        event_id = webhook_id or "body:" + hashlib.sha256(body).hexdigest()[:32]
    triggered: int | None
    try:
        triggered = parse_time(h.get("x-shopify-triggered-at"))
    except MappingError:
        triggered = None
    return Delivery(
        topic=h.get("x-shopify-topic", "").strip().lower(),
        event_id=event_id[:200],
        webhook_id=webhook_id[:200],
        shop_domain=h.get("x-shopify-shop-domain", "").strip().lower(),
        triggered_at=triggered,
    )


def parse_body(body: bytes) -> dict[str, Any] | None:
    """The JSON object of a delivery, or None when the body is not a JSON object."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def parse_time(value: Any) -> int:
    """An ISO-8601 timestamp with a zone (Shopify sends `2026-11-23T10:00:00-05:00`) in µs."""
    if not isinstance(value, str) or not value:
        raise MappingError(f"not a timestamp: {value!r}"[:120])
    try:
        ts = datetime.fromisoformat(value.strip())
        return to_micros(ts)
    except (ValueError, OverflowError) as exc:
        raise MappingError(f"not a timestamp with a zone: {value!r}"[:120]) from exc


def _numeric_id(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise MappingError(f"{what} is not an id")
    if isinstance(value, int) and value > 0:
        return value
    if isinstance(value, str) and value.isdigit() and value.isascii() and int(value) > 0:
        return int(value)
    if isinstance(value, str) and value.startswith("gid://shopify/"):
        tail = value.rsplit("/", 1)[-1].split("?", 1)[0]
        if tail.isdigit() and tail.isascii():
            return int(tail)
    raise MappingError(f"{what} is missing or not an id")


def item_gid(value: Any) -> str:
    return f"gid://shopify/InventoryItem/{_numeric_id(value, 'inventory_item_id')}"


def location_gid(value: Any) -> str:
    return f"gid://shopify/Location/{_numeric_id(value, 'location_id')}"


def _order_id(payload: Mapping[str, Any]) -> str:
    return str(_numeric_id(payload.get("id"), "order id"))


def _when(payload: Mapping[str, Any], keys: tuple[str, ...], fallback: int) -> int:
    for key in keys:
        value = payload.get(key)
        if value:
            return parse_time(value)
    return fallback


def _map_location(channel: Channel, shopify_location: Any) -> str | None:
    """The syncd location an order names (POS orders carry `location_id`), if mapped."""
    if shopify_location is None or not channel.location_map:
        return None
    try:
        gid = location_gid(shopify_location)
    except MappingError:
        return None
    for loc, remote in channel.location_map:
        if remote == gid:
            return loc
    return None


def order_events(
    connector: str, channel: Channel, delivery: Delivery, payload: Mapping[str, Any], now: int
) -> tuple[list[Event], list[str]]:
    """`orders/create`: one ORDER per SKU. Returns the events and the reasons lines were skipped."""
    order_id = _order_id(payload)
    created = _when(payload, ("created_at", "processed_at"), delivery.triggered_at or now)
    qty_by_sku, skipped = order_lines(payload)
    location = _map_location(channel, payload.get("location_id"))
    events = [
        Event(
            connector=connector, event_id=line_event_id(delivery.event_id, sku),
            type=EventType.ORDER,
            sku=sku, qty=qty, occurred_at=created, location=location, order_id=order_id,
            channel=channel.name,
        )
        for sku, qty in qty_by_sku.items()
    ]
    return events, skipped


def order_cancelled_event(
    connector: str, channel: Channel, delivery: Delivery, payload: Mapping[str, Any], now: int
) -> Event:
    return Event(
        connector=connector, event_id=delivery.event_id, type=EventType.ORDER_CANCELLED,
        sku="", qty=0, order_id=_order_id(payload), channel=channel.name,
        occurred_at=_when(payload, ("cancelled_at", "updated_at"), delivery.triggered_at or now),
    )


def order_fulfilled_event(
    connector: str, channel: Channel, delivery: Delivery, payload: Mapping[str, Any], now: int
) -> Event:
    """The fulfilment time is the latest fulfilment's `created_at`, else the order's
    `updated_at` (rule 6 settles the reservation once the authority reports at or after it)."""
    fulfilled_at: int | None = None
    fulfillments = payload.get("fulfillments")
    if isinstance(fulfillments, list):
        for f in fulfillments:
            if isinstance(f, dict) and f.get("created_at"):
                t = parse_time(f["created_at"])
                fulfilled_at = t if fulfilled_at is None else max(fulfilled_at, t)
    if fulfilled_at is None:
        fulfilled_at = _when(payload, ("updated_at", "closed_at"), delivery.triggered_at or now)
    return Event(
        connector=connector, event_id=delivery.event_id, type=EventType.ORDER_FULFILLED,
        sku="", qty=0, order_id=_order_id(payload), channel=channel.name,
        occurred_at=fulfilled_at,
    )


def level_target(
    channel: Channel, pooled_location: str, payload: Mapping[str, Any]
) -> tuple[str, str, int] | None:
    """`inventory_levels/update`: (item gid, channel-side location key, available), or None when
    the level is not one this channel publishes (another location, untracked item)."""
    item = item_gid(payload.get("inventory_item_id"))
    loc = location_gid(payload.get("location_id"))
    available = payload.get("available")
    if available is None:
        return None  # untracked inventory
    if isinstance(available, bool) or not isinstance(available, int) \
            or abs(available) > _MAX_QTY:
        raise MappingError("available is not a count")
    if channel.location_map:
        if loc not in {remote for _, remote in channel.location_map}:
            return None
        return item, loc, available
    if loc != pooled_location:
        return None
    return item, "", available


def level_event(
    connector: str, channel: Channel, delivery: Delivery, payload: Mapping[str, Any],
    sku: str, remote_location: str, available: int, now: int,
) -> Event:
    return Event(
        connector=connector, event_id=delivery.event_id, type=EventType.CHANNEL_LEVEL,
        sku=sku, qty=available, remote_location=remote_location, channel=channel.name,
        occurred_at=_when(payload, ("updated_at",), delivery.triggered_at or now),
    )

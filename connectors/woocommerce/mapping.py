"""WooCommerce orders and products as syncd events: signatures, timestamps and payload mapping,
pure functions shared by the webhook endpoint and the order poller.

Webhook deliveries (WooCommerce `WC_Webhook::deliver`) carry:

- `X-WC-Webhook-Signature`: base64 of HMAC-SHA256 over the *raw* body (the JSON exactly as
  WordPress encoded it), keyed with the webhook's secret (our `webhook_secret`). Compared in
  constant time.
- `X-WC-Webhook-Topic` (`order.created`, `order.updated`, `product.updated`, …),
  `X-WC-Webhook-Resource`, `X-WC-Webhook-Event`, `X-WC-Webhook-Source` (the site URL),
  `X-WC-Webhook-ID` and `X-WC-Webhook-Delivery-ID`.
- The body is the REST v3 representation of the resource (`GET /wc/v3/orders/{id}`,
  `GET /wc/v3/products/{id}`), built when the delivery runs, so a webhook and a poll see the same
  document shape.

When a webhook is saved, WooCommerce first POSTs an unsigned *ping*: the form-encoded body
`webhook_id=<n>` and no `X-WC-*` headers (`WC_Webhook::deliver_ping`). It must be answered 200.

`X-WC-Webhook-Delivery-ID` is `wp_hash(webhook id . time())`: two deliveries of one webhook in
the same second share it, and WooCommerce never redelivers. So deduplication does not rely on
it: every event id is derived from the resource itself, identical whether the order arrived by
webhook or by polling, and a repeat is a `duplicate` in the ledger (rule 1):

- `pending`, `processing`, `on-hold`: one `order` per SKU (the lines of one SKU merged),
  `event_id = "order:{id}:{sku}"`;
- `completed`: the same `order` lines (duplicates once seen) and one `order_fulfilled`,
  `event_id = "fulfil:{id}"`, at `date_completed_gmt`;
- `cancelled`, `failed`: one `order_cancelled`, `event_id = "cancel:{id}"`;
- `refunded`: as `cancelled` when the order was never completed; refunded after `completed`
  (`date_completed_gmt` set), as `completed`: the goods left, and a refund does not put them back
  on the shelf (the authority's next report does);
- anything else (`checkout-draft`, `trash`, statuses added by plugins): nothing.

`pending` reserves at once, so that other channels cannot sell the units while the customer pays.
WooCommerce reduces its own stock only at payment: when syncd's figure reached the site before
the payment, the site then shows the order's quantity too few (it subtracts the order a second
time) until syncd writes its figure again, at the latest when the connector's hold ends
(`sale_grace`, see `connector.py`). That errs on the safe side: undersell, never oversell.

`order_id` is the WooCommerce order id. A completed order syncd never saw open still yields its
`order` lines, so the units shipped stay counted until the location's authority reports stock as
of the completion (rule 6).

`product.updated` yields one `channel_level` (rule 5) when the product or variation manages its
own stock (`manage_stock: true`, not `"parent"`), `event_id = "level:{id}:{date_modified_gmt}:
{stock_quantity}"`.

Timestamps: WooCommerce's `*_gmt` fields are UTC without a zone suffix (`2026-11-23T10:00:00`);
the fields without `_gmt` are in the site's time zone and are never read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from connectors._orders import MAX_QTY as _MAX_QTY
from connectors._orders import MAX_SKU as _MAX_SKU
from connectors._orders import MappingError, line_event_id, order_lines
from syncd.model import Channel, Event, EventType, from_micros, to_micros

__all__ = [
    "CANCELLED_STATUSES",
    "OPEN_STATUSES",
    "ORDER_TOPICS",
    "PRODUCT_TOPICS",
    "Level",
    "MappingError",
    "format_gmt",
    "is_ping",
    "level_event",
    "order_events",
    "order_id",
    "parse_body",
    "parse_gmt",
    "product_level",
    "sign",
    "strip_personal_data",
    "verify_signature",
]

ORDER_TOPICS = ("order.created", "order.updated")
PRODUCT_TOPICS = ("product.updated", "product.created")
OPEN_STATUSES = frozenset({"pending", "processing", "on-hold"})
CANCELLED_STATUSES = frozenset({"cancelled", "failed"})
_PING = re.compile(rb"webhook_id=[0-9]{1,20}")
_ORDER_FIELDS = ("id", "status", "date_created_gmt", "date_modified_gmt", "date_completed_gmt",
                 "line_items")
_LINE_FIELDS = ("id", "product_id", "variation_id", "sku", "quantity")


# -- signatures ----------------------------------------------------------------------------------


def sign(secret: bytes, body: bytes) -> str:
    """The `X-WC-Webhook-Signature` WooCommerce sends for `body` (used by the simulator)."""
    return base64.b64encode(hmac.new(secret, body, hashlib.sha256).digest()).decode("ascii")


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


def is_ping(body: bytes) -> bool:
    """WooCommerce's test delivery when a webhook is saved: `webhook_id=<n>`, form-encoded."""
    return _PING.fullmatch(body.strip()) is not None


def parse_body(body: bytes) -> dict[str, Any] | None:
    """The JSON object of a delivery, or None when the body is not a JSON object."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


# -- time ----------------------------------------------------------------------------------------


def parse_gmt(value: Any) -> int:
    """A WooCommerce `*_gmt` timestamp (`2026-11-23T10:00:00`, UTC, no suffix) in µs. A value that
    does carry a zone is honoured."""
    if not isinstance(value, str) or not value.strip():
        raise MappingError(f"not a timestamp: {value!r}"[:120])
    try:
        ts = datetime.fromisoformat(value.strip())
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=UTC)
        return to_micros(ts)
    except (ValueError, OverflowError) as exc:
        raise MappingError(f"not a timestamp: {value!r}"[:120]) from exc


def format_gmt(us: int) -> str:
    """µs as WooCommerce writes GMT dates (second resolution, no zone suffix)."""
    return from_micros(us).strftime("%Y-%m-%dT%H:%M:%S")


def _when(payload: Mapping[str, Any], keys: tuple[str, ...], fallback: int) -> int:
    for key in keys:
        value = payload.get(key)
        if value:
            return parse_gmt(value)
    return fallback


# -- orders --------------------------------------------------------------------------------------


def _positive_id(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise MappingError(f"{what} is not an id")
    if isinstance(value, int) and 0 < value < 2**63:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and 0 < int(value) < 2**63:
        return int(value)
    raise MappingError(f"{what} is missing or not an id")


def order_id(payload: Mapping[str, Any]) -> str:
    return str(_positive_id(payload.get("id"), "order id"))


def order_events(
    connector: str, channel: Channel, payload: Mapping[str, Any], now: int
) -> tuple[list[Event], list[str]]:
    """The events an order document stands for (see the table above), and why lines or the
    whole order were skipped. Raises `MappingError` for a document that is not an order."""
    oid = order_id(payload)
    status = payload.get("status")
    if not isinstance(status, str):
        raise MappingError("status is missing or not a string")
    status = status.strip().lower()
    completed_at = payload.get("date_completed_gmt")
    fulfilled = status == "completed" or (status == "refunded" and bool(completed_at))
    if status in CANCELLED_STATUSES or (status == "refunded" and not fulfilled):
        return [Event(
            connector=connector, event_id=f"cancel:{oid}", type=EventType.ORDER_CANCELLED,
            sku="", qty=0, order_id=oid, channel=channel.name,
            occurred_at=_when(payload, ("date_modified_gmt",), now),
        )], []
    if status not in OPEN_STATUSES and not fulfilled:
        return [], [f"order {oid} has status {status!r}: nothing to reserve or release"[:200]]
    created = _when(payload, ("date_created_gmt", "date_modified_gmt"), now)
    qty_by_sku, skipped = order_lines(payload, integral_floats=True)
    events = [
        Event(connector=connector, event_id=line_event_id(f"order:{oid}", sku),
              type=EventType.ORDER, sku=sku, qty=qty, occurred_at=created, order_id=oid,
              channel=channel.name)
        for sku, qty in qty_by_sku.items()
    ]
    if fulfilled:
        events.append(Event(
            connector=connector, event_id=f"fulfil:{oid}", type=EventType.ORDER_FULFILLED,
            sku="", qty=0, order_id=oid, channel=channel.name,
            occurred_at=_when(payload, ("date_completed_gmt", "date_modified_gmt"), now),
        ))
    return events, skipped


def strip_personal_data(order: Mapping[str, Any]) -> dict[str, Any]:
    """What a dead letter keeps of a polled order: its id, status, dates and lines — never the
    customer's name, addresses or e-mail."""
    out: dict[str, Any] = {k: order[k] for k in _ORDER_FIELDS if k in order and k != "line_items"}
    lines = order.get("line_items")
    if isinstance(lines, list):
        out["line_items"] = [
            {k: line[k] for k in _LINE_FIELDS if k in line} if isinstance(line, dict) else line
            for line in lines
        ]
    elif "line_items" in order:
        out["line_items"] = lines
    return out


# -- products ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Level:
    """What a product document says about one SKU's stock."""

    product_id: int
    parent_id: int | None  # the variable product of a variation
    sku: str
    qty: int
    modified: str  # date_modified_gmt as sent ("" when absent)


def _stock(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and abs(value) <= _MAX_QTY:
        return value
    return None


def product_level(payload: Mapping[str, Any]) -> Level | None:
    """The stock a product or variation document shows for its SKU, or None when it does not
    manage its own stock, has no SKU or no quantity. Raises `MappingError` without an id."""
    pid = _positive_id(payload.get("id"), "product id")
    if payload.get("manage_stock") is not True:  # false, or "parent" for a variation
        return None
    sku = payload.get("sku")
    if not isinstance(sku, str) or not sku.strip():
        return None
    sku = sku.strip()
    if len(sku) > _MAX_SKU or not sku.isprintable():
        raise MappingError("the SKU is too long or has control characters")
    qty = _stock(payload.get("stock_quantity"))
    if qty is None:
        if payload.get("stock_quantity") is None:
            return None
        raise MappingError("stock_quantity is not a count")
    parent: int | None = None
    if payload.get("type") == "variation" or payload.get("parent_id"):
        try:
            parent = _positive_id(payload.get("parent_id"), "parent_id")
        except MappingError:
            parent = None
    modified = payload.get("date_modified_gmt")
    return Level(pid, parent, sku, qty, modified if isinstance(modified, str) else "")


def level_event(connector: str, channel: Channel, level: Level, now: int) -> Event:
    at = now
    if level.modified:
        try:
            at = parse_gmt(level.modified)
        except MappingError:
            at = now
    ident = f"level:{level.product_id}:{level.modified or at}:{level.qty}"
    return Event(
        connector=connector, event_id=ident[:255], type=EventType.CHANNEL_LEVEL, sku=level.sku,
        qty=level.qty, remote_location="", channel=channel.name, occurred_at=at,
    )

"""Square notifications and inventory counts as syncd events: signature check and parsing, pure
functions.

Webhook deliveries (developer.squareup.com, "Validate that the notification is from Square" and
the `inventory.count.updated` reference) carry:

- `x-square-hmacsha256-signature`: base64 of HMAC-SHA256 keyed with the subscription's signature
  key, over the notification URL *as configured on the subscription* followed by the raw body.
  The URL is part of what is signed, so it must match byte for byte (a reverse proxy in front of
  syncd does not change it). Compared in constant time.
- a JSON body `{"merchant_id", "type", "event_id", "created_at", "data": {"type", "id", "object":
  {"inventory_counts": [InventoryCount, ...]}}}`, at most 100 counts per notification. A state
  change (IN_STOCK → WASTE, say) sends one count per state.

An `InventoryCount` is `{"catalog_object_id", "catalog_object_type": "ITEM_VARIATION", "state",
"location_id", "quantity": "<decimal string>", "calculated_at": "<RFC 3339>"}`. Only `IN_STOCK` is
stock on hand. Square quantities are decimals (up to 5 fractional digits); syncd counts whole
units, so a fractional quantity is refused (dead-lettered), never rounded. A negative `IN_STOCK`
quantity is real (the store sold more than it had counted) and is kept.

`event_id` is Square's idempotency value ("use it to bypass processing if it's a repeated value"):
the event made of one count is `"{event_id}:{catalog_object_id}:{location_id}"`, so a redelivery
is a `duplicate` in the ledger (rule 1). A count read by polling has no event: its id is derived
from the count state itself, `"poll:{catalog_object_id}:{location_id}:{calculated_at}"`, so the
same state read twice is a duplicate and an older state is `stale` (rule 3).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from syncd.model import Event, EventType, from_micros, to_micros

__all__ = [
    "COUNT_UPDATED",
    "IN_STOCK",
    "ITEM_VARIATION",
    "SIGNATURE_HEADER",
    "MappingError",
    "SquareCount",
    "catalog_id",
    "count_event",
    "inventory_counts",
    "notification_id",
    "parse_body",
    "parse_quantity",
    "parse_time",
    "poll_event_id",
    "read_count",
    "rfc3339",
    "sign",
    "usable_sku",
    "verify_signature",
    "webhook_event_id",
]

SIGNATURE_HEADER = "x-square-hmacsha256-signature"
COUNT_UPDATED = "inventory.count.updated"
IN_STOCK = "IN_STOCK"
ITEM_VARIATION = "ITEM_VARIATION"

_MAX_QTY = 1_000_000_000
_MAX_ID = 100  # Square ids are 13-32 characters; anything longer is not an id
_MAX_SKU = 200  # the ledger stores SKUs and event ids in 255 characters
_MAX_EVENT_ID = 255


class MappingError(ValueError):
    """The notification is JSON but not a usable count (dead-lettered)."""


def sign(key: bytes, notification_url: str, body: bytes) -> str:
    """The `x-square-hmacsha256-signature` Square sends for `body` posted to `notification_url`."""
    digest = hmac.new(key, notification_url.encode("utf-8") + body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def verify_signature(key: bytes, notification_url: str, body: bytes,
                     signature: str | None) -> bool:
    """Whether `signature` is base64(HMAC-SHA256(key, notification_url + body)), in constant
    time."""
    if not signature:
        return False
    try:
        given = base64.b64decode(signature.strip().encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return False
    expected = hmac.new(key, notification_url.encode("utf-8") + body, hashlib.sha256).digest()
    return hmac.compare_digest(given, expected)


def parse_body(body: bytes) -> dict[str, Any] | None:
    """The JSON object of a delivery, or None when the body is not a JSON object."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def parse_time(value: Any) -> int:
    """An RFC 3339 timestamp (`2019-10-29T18:38:45.10296Z`) as µs; nanoseconds are truncated."""
    if not isinstance(value, str) or not value or len(value) > 64:
        raise MappingError(f"not a timestamp: {value!r}"[:120])
    try:
        return to_micros(datetime.fromisoformat(value.strip()))
    except (ValueError, OverflowError) as exc:
        raise MappingError(f"not a timestamp with a zone: {value!r}"[:120]) from exc


def rfc3339(us: int) -> str:
    """µs since the epoch as RFC 3339 in UTC with microseconds (`updated_after`)."""
    return from_micros(us).astimezone(UTC).isoformat(timespec="microseconds").replace(
        "+00:00", "Z")


def parse_quantity(value: Any) -> int:
    """A Square quantity (a decimal string, "79" or "12.375") as whole units.

    A fractional quantity raises `MappingError`: syncd counts units and never rounds stock."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise MappingError(f"quantity is not a decimal string: {value!r}"[:120])
    if isinstance(value, int) and abs(value) > _MAX_QTY:  # before str(): 10**5000 would raise
        raise MappingError("quantity is out of range")
    text = str(value).strip()
    if not text or len(text) > 32:
        raise MappingError(f"quantity is not a decimal: {value!r}"[:120])
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise MappingError(f"quantity is not a decimal: {value!r}"[:120]) from None
    if not number.is_finite():
        raise MappingError(f"quantity is not a decimal: {value!r}"[:120])
    if number and number.adjusted() > 12:  # before int(): "1e999999999" is 11 characters
        raise MappingError(f"quantity {text} is out of range"[:120])
    if number != number.to_integral_value():
        raise MappingError(f"quantity {text} is not a whole number of units"[:120])
    qty = int(number)
    if abs(qty) > _MAX_QTY:
        raise MappingError(f"quantity {qty} is out of range"[:120])
    return qty


def catalog_id(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > _MAX_ID or not value.isprintable():
        raise MappingError("catalog_object_id is missing or not an id")
    return value


def usable_sku(value: Any) -> str | None:
    """The SKU of an item variation as syncd keys it, or None (no SKU: not stocked by syncd)."""
    if isinstance(value, str) and value and len(value) <= _MAX_SKU and value.isprintable():
        return value
    return None


def notification_id(payload: Mapping[str, Any]) -> str:
    event_id = payload.get("event_id")
    if not isinstance(event_id, str) or not event_id.strip():
        raise MappingError("event_id is missing")
    return event_id.strip()


def inventory_counts(payload: Mapping[str, Any]) -> list[Any]:
    """`data.object.inventory_counts` (the API reference), or `data.inventory_counts` (the shape
    shown in the inventory webhooks guide)."""
    data = payload.get("data")
    if not isinstance(data, dict):
        raise MappingError("data is missing or not an object")
    obj = data.get("object")
    counts = obj.get("inventory_counts") if isinstance(obj, dict) else None
    if counts is None:
        counts = data.get("inventory_counts")
    if not isinstance(counts, list):
        raise MappingError("data.object.inventory_counts is missing or not a list")
    return counts


@dataclass(frozen=True, slots=True)
class SquareCount:
    """One `InventoryCount` as received: filtered on state and location before it is validated,
    so that a count syncd does not use (waste, another location) is never dead-lettered."""

    catalog_object_id: Any
    catalog_object_type: Any
    state: Any
    location_id: Any
    quantity: Any
    calculated_at: Any

    @property
    def in_stock_variation(self) -> bool:
        return self.state == IN_STOCK and self.catalog_object_type in (None, ITEM_VARIATION)


def read_count(entry: Any) -> SquareCount:
    if not isinstance(entry, dict):
        raise MappingError("an inventory count is not an object")
    return SquareCount(
        catalog_object_id=entry.get("catalog_object_id"),
        catalog_object_type=entry.get("catalog_object_type"),
        state=entry.get("state"),
        location_id=entry.get("location_id"),
        quantity=entry.get("quantity"),
        calculated_at=entry.get("calculated_at"),
    )


def _capped(ident: str) -> str:
    if len(ident) <= _MAX_EVENT_ID:
        return ident
    return f"{ident[:150]}~{hashlib.sha256(ident.encode()).hexdigest()[:40]}"


def webhook_event_id(event_id: str, object_id: str, location_id: str) -> str:
    return _capped(f"{event_id}:{object_id}:{location_id}")


def poll_event_id(object_id: str, location_id: str, calculated_at: str) -> str:
    return _capped(f"poll:{object_id}:{location_id}:{calculated_at}")


def count_event(connector: str, event_id: str, sku: str, location: str, qty: int,
                occurred_at: int, square_location: str) -> Event:
    """A COUNT of `sku` at the syncd `location`, as of `occurred_at` (Square's `calculated_at`).
    `source` names the Square location the count came from."""
    return Event(connector=connector, event_id=event_id, type=EventType.COUNT, sku=sku, qty=qty,
                 occurred_at=occurred_at, location=location, source=square_location[:128])

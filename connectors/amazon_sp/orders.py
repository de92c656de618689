"""Amazon orders polled with `searchOrders` (Orders API v2026-01-01), as syncd events.

The contract (github.com/amzn/selling-partner-api-models, `models/orders-api-model/
orders_2026-01-01.json`; developer-docs.amazon.com/sp-api, searchOrders reference):

    GET /orders/2026-01-01/orders?lastUpdatedAfter=…&marketplaceIds=A,B&fulfilledBy=MERCHANT
        &includedData=FULFILLMENT&maxResultsPerPage=100[&paginationToken=…]
    200 {"orders": [{"orderId", "createdTime", "lastUpdatedTime", "salesChannel": {...},
                     "fulfillment": {"fulfillmentStatus", "fulfilledBy"},
                     "orderItems": [{"orderItemId", "quantityOrdered",
                                     "product": {"asin", "sellerSku", ...}}]}],
         "pagination": {"nextToken"}?, "lastUpdatedBefore"?}

Exactly one of `createdAfter` / `lastUpdatedAfter` is given; a next page repeats the same
parameters plus `paginationToken` (valid 24 h); `pagination` is absent on the last page. The
`fulfillment` block comes with `includedData=FULFILLMENT`. Rate: 0.0056/s, burst 20 (paced by the
client). Orders fulfilled by Amazon (FBA) are left out (`fulfilledBy=MERCHANT`): their stock is in
Amazon's warehouses, not in any location syncd keeps.

`fulfillmentStatus` → events (channel = the first channel this connector serves):

- `PENDING_AVAILABILITY`, `PENDING`, `UNSHIPPED`, `PARTIALLY_SHIPPED`: one `order` per SKU,
  `event_id = "order:{orderId}:{sku}"`, at `createdTime`;
- `SHIPPED`: `order_fulfilled`, `event_id = "ship:{orderId}"`, at `lastUpdatedTime`; when the
  order was not seen open before (it went from placed to shipped between two polls, or syncd
  restarted), the `order` events come first (duplicates in the ledger when already applied), so
  the reservation exists and rule 6 can settle it;
- `CANCELLED`: `order_cancelled`, `event_id = "cancel:{orderId}"`, at `lastUpdatedTime`;
- `UNFULFILLABLE`: nothing (Amazon-fulfilled orders only).

High-water mark: each poll asks for `lastUpdatedAfter = mark`, and the next mark is the poll's
start minus `SETTLE` (2 minutes: searchOrders does not promise that the last two minutes are
complete, which is why `lastUpdatedBefore` must be at least two minutes in the past). Orders
updated in that overlap are read twice; `Seen` remembers what each order already produced, so the
second reading yields nothing, and the ledger's event ids make any repeat after a restart a
harmless duplicate. The mark and `Seen` move only after the events are committed.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from connectors.base import DeadLetter
from syncd.model import Channel, Event, EventType, to_micros

__all__ = [
    "CANCELLED",
    "OPEN",
    "SETTLE",
    "SHIPPED",
    "OrderPage",
    "Seen",
    "events_of",
    "iso",
    "parse_time",
    "read_page",
]

SETTLE = timedelta(minutes=2)
OPEN = frozenset({"PENDING_AVAILABILITY", "PENDING", "UNSHIPPED", "PARTIALLY_SHIPPED"})
SHIPPED = "SHIPPED"
CANCELLED = "CANCELLED"
_MAX_SKU = 200
_MAX_QTY = 1_000_000_000
_SEEN_KEPT = 100_000


class MappingError(ValueError):
    """An order that cannot be read (dead-lettered)."""


def iso(ts: datetime) -> str:
    """ISO 8601 in UTC with milliseconds, as SP-API writes it."""
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: Any, what: str) -> datetime:
    if not isinstance(value, str) or not value:
        raise MappingError(f"{what} is missing")
    try:
        ts = datetime.fromisoformat(value.strip())
    except ValueError:
        raise MappingError(f"{what} is not an ISO 8601 time: {value!r}"[:160]) from None
    if ts.tzinfo is None:
        raise MappingError(f"{what} has no time zone: {value!r}"[:160])
    return ts


@dataclass(slots=True)
class OrderPage:
    orders: list[Any]
    next_token: str | None


def read_page(doc: Any) -> OrderPage:
    """A searchOrders answer (raises MappingError when it is not one)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("orders"), list):
        raise MappingError("searchOrders answered without an orders list")
    pagination = doc.get("pagination")
    token = pagination.get("nextToken") if isinstance(pagination, dict) else None
    return OrderPage(doc["orders"], token if isinstance(token, str) and token else None)


def _kind(status: str) -> str | None:
    if status in OPEN:
        return "open"
    if status == SHIPPED:
        return "shipped"
    if status == CANCELLED:
        return "cancelled"
    return None


def _event_id(prefix: str, order_id: str, sku: str = "") -> str:
    ident = f"{prefix}:{order_id}:{sku}" if sku else f"{prefix}:{order_id}"
    if len(ident) <= 255:
        return ident
    return f"{prefix}:{order_id[:150]}:{hashlib.sha256(sku.encode()).hexdigest()[:32]}"


@dataclass(slots=True)
class Mapped:
    order_id: str
    kind: str | None
    events: list[Event] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def events_of(connector: str, channel: Channel, order: Any, previous: str | None) -> Mapped:
    """The events of one order, given what it produced before (`previous` kind, or None)."""
    if not isinstance(order, dict):
        raise MappingError("an order is not an object")
    order_id = order.get("orderId")
    if not isinstance(order_id, str) or not order_id.strip():
        raise MappingError("orderId is missing")
    order_id = order_id.strip()
    fulfillment = order.get("fulfillment")
    status = fulfillment.get("fulfillmentStatus") if isinstance(fulfillment, dict) else None
    if not isinstance(status, str):
        raise MappingError(f"order {order_id}: fulfillment.fulfillmentStatus is missing")
    kind = _kind(status.upper())
    out = Mapped(order_id, kind)
    if kind is None or kind == previous:
        return out  # nothing new to say
    updated = parse_time(order.get("lastUpdatedTime"), f"order {order_id}: lastUpdatedTime")
    if kind == "cancelled":
        out.events.append(Event(
            connector=connector, event_id=_event_id("cancel", order_id),
            type=EventType.ORDER_CANCELLED, sku="", qty=0, occurred_at=to_micros(updated),
            order_id=order_id, channel=channel.name))
        return out
    if previous is None or kind == "open":
        created = parse_time(order.get("createdTime"), f"order {order_id}: createdTime")
        items = order.get("orderItems")
        if not isinstance(items, list):
            raise MappingError(f"order {order_id}: orderItems is missing")
        qty_by_sku: dict[str, int] = {}
        for i, line in enumerate(items):
            if not isinstance(line, dict):
                raise MappingError(f"order {order_id}: orderItems[{i}] is not an object")
            product = line.get("product")
            sku = product.get("sellerSku") if isinstance(product, dict) else None
            if not isinstance(sku, str) or not sku.strip():
                out.skipped.append(f"orderItems[{i}] has no sellerSku")
                continue
            qty = line.get("quantityOrdered")
            if isinstance(qty, bool) or not isinstance(qty, int) or not 0 <= qty <= _MAX_QTY:
                raise MappingError(f"order {order_id}: orderItems[{i}].quantityOrdered is not "
                                   "a count")
            key = sku.strip()
            if len(key) > _MAX_SKU or not key.isprintable():
                out.skipped.append(f"orderItems[{i}] has a SKU syncd cannot store")
                continue
            if qty:
                qty_by_sku[key] = qty_by_sku.get(key, 0) + qty
        out.events.extend(
            Event(connector=connector, event_id=_event_id("order", order_id, sku),
                  type=EventType.ORDER, sku=sku, qty=qty, occurred_at=to_micros(created),
                  order_id=order_id, channel=channel.name)
            for sku, qty in qty_by_sku.items())
    if kind == "shipped":
        out.events.append(Event(
            connector=connector, event_id=_event_id("ship", order_id),
            type=EventType.ORDER_FULFILLED, sku="", qty=0, occurred_at=to_micros(updated),
            order_id=order_id, channel=channel.name))
    return out


def dead_letter(connector: str, order: Any, reason: str) -> DeadLetter:
    try:
        payload = json.dumps(order, separators=(",", ":"))[:65536].encode()
    except (TypeError, ValueError):
        payload = repr(order)[:65536].encode()
    return DeadLetter(connector, reason[:500], payload, origin="searchOrders")


class Seen:
    """What each recent order already produced (its kind), bounded, oldest forgotten first."""

    def __init__(self, kept: int = _SEEN_KEPT) -> None:
        self.kept = kept
        self._kinds: OrderedDict[str, str] = OrderedDict()

    def get(self, order_id: str) -> str | None:
        return self._kinds.get(order_id)

    def update(self, kinds: Mapping[str, str]) -> None:
        for order_id, kind in kinds.items():
            self._kinds[order_id] = kind
            self._kinds.move_to_end(order_id)
        while len(self._kinds) > self.kept:
            self._kinds.popitem(last=False)

    def __len__(self) -> int:
        return len(self._kinds)

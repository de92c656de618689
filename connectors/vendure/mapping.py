"""Vendure orders and variants as syncd events and figures: pure functions, no I/O.

Orders (Admin API `orders`, the fields of `ORDER_FIELDS`) map onto conflict rule 6:

- an order that was never placed (`orderPlacedAt` null: a cart, a draft, `ArrangingPayment`):
  nothing. Vendure allocates stock only when the order is placed (`DefaultOrderPlacedStrategy`:
  `ArrangingPayment` → `PaymentAuthorized`/`PaymentSettled`), and so does syncd;
- a placed order: one `order` per SKU (the lines of one SKU merged, lines without a SKU or with
  quantity 0 skipped), `event_id = "order:{id}:{sku}"`, at `orderPlacedAt`;
- a SKU whose ordered quantity is covered by the order's fulfillments that are not `Cancelled`:
  one `order_fulfilled` for that SKU, `event_id = "fulfil:{id}:{sku}"`. Vendure records the sale
  (stock on hand and allocated both go down) when the fulfillment is *created*, in `Pending`, so
  syncd treats the line as fulfilled from then on, as Vendure does;
- state `Shipped` or `Delivered`: one `order_fulfilled` for the whole order, `fulfil:{id}`;
- state `Cancelled` after placement: one `order_cancelled`, `cancel:{id}`. A cart cancelled before
  placement stands for nothing (syncd never reserved it);
- `type: "Aggregate"` (a multi-vendor order split into seller orders): nothing; its seller orders
  carry the lines.

`order_id` is Vendure's order id (the `ID` scalar, a string: numbers by default, UUIDs with
`UuidIdStrategy`). The same order always maps to the same event ids, so re-reading it costs one
`duplicate` per event and changes nothing (rule 1).

Variants (`productVariants`, `updateProductVariants`) carry `stockLevels[{stockLocationId,
stockOnHand, stockAllocated}]`; `stock_levels` reads them. syncd writes and compares
`stockOnHand` only: `stockAllocated` is Vendure's own, moved by its own orders.

Timestamps are GraphQL `DateTime` strings (ISO 8601 with `Z`; `.000` when the database keeps
seconds only, as SQLite does).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from connectors._orders import MAX_QTY, MappingError, line_event_id, order_lines
from syncd.model import Channel, Event, EventType, from_micros, to_micros

__all__ = [
    "CANCELLED",
    "FULFILLED_STATES",
    "FULFILLMENT_FIELDS",
    "ORDER_FIELDS",
    "VARIANT_FIELDS",
    "MappingError",
    "StockLevel",
    "Target",
    "Variant",
    "format_datetime",
    "is_open",
    "location_targets",
    "order_events",
    "order_id",
    "order_marks",
    "parse_datetime",
    "parse_variant",
    "shared_targets",
]

CANCELLED = "Cancelled"
FULFILLED_STATES = frozenset({"Shipped", "Delivered"})
FULFILLMENT_FIELDS = "id state createdAt lines { orderLineId quantity }"
ORDER_FIELDS = (
    "id code state type active orderPlacedAt updatedAt "
    "lines { id quantity productVariant { id sku } } "
    f"fulfillments {{ {FULFILLMENT_FIELDS} }}"
)
VARIANT_FIELDS = "id sku stockLevels { stockLocationId stockOnHand stockAllocated }"
_MAX_ID = 200  # an order or variant id longer than this is not one Vendure made


# -- time ----------------------------------------------------------------------------------------


def parse_datetime(value: Any) -> int:
    """A GraphQL `DateTime` (`2026-11-23T10:00:00.000Z`) in µs since the epoch. A value without a
    zone is taken as UTC (Vendure always sends one)."""
    if not isinstance(value, str) or not value.strip() or len(value) > 64:
        raise MappingError(f"not a timestamp: {value!r}"[:120])
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        ts = datetime.fromisoformat(text)
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=UTC)
        return to_micros(ts)
    except (ValueError, OverflowError) as exc:
        raise MappingError(f"not a timestamp: {value!r}"[:120]) from exc


def format_datetime(us: int) -> str:
    """µs as a GraphQL `DateTime` (millisecond precision, UTC, `Z`)."""
    ts = from_micros(us)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def _optional_time(value: Any) -> int | None:
    return None if value is None else parse_datetime(value)


# -- ids -----------------------------------------------------------------------------------------


def _id(value: Any, what: str) -> str:
    """A GraphQL `ID`: a non-empty printable string (or an integer, as some clients send)."""
    if isinstance(value, bool):
        raise MappingError(f"{what} is not an id")
    if isinstance(value, int) and 0 <= value < 2**63:
        return str(value)
    if isinstance(value, str):
        text = value.strip()
        if text and len(text) <= _MAX_ID and text.isprintable():
            return text
    raise MappingError(f"{what} is missing or not an id")


def order_id(payload: Mapping[str, Any]) -> str:
    return _id(payload.get("id"), "order id")


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_QTY:
        raise MappingError(f"{what} is not a count")
    return value


# -- orders --------------------------------------------------------------------------------------


def _lines(payload: Mapping[str, Any]) -> tuple[list[tuple[str, str | None, int]], list[str]]:
    """`(line id, sku, quantity)` of every order line (sku None when the variant has none)."""
    lines = payload.get("lines")
    if not isinstance(lines, list):
        raise MappingError("lines is missing or not a list")
    out: list[tuple[str, str | None, int]] = []
    skipped: list[str] = []
    for i, line in enumerate(lines):
        if not isinstance(line, dict):
            raise MappingError(f"lines[{i}] is not an object")
        line_id = _id(line.get("id"), f"lines[{i}].id")
        qty = _count(line.get("quantity"), f"lines[{i}].quantity")
        variant = line.get("productVariant")
        sku = variant.get("sku") if isinstance(variant, dict) else None
        if not isinstance(sku, str) or not sku.strip():
            skipped.append(f"lines[{i}] has no SKU")
            out.append((line_id, None, qty))
            continue
        out.append((line_id, sku.strip(), qty))
    return out, skipped


def _fulfilled(payload: Mapping[str, Any]) -> tuple[dict[str, int], int | None]:
    """Quantity per order line id in fulfillments that are not cancelled, and the newest
    creation time among them."""
    fulfillments = payload.get("fulfillments")
    if fulfillments is None:
        return {}, None
    if not isinstance(fulfillments, list):
        raise MappingError("fulfillments is not a list")
    by_line: dict[str, int] = {}
    newest: int | None = None
    for i, ful in enumerate(fulfillments):
        if not isinstance(ful, dict):
            raise MappingError(f"fulfillments[{i}] is not an object")
        state = ful.get("state")
        if not isinstance(state, str):
            raise MappingError(f"fulfillments[{i}].state is not a string")
        if state == CANCELLED:
            continue
        created = _optional_time(ful.get("createdAt"))
        if created is not None and (newest is None or created > newest):
            newest = created
        lines = ful.get("lines")
        if not isinstance(lines, list):
            raise MappingError(f"fulfillments[{i}].lines is not a list")
        for j, fl in enumerate(lines):
            if not isinstance(fl, dict):
                raise MappingError(f"fulfillments[{i}].lines[{j}] is not an object")
            line_id = _id(fl.get("orderLineId"), f"fulfillments[{i}].lines[{j}].orderLineId")
            qty = _count(fl.get("quantity"), f"fulfillments[{i}].lines[{j}].quantity")
            by_line[line_id] = min(MAX_QTY, by_line.get(line_id, 0) + qty)
    return by_line, newest


def order_events(
    connector: str, channel: Channel, payload: Mapping[str, Any], now: int
) -> tuple[list[Event], list[str]]:
    """The events a Vendure order stands for (see the module docstring), and why lines or the
    whole order were skipped. Raises `MappingError` for a document that is not an order."""
    oid = order_id(payload)
    state = payload.get("state")
    if not isinstance(state, str) or not state.strip():
        raise MappingError("state is missing or not a string")
    state = state.strip()
    placed = _optional_time(payload.get("orderPlacedAt"))
    updated = _optional_time(payload.get("updatedAt"))
    if payload.get("type") == "Aggregate":
        return [], [f"order {oid} is an aggregate order: its seller orders carry the lines"]
    if placed is None:
        return [], [f"order {oid} ({state}) is not placed: nothing is allocated yet"[:200]]
    if state == CANCELLED:
        return [
            Event(
                connector=connector,
                event_id=f"cancel:{oid}",
                type=EventType.ORDER_CANCELLED,
                sku="",
                qty=0,
                order_id=oid,
                channel=channel.name,
                occurred_at=updated if updated is not None else now,
            )
        ], []
    lines, skipped = _lines(payload)
    qty_by_sku, more = order_lines(
        {"line_items": [{"sku": sku, "quantity": qty} for _, sku, qty in lines if sku is not None]}
    )
    skipped.extend(more)
    fulfilled_by_line, fulfilled_at = _fulfilled(payload)
    shipped_by_sku: dict[str, int] = {}
    for line_id, sku, _qty in lines:
        if sku is not None:
            key = sku.strip()
            shipped_by_sku[key] = shipped_by_sku.get(key, 0) + fulfilled_by_line.get(line_id, 0)
    events = [
        Event(
            connector=connector,
            event_id=line_event_id(f"order:{oid}", sku),
            type=EventType.ORDER,
            sku=sku,
            qty=qty,
            occurred_at=placed,
            order_id=oid,
            channel=channel.name,
        )
        for sku, qty in qty_by_sku.items()
    ]
    when = fulfilled_at if fulfilled_at is not None else (updated if updated is not None else now)
    events.extend(
        Event(
            connector=connector,
            event_id=line_event_id(f"fulfil:{oid}", sku),
            type=EventType.ORDER_FULFILLED,
            sku=sku,
            qty=0,
            occurred_at=when,
            order_id=oid,
            channel=channel.name,
        )
        for sku, qty in qty_by_sku.items()
        if shipped_by_sku.get(sku, 0) >= qty
    )
    if state in FULFILLED_STATES and qty_by_sku:
        events.append(
            Event(
                connector=connector,
                event_id=f"fulfil:{oid}",
                type=EventType.ORDER_FULFILLED,
                sku="",
                qty=0,
                order_id=oid,
                channel=channel.name,
                occurred_at=when,
            )
        )
    return events, skipped


def order_marks(payload: Mapping[str, Any]) -> list[int]:
    """The timestamps of an order the poller's high-water mark may advance to (`updatedAt`,
    `orderPlacedAt`): Vendure does not always move `updatedAt` when an order is placed."""
    out: list[int] = []
    for key in ("updatedAt", "orderPlacedAt"):
        try:
            value = _optional_time(payload.get(key))
        except MappingError:
            continue
        if value is not None:
            out.append(value)
    return out


def is_open(events: Iterable[Event]) -> bool:
    """Whether an order that mapped to `events` may still change what syncd holds for it: placed,
    and neither cancelled nor wholly fulfilled."""
    evs = list(events)
    if not any(e.type is EventType.ORDER for e in evs):
        return False
    return not any(
        e.type is EventType.ORDER_CANCELLED or (e.type is EventType.ORDER_FULFILLED and e.sku == "")
        for e in evs
    )


# -- variants ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StockLevel:
    on_hand: int
    allocated: int


@dataclass(frozen=True, slots=True)
class Variant:
    variant_id: str
    sku: str
    levels: dict[str, StockLevel]  # Vendure stock location id -> level


def parse_variant(doc: Any) -> Variant:
    """A `ProductVariant` document with `VARIANT_FIELDS`. Raises `MappingError`."""
    if not isinstance(doc, dict):
        raise MappingError("a product variant is not an object")
    vid = _id(doc.get("id"), "variant id")
    sku = doc.get("sku")
    if not isinstance(sku, str):
        raise MappingError(f"variant {vid} has no sku")
    levels_doc = doc.get("stockLevels", [])
    if not isinstance(levels_doc, list):
        raise MappingError(f"variant {vid}: stockLevels is not a list")
    levels: dict[str, StockLevel] = {}
    for i, lv in enumerate(levels_doc):
        if not isinstance(lv, dict):
            raise MappingError(f"variant {vid}: stockLevels[{i}] is not an object")
        loc = _id(lv.get("stockLocationId"), f"stockLevels[{i}].stockLocationId")
        on_hand = lv.get("stockOnHand")
        allocated = lv.get("stockAllocated", 0)
        for what, value in (("stockOnHand", on_hand), ("stockAllocated", allocated)):
            if isinstance(value, bool) or not isinstance(value, int) or abs(value) > MAX_QTY:
                raise MappingError(f"variant {vid}: stockLevels[{i}].{what} is not a count")
        assert isinstance(on_hand, int) and isinstance(allocated, int)
        levels[loc] = StockLevel(on_hand, allocated)
    return Variant(vid, sku, levels)  # exactly as Vendure stores it: SKUs match exactly


# -- stock locations -----------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Target:
    """Where one figure of a channel goes: the Vendure stock location `target`, and how the
    configuration says so (`via`: "stock_locations" or "location_map", `key`: the key there)."""

    channel: str
    location: str  # the syncd location
    remote: str  # the channel-side key of the figure
    target: str  # the Vendure stock location id
    via: str
    key: str


def location_targets(
    stock_locations: Mapping[str, str], channels: Iterable[Channel]
) -> tuple[list[Target], list[tuple[str, str]]]:
    """Where each figure of each channel goes, and the `(channel, location)` pairs that go
    nowhere. `stock_locations` is read by syncd location first, then by the channel-side key
    of a `location_map`; a `location_map` without a `stock_locations` entry names the Vendure
    stock location itself."""
    found: list[Target] = []
    missing: list[tuple[str, str]] = []
    for ch in channels:
        remote_of = dict(ch.location_map) or {loc: loc for loc in ch.sells_from}
        for loc, remote in remote_of.items():
            if loc in stock_locations:
                found.append(Target(ch.name, loc, remote, stock_locations[loc],
                                    "stock_locations", loc))
            elif remote in stock_locations:
                found.append(Target(ch.name, loc, remote, stock_locations[remote],
                                    "stock_locations", remote))
            elif ch.location_map:
                found.append(Target(ch.name, loc, remote, remote, "location_map", loc))
            else:
                missing.append((ch.name, loc))
    return found, missing


def shared_targets(targets: Iterable[Target]) -> list[tuple[Target, Target]]:
    """`(first, other)` for every figure sent to a Vendure stock location that an earlier one
    already takes: each would overwrite the other's `stockOnHand` there."""
    first: dict[str, Target] = {}
    out: list[tuple[Target, Target]] = []
    for t in targets:
        taken = first.setdefault(t.target, t)
        if taken is not t:
            out.append((taken, t))
    return out

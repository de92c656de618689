"""Typed domain objects: events, levels, reservations, locations and channels.

Plain data only. Timestamps are integer microseconds since the Unix epoch (UTC): they compare and
sum without time-zone surprises, and they store as a BIGINT on every dialect. Conversion to and from
ISO-8601 happens at the edges (`to_micros` / `from_micros`).
"""

from __future__ import annotations

import enum
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import overload

__all__ = [
    "COUNTED_STATES",
    "DELTA_SIGN",
    "STOCK_TYPES",
    "Channel",
    "Event",
    "EventType",
    "Level",
    "Location",
    "Outcome",
    "Reservation",
    "ReservationKind",
    "ReservationState",
    "from_micros",
    "kept_key",
    "to_micros",
]


def to_micros(ts: datetime) -> int:
    """An aware datetime as integer microseconds since the epoch. Naive datetimes are refused."""
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError("timestamp must carry a time zone")
    return (ts - _EPOCH) // _MICROSECOND  # exact: timedelta // timedelta is an int


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def from_micros(us: int) -> datetime:
    return datetime.fromtimestamp(us // 1_000_000, tz=UTC).replace(microsecond=us % 1_000_000)


class EventType(enum.StrEnum):
    # stock facts reported by a location's authority
    COUNT = "count"
    SALE = "sale"
    RETURN = "return"
    RECEIPT = "receipt"
    ADJUST = "adjust"
    PICKUP = "pickup"
    # channel orders (conflict rule 6)
    ORDER = "order"
    ORDER_CANCELLED = "order_cancelled"
    ORDER_FULFILLED = "order_fulfilled"
    # a channel reporting the quantity it shows (conflict rule 5)
    CHANNEL_LEVEL = "channel_level"
    # click-and-collect commands, ledgered so that a replay reproduces the state
    HOLD_CREATE = "hold_create"
    HOLD_RELEASE = "hold_release"
    HOLD_COLLECT = "hold_collect"
    HOLD_EXPIRE = "hold_expire"
    # a reservation released by the age limit (`order_reservation_max_age`)
    RESERVATION_EXPIRE = "reservation_expire"


STOCK_TYPES = frozenset(
    {
        EventType.COUNT,
        EventType.SALE,
        EventType.RETURN,
        EventType.RECEIPT,
        EventType.ADJUST,
        EventType.PICKUP,
    }
)

# sign applied to `qty` for each delta type; ADJUST carries its own sign
DELTA_SIGN: dict[EventType, int] = {
    EventType.SALE: -1,
    EventType.PICKUP: -1,
    EventType.RETURN: 1,
    EventType.RECEIPT: 1,
    EventType.ADJUST: 1,
}


class Outcome(enum.StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"  # not from the location's authority (rule 2)
    STALE = "stale"  # already inside a later count (rule 3)
    REJECTED = "rejected"  # a command refused: insufficient stock, unknown hold, bad state
    DRIFT = "drift"  # a channel showed a quantity other than the one pushed (rule 5)


@dataclass(slots=True, frozen=True)
class Event:
    """One inbound fact or command. `(connector, event_id)` is its identity."""

    connector: str
    event_id: str
    type: EventType
    sku: str
    qty: int
    occurred_at: int
    location: str | None = None
    source: str | None = None
    seq: int | None = None
    hold_id: str | None = None
    order_id: str | None = None
    channel: str | None = None
    # holds: absolute expiry; remote level reports: the channel-side location key
    expires_at: int | None = None
    remote_location: str | None = None


@dataclass(slots=True)
class Level:
    """On-hand of one SKU at one location, with the count watermark of rule 3.

    `tail` holds the applied deltas that happened after the watermark, as (occurred_at, delta).
    A later-arriving count that is older than some of them keeps them: on-hand = count + their sum.
    `floor` is the newest tail entry forgotten by the horizon bound (see `rules.py`); `reported_at`
    is the newest moment the authority reported stock as of (rule 6 settles fulfilled orders).
    """

    on_hand: int = 0
    watermark: int | None = None
    tail: list[tuple[int, int]] = field(default_factory=list)
    floor: int | None = None
    reported_at: int | None = None
    version: int = 0
    # the key it is kept under (`kept_key`): the batch's sets and the checkpoint's sort then
    # hold the kept names, not each event's copy; not part of the state
    key: tuple[str, str] | None = field(default=None, compare=False, repr=False)


@overload
def kept_key(sku: str, location: str, /) -> tuple[str, str]: ...
@overload
def kept_key(channel: str, sku: str, location: str, /) -> tuple[str, str, str]: ...
def kept_key(*names: str) -> tuple[str, ...]:
    """The key under which a level or an outbox row is kept for the daemon's lifetime, its
    names interned: every row of one SKU (its levels at each location, its outbox rows on each
    channel) then holds one copy of the SKU and of each location name, rather than a copy of
    each from every database row or event that created one (a sixth of the peak memory at a
    million rows: BENCHMARKS.md, "Scale")."""
    return tuple(map(sys.intern, names))


class ReservationKind(enum.StrEnum):
    HOLD = "hold"
    ORDER = "order"


class ReservationState(enum.StrEnum):
    HELD = "held"  # hold, active
    COLLECTED = "collected"
    RELEASED = "released"
    EXPIRED = "expired"
    ACTIVE = "active"  # order, awaiting fulfilment
    FULFILLED = "fulfilled"  # order shipped; still counted until the authority catches up
    CANCELLED = "cancelled"
    SETTLED = "settled"  # fulfilled and seen in the authority's stock: no longer counted


COUNTED_STATES = frozenset(
    {ReservationState.HELD, ReservationState.ACTIVE, ReservationState.FULFILLED}
)


@dataclass(slots=True)
class Reservation:
    res_id: str
    kind: ReservationKind
    sku: str
    location: str
    qty: int
    state: ReservationState
    created_at: int
    expires_at: int | None = None
    fulfilled_at: int | None = None
    updated_at: int = 0
    channel: str | None = None
    order_id: str | None = None
    oversold: bool = False

    def counts_at(self, now: int) -> bool:
        """Whether this reservation is subtracted from availability at `now`.

        A hold's expiry is decided here, at read time, never only by the sweeper."""
        if self.state not in COUNTED_STATES:
            return False
        return not (
            self.kind is ReservationKind.HOLD
            and self.expires_at is not None
            and self.expires_at <= now
        )


@dataclass(slots=True, frozen=True)
class Location:
    name: str
    kind: str  # "store" | "warehouse"
    authority: str
    safety_stock: int = 0
    pickup: bool = False


@dataclass(slots=True, frozen=True)
class Channel:
    name: str
    connector: str
    sells_from: tuple[str, ...]
    safety_stock: int = 0
    allocation: float = 1.0
    max_quantity: int = 1_000_000
    # syncd location -> channel-side location id; empty means one pooled figure
    location_map: tuple[tuple[str, str], ...] = ()
    # publish `max(0, avail)` for every location in sells_from (MQTT kiosks)
    per_location: bool = False
    # publish on-hand less the reservations of other channels (Vendure allocates its own orders)
    basis: str = "available"

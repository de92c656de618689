"""Reservation transitions (holds and channel orders), as pure functions.

```
hold:  held -> collected | released | expired
order: active -> fulfilled -> settled      (rule 6: settled once the authority reports stock as
       active | fulfilled -> cancelled      of a time at or after the fulfilment)
       active | fulfilled -> expired        (older than order_reservation_max_age)
```
"""

from __future__ import annotations

from collections.abc import Sequence

from .model import Event, EventType, Reservation, ReservationKind, ReservationState

__all__ = [
    "OPEN_STATES",
    "ReservationKind",
    "choose_source",
    "end_transition",
    "order_res_id",
    "res_id_of",
    "same_hold",
    "settles",
]

OPEN_STATES = frozenset(
    {ReservationState.HELD, ReservationState.ACTIVE, ReservationState.FULFILLED}
)


def order_res_id(channel: str, order_id: str, sku: str) -> str:
    return f"order:{channel}:{order_id}:{sku}"


def res_id_of(ev: Event) -> str:
    """The reservation an event names: an order line's, or the hold's; "" when none."""
    if ev.type is EventType.ORDER and ev.channel and ev.order_id:
        return order_res_id(ev.channel, ev.order_id, ev.sku)
    return ev.hold_id or ""


def choose_source(candidates: Sequence[tuple[str, int]], qty: int) -> tuple[str, bool]:
    """Pick the location for an order line from `(location, avail)` in `sells_from` order.

    The first location with enough availability wins; else the one with the most, and the line
    is marked oversold. Returns `(location, oversold)`."""
    for loc, available in candidates:
        if available >= qty:
            return loc, False
    best = max(candidates, key=lambda c: c[1])  # max keeps the first of equals
    return best[0], True


def settles(r: Reservation, reported_at: int) -> bool:
    return (
        r.state is ReservationState.FULFILLED
        and r.fulfilled_at is not None
        and reported_at >= r.fulfilled_at
    )


def same_hold(existing: Reservation, ev: Event) -> bool:
    """A repeated create with the same body is the same hold (idempotent on hold_id)."""
    return (
        existing.kind is ReservationKind.HOLD
        and existing.sku == ev.sku
        and existing.location == ev.location
        and existing.qty == ev.qty
        and existing.order_id == ev.order_id
    )


_END_TARGET = {
    EventType.HOLD_RELEASE: ReservationState.RELEASED,
    EventType.HOLD_COLLECT: ReservationState.COLLECTED,
    EventType.HOLD_EXPIRE: ReservationState.EXPIRED,
    EventType.RESERVATION_EXPIRE: ReservationState.EXPIRED,
}


def end_transition(
    r: Reservation, kind: EventType, now: int
) -> tuple[ReservationState | None, str]:
    """The state a release / collect / expiry moves `r` to, or `(None, reason)`.

    `(None, "")` means the request is already satisfied (a repeated release)."""
    target = _END_TARGET[kind]
    if kind is EventType.RESERVATION_EXPIRE:
        if r.kind is ReservationKind.ORDER and r.state in OPEN_STATES:
            return target, ""
        return None, "reservation_not_open"
    if r.kind is not ReservationKind.HOLD:
        return None, "not_a_hold"
    if r.state is target:
        return None, ""
    if r.state is not ReservationState.HELD:
        return None, f"hold_{r.state.value}"
    expired = r.expires_at is not None and r.expires_at <= now
    if kind is EventType.HOLD_EXPIRE:
        return (target, "") if expired else (None, "hold_not_expired")
    if expired:
        # read-time expiry: the stock is already free, so neither release nor collect applies
        return None, "hold_expired"
    return target, ""

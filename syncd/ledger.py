"""The ledger state and the conflict rules applied to it, with no I/O.

`Ledger.apply(event, now, changes)` is the one function that turns an event into state. The engine
calls it for live traffic, and `replay` calls it on the stored event log, so the two cannot
disagree. Idempotency (rule 1) is decided before `apply`: by the database in the engine, by a set
in `replay`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from . import reservations as res
from .availability import avail
from .model import (
    DELTA_SIGN,
    STOCK_TYPES,
    Channel,
    Event,
    EventType,
    Level,
    Location,
    Outcome,
    Reservation,
    ReservationState,
    kept_key,
)
from .rules import DEFAULT_TAIL_HORIZON, apply_count, apply_delta

__all__ = ["Changes", "Ledger", "LedgerConfig", "Verdict", "replay"]

log = logging.getLogger("syncd.ledger")

Key = tuple[str, str]  # (sku, location)
# enum members read once: a member looked up on its class costs a descriptor call (Python 3.11)
_APPLIED = Outcome.APPLIED
_COUNT = EventType.COUNT
_PICKUP = EventType.PICKUP


@dataclass(slots=True, frozen=True)
class LedgerConfig:
    locations: dict[str, Location]
    channels: dict[str, Channel]
    order_reservation_max_age: int = 14 * 86_400 * 1_000_000
    tail_horizon: int = DEFAULT_TAIL_HORIZON


@dataclass(slots=True)
class Verdict:
    outcome: Outcome
    reason: str = ""
    reservation: Reservation | None = None


@dataclass(slots=True)
class Changes:
    """What a batch touched, for the one commit that follows it."""

    # the levels it moved, with their state (the figures read them without a second lookup)
    levels: dict[Key, Level] = field(default_factory=dict)
    reservations: dict[str, Reservation] = field(default_factory=dict)
    # (sku, location) that went below zero in this batch (logged once, counted)
    oversold: set[Key] = field(default_factory=set)
    # (kind, old state or None when created, new state), in order, for the hold gauges
    transitions: list[tuple[str, str | None, str]] = field(default_factory=list)

    def touch_reservation(self, r: Reservation, old: ReservationState | None) -> None:
        self.reservations[r.res_id] = r
        self.transitions.append((r.kind.value, old.value if old else None, r.state.value))


class Ledger:
    """Levels and reservations of every (SKU, location) this engine serves."""

    def __init__(self, config: LedgerConfig) -> None:
        self.config = config
        self.levels: dict[Key, Level] = {}
        self.reservations: dict[str, Reservation] = {}
        # reservations still subtracted from availability (held / active / fulfilled)
        self.open: dict[Key, dict[str, Reservation]] = {}
        self.by_order: dict[tuple[str, str], dict[str, Reservation]] = {}

    # -- reading -----------------------------------------------------------------------------

    def level(self, sku: str, location: str) -> Level:
        key = (sku, location)
        lvl = self.levels.get(key)
        if lvl is None:
            kept = kept_key(sku, location)
            lvl = self.levels[kept] = Level(key=kept)
        return lvl

    def knows(self, sku: str) -> bool:
        """Whether any location has a level for `sku` (a count or a movement was applied)."""
        levels = self.levels
        return any((sku, loc) in levels for loc in self.config.locations)

    def reserved(
        self, sku: str, location: str, now: int, only_foreign_to: str | None = None
    ) -> int:
        """Reservations counted at `now`; with `only_foreign_to`, all but that channel's own
        unshipped orders.

        `only_foreign_to` serves channels that subtract their own allocations (Vendure): their
        ACTIVE orders are already allocated there, so they are left out. A FULFILLED one is not:
        the channel took it off its own on-hand when it shipped, while syncd's on-hand keeps it
        until the location's authority reports, so it is subtracted like anyone else's."""
        bucket = self.open.get((sku, location))
        if not bucket:
            return 0
        total = 0
        for r in bucket.values():
            if (only_foreign_to is not None and r.channel == only_foreign_to
                    and r.state is not ReservationState.FULFILLED):
                continue
            if r.counts_at(now):
                total += r.qty
        return total

    def avail(self, sku: str, location: str, now: int) -> int:
        key = (sku, location)
        lvl = self.levels.get(key)
        on_hand = lvl.on_hand if lvl is not None else 0
        reserved = self.reserved(sku, location, now) if key in self.open else 0
        return avail(on_hand, reserved, self.config.locations[location].safety_stock)

    # -- loading -----------------------------------------------------------------------------

    def load_reservation(self, r: Reservation) -> None:
        self.reservations[r.res_id] = r
        self._index(r)

    def forget(self, res_id: str) -> None:
        """Drop a reservation from memory (restore after a failed commit)."""
        r = self.reservations.pop(res_id, None)
        if r is not None:
            r.state = ReservationState.RELEASED
            self._index(r)

    def _index(self, r: Reservation) -> None:
        key = (r.sku, r.location)
        order_key = (r.channel or "", r.order_id or "")
        if r.state in res.OPEN_STATES:
            self.open.setdefault(key, {})[r.res_id] = r
            if r.order_id is not None:
                self.by_order.setdefault(order_key, {})[r.res_id] = r
        else:
            bucket = self.open.get(key)
            if bucket is not None:
                bucket.pop(r.res_id, None)
                if not bucket:
                    del self.open[key]
            orders = self.by_order.get(order_key)
            if orders is not None:
                orders.pop(r.res_id, None)
                if not orders:
                    del self.by_order[order_key]

    def _set_state(self, r: Reservation, state: ReservationState, now: int,
                   changes: Changes) -> None:
        old = r.state
        r.state = state
        r.updated_at = now
        self._index(r)
        changes.touch_reservation(r, old)

    # -- applying ----------------------------------------------------------------------------

    def apply(self, ev: Event, now: int, changes: Changes) -> Verdict:
        t = ev.type
        if t in STOCK_TYPES:
            return self._apply_stock(ev, now, changes)
        if t is EventType.ORDER:
            return self._apply_order(ev, now, changes)
        if t is EventType.ORDER_CANCELLED or t is EventType.ORDER_FULFILLED:
            return self._apply_order_update(ev, now, changes)
        if t is EventType.HOLD_CREATE:
            return self._hold_create(ev, now, changes)
        if t in (EventType.HOLD_RELEASE, EventType.HOLD_COLLECT, EventType.HOLD_EXPIRE,
                 EventType.RESERVATION_EXPIRE):
            return self._reservation_end(ev, now, changes)
        # CHANNEL_LEVEL is judged against the outbox by the engine (rule 5)
        return Verdict(Outcome.IGNORED, "not a ledger event")

    def _apply_stock(self, ev: Event, now: int, changes: Changes) -> Verdict:
        loc_name = ev.location
        loc = self.config.locations.get(loc_name or "")
        if loc is None or loc_name is None:
            return Verdict(Outcome.REJECTED, f"unknown location {loc_name!r}")
        if ev.connector != loc.authority:  # rule 2
            return Verdict(Outcome.IGNORED, f"{ev.connector!r} is not the authority of {loc_name}")
        key = (ev.sku, loc_name)
        lvl = self.levels.get(key)
        if lvl is None:
            key = kept_key(ev.sku, loc_name)
            lvl = self.levels[key] = Level(key=key)
        elif lvl.key is not None:
            key = lvl.key
        before = lvl.on_hand
        typ = ev.type
        if typ is _COUNT:
            applied = apply_count(lvl, ev.qty, ev.occurred_at)
        else:
            applied = apply_delta(lvl, DELTA_SIGN[typ] * ev.qty, ev.occurred_at,
                                  self.config.tail_horizon)
        hold_verdict: Reservation | None = None
        if typ is _PICKUP and ev.hold_id:
            # the handover happened whether or not its delta is already inside a count
            hold = self.reservations.get(ev.hold_id)
            if hold is not None and hold.state is ReservationState.HELD:
                self._set_state(hold, ReservationState.COLLECTED, now, changes)
                hold_verdict = hold
        if not applied:
            return Verdict(Outcome.STALE, "already inside a later count", hold_verdict)
        changes.levels[key] = lvl
        if lvl.on_hand < 0 <= before:
            changes.oversold.add(key)
        # rule 6: a fulfilled order is settled once the authority reports stock as of a time at
        # or after its fulfilment
        if key in self.open:
            self._settle(key, lvl, now, changes)
        return Verdict(_APPLIED, "", hold_verdict)

    def _settle(self, key: Key, lvl: Level, now: int, changes: Changes) -> None:
        bucket = self.open.get(key)
        if not bucket or lvl.reported_at is None:
            return
        for r in list(bucket.values()):
            if res.settles(r, lvl.reported_at):
                self._set_state(r, ReservationState.SETTLED, now, changes)

    def _apply_order(self, ev: Event, now: int, changes: Changes) -> Verdict:
        channel = self.config.channels.get(ev.channel or "")
        if channel is None or not ev.order_id:
            return Verdict(Outcome.REJECTED, f"unknown channel {ev.channel!r} or missing order id")
        res_id = res.order_res_id(channel.name, ev.order_id, ev.sku)
        if res_id in self.reservations:
            return Verdict(Outcome.DUPLICATE, "order line already reserved",
                           self.reservations[res_id])
        candidates = [(loc, self.avail(ev.sku, loc, now)) for loc in channel.sells_from]
        if ev.location and ev.location in channel.sells_from:
            chosen = ev.location
            oversold = self.avail(ev.sku, chosen, now) < ev.qty
        else:
            chosen, oversold = res.choose_source(candidates, ev.qty)
        r = Reservation(
            res_id=res_id, kind=res.ReservationKind.ORDER, sku=ev.sku, location=chosen,
            qty=ev.qty, state=ReservationState.ACTIVE, created_at=now, updated_at=now,
            channel=channel.name, order_id=ev.order_id, oversold=oversold,
        )
        self.reservations[res_id] = r
        self._index(r)
        changes.touch_reservation(r, None)
        if oversold:
            log.warning("order oversold", extra={"channel": channel.name, "location": chosen})
        return Verdict(Outcome.APPLIED, "", r)

    def _apply_order_update(self, ev: Event, now: int, changes: Changes) -> Verdict:
        lines = self.by_order.get((ev.channel or "", ev.order_id or ""))
        if not lines:
            return Verdict(Outcome.REJECTED, "unknown or closed order")
        touched: Reservation | None = None
        for r in list(lines.values()):
            if ev.sku and r.sku != ev.sku:
                continue
            if ev.type is EventType.ORDER_CANCELLED:
                self._set_state(r, ReservationState.CANCELLED, now, changes)
            elif r.state is ReservationState.ACTIVE:
                r.fulfilled_at = ev.occurred_at
                self._set_state(r, ReservationState.FULFILLED, now, changes)
                lvl = self.levels.get((r.sku, r.location))
                if lvl is not None and lvl.reported_at is not None and res.settles(
                    r, lvl.reported_at
                ):
                    self._set_state(r, ReservationState.SETTLED, now, changes)
            touched = r
        if touched is None:
            return Verdict(Outcome.REJECTED, "no open line for that SKU")
        return Verdict(Outcome.APPLIED, "", touched)

    def _hold_create(self, ev: Event, now: int, changes: Changes) -> Verdict:
        hold_id = ev.hold_id or ""
        existing = self.reservations.get(hold_id)
        if existing is not None:
            if res.same_hold(existing, ev):
                return Verdict(Outcome.DUPLICATE, "", existing)
            return Verdict(Outcome.REJECTED, "hold_conflict", existing)
        loc = self.config.locations.get(ev.location or "")
        if loc is None or not loc.pickup:
            return Verdict(Outcome.REJECTED, "not_pickup_location")
        if ev.qty <= 0:
            return Verdict(Outcome.REJECTED, "bad_quantity")
        available = self.avail(ev.sku, loc.name, now)
        if available < ev.qty:
            return Verdict(Outcome.REJECTED, "insufficient_stock")
        r = Reservation(
            res_id=hold_id, kind=res.ReservationKind.HOLD, sku=ev.sku, location=loc.name,
            qty=ev.qty, state=ReservationState.HELD, created_at=now, updated_at=now,
            expires_at=ev.expires_at, order_id=ev.order_id, channel=ev.channel,
        )
        self.reservations[hold_id] = r
        self._index(r)
        changes.touch_reservation(r, None)
        return Verdict(Outcome.APPLIED, "", r)

    def _reservation_end(self, ev: Event, now: int, changes: Changes) -> Verdict:
        r = self.reservations.get(ev.hold_id or "")
        if r is None:
            return Verdict(Outcome.REJECTED, "unknown_hold")
        target, reason = res.end_transition(r, ev.type, now)
        if target is None:
            if reason == "":
                return Verdict(Outcome.DUPLICATE, "", r)
            return Verdict(Outcome.REJECTED, reason, r)
        if ev.type is EventType.HOLD_COLLECT:
            lvl = self.level(r.sku, r.location)
            before = lvl.on_hand
            key = lvl.key or (r.sku, r.location)
            if apply_delta(lvl, -r.qty, ev.occurred_at, self.config.tail_horizon):
                changes.levels[key] = lvl
                if lvl.on_hand < 0 <= before:
                    changes.oversold.add(key)
        if ev.type is EventType.RESERVATION_EXPIRE:
            log.warning("order reservation released by age limit",
                        extra={"channel": r.channel or "", "location": r.location})
        self._set_state(r, target, now, changes)
        return Verdict(Outcome.APPLIED, "", r)

    # -- sweeping ----------------------------------------------------------------------------

    def due_expiries(self, now: int) -> Iterable[tuple[EventType, Reservation]]:
        """Holds past their TTL and orders past `order_reservation_max_age`, to be recorded."""
        max_age = self.config.order_reservation_max_age
        for bucket in self.open.values():
            for r in bucket.values():
                if r.state is ReservationState.HELD:
                    if r.expires_at is not None and r.expires_at <= now:
                        yield EventType.HOLD_EXPIRE, r
                elif r.created_at + max_age <= now:
                    yield EventType.RESERVATION_EXPIRE, r


def replay(config: LedgerConfig, events: Iterable[tuple[Event, int]]) -> Ledger:
    """Rebuild a ledger from scratch from `(event, applied_at)` pairs, in ledger order."""
    ledger = Ledger(config)
    seen: set[tuple[str, str]] = set()
    for ev, now in events:
        ident = (ev.connector, ev.event_id)
        if ident in seen:
            continue
        seen.add(ident)
        ledger.apply(ev, now, Changes())
    return ledger

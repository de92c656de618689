"""One test per conflict rule and per reservation transition, on the pure ledger."""

from __future__ import annotations

from syncd.ledger import Changes, Ledger
from syncd.model import EventType, Outcome, ReservationState
from tests.core import SEC, T0, ev, retailer

E = EventType


def ledger() -> Ledger:
    return Ledger(retailer())


def apply(lg: Ledger, *events: object, now: int = T0) -> list[Outcome]:
    return [lg.apply(e, now, Changes()).outcome for e in events]  # type: ignore[arg-type]


def on_hand(lg: Ledger, sku: str = "SKU-1", loc: str = "paris") -> int:
    return lg.levels[(sku, loc)].on_hand


# -- rule 2: authority -------------------------------------------------------------------------


def test_rule2_reports_from_a_non_authority_are_ignored() -> None:
    lg = ledger()
    assert apply(lg, ev(E.COUNT, qty=10, connector="pos")) == [Outcome.APPLIED]
    out = apply(lg, ev(E.SALE, qty=3, at=T0 + SEC, connector="wms"))
    assert out == [Outcome.IGNORED]
    assert on_hand(lg) == 10


def test_unknown_location_is_rejected() -> None:
    lg = ledger()
    assert apply(lg, ev(E.COUNT, qty=10, location="nowhere")) == [Outcome.REJECTED]


# -- rule 3: counts versus deltas --------------------------------------------------------------


def test_rule3_delta_at_or_before_watermark_is_stale() -> None:
    lg = ledger()
    apply(lg, ev(E.COUNT, qty=10, at=T0))
    assert apply(lg, ev(E.SALE, qty=1, at=T0), ev(E.SALE, qty=1, at=T0 - SEC)) == [
        Outcome.STALE, Outcome.STALE]
    assert on_hand(lg) == 10
    assert apply(lg, ev(E.SALE, qty=1, at=T0 + 1)) == [Outcome.APPLIED]
    assert on_hand(lg) == 9


def test_rule3_count_older_than_watermark_is_stale() -> None:
    lg = ledger()
    apply(lg, ev(E.COUNT, qty=10, at=T0))
    assert apply(lg, ev(E.COUNT, qty=50, at=T0 - SEC)) == [Outcome.STALE]
    assert on_hand(lg) == 10


def test_rule3_late_count_keeps_the_deltas_that_happened_after_it() -> None:
    lg = ledger()
    # sales at 10:00:05 and 10:00:20 arrive first; the count as of 10:00:10 arrives late
    apply(lg, ev(E.SALE, qty=2, at=T0 + 5 * SEC), ev(E.SALE, qty=3, at=T0 + 20 * SEC))
    assert apply(lg, ev(E.COUNT, qty=40, at=T0 + 10 * SEC)) == [Outcome.APPLIED]
    assert on_hand(lg) == 40 - 3  # the 10:00:05 sale is inside the count, the later one is not
    assert lg.levels[("SKU-1", "paris")].watermark == T0 + 10 * SEC


def test_rule3_every_delta_type_has_its_sign() -> None:
    lg = ledger()
    apply(lg, ev(E.COUNT, qty=10, at=T0))
    apply(lg, ev(E.SALE, qty=2, at=T0 + 1), ev(E.RETURN, qty=1, at=T0 + 2),
          ev(E.RECEIPT, qty=5, at=T0 + 3), ev(E.ADJUST, qty=-4, at=T0 + 4),
          ev(E.PICKUP, qty=1, at=T0 + 5))
    assert on_hand(lg) == 10 - 2 + 1 + 5 - 4 - 1


# -- rule 4: oversell --------------------------------------------------------------------------


def test_rule4_on_hand_may_go_negative_and_is_reported_once() -> None:
    lg = ledger()
    apply(lg, ev(E.COUNT, qty=1, at=T0))
    ch = Changes()
    lg.apply(ev(E.SALE, qty=3, at=T0 + 1), T0, ch)
    assert on_hand(lg) == -2
    assert ch.oversold == {("SKU-1", "paris")}
    ch2 = Changes()
    lg.apply(ev(E.SALE, qty=1, at=T0 + 2), T0, ch2)
    assert ch2.oversold == set()  # already below zero: not reported again
    assert lg.avail("SKU-1", "paris", T0) < 0


# -- rule 6: orders ----------------------------------------------------------------------------


def order(order_id: str = "O1", qty: int = 2, sku: str = "SKU-1", **kw: object) -> object:
    return ev(E.ORDER, sku=sku, qty=qty, location=None, connector="shop", channel="web",
              order_id=order_id, **kw)


def test_rule6_order_reserves_at_first_location_with_enough() -> None:
    lg = ledger()
    apply(lg, ev(E.COUNT, qty=1, location="lyon", connector="wms"),
          ev(E.COUNT, qty=10, location="paris"))
    ch = Changes()
    v = lg.apply(order(qty=2), T0, ch)  # type: ignore[arg-type]
    assert v.outcome is Outcome.APPLIED and v.reservation is not None
    assert v.reservation.location == "paris"  # lyon (first in sells_from) has only 1
    assert not v.reservation.oversold
    assert lg.reserved("SKU-1", "paris", T0) == 2


def test_rule6_order_with_no_location_enough_goes_to_the_most_and_is_oversold() -> None:
    lg = ledger()
    apply(lg, ev(E.COUNT, qty=1, location="lyon", connector="wms"),
          ev(E.COUNT, qty=3, location="paris"))
    v = lg.apply(order(qty=5), T0, Changes())  # type: ignore[arg-type]
    assert v.reservation is not None
    assert v.reservation.location == "paris" and v.reservation.oversold


def test_rule6_fulfilled_order_stays_counted_until_authority_reports_after_it() -> None:
    lg = ledger()
    apply(lg, ev(E.COUNT, qty=10, at=T0))
    lg.apply(order(qty=2), T0, Changes())  # type: ignore[arg-type]
    ship = T0 + 60 * SEC
    lg.apply(ev(E.ORDER_FULFILLED, qty=0, location=None, connector="shop", channel="web",
                order_id="O1", at=ship), ship, Changes())
    # fulfilled but the store has not reported yet: still reserved (no inflated window)
    assert lg.reserved("SKU-1", "paris", ship) == 2
    # a count from before the shipment does not settle it
    apply(lg, ev(E.COUNT, qty=10, at=ship - SEC))
    assert lg.reserved("SKU-1", "paris", ship) == 2
    # the shipment delta as of the fulfilment settles it: no double deduction
    apply(lg, ev(E.SALE, qty=2, at=ship))
    assert lg.reserved("SKU-1", "paris", ship) == 0
    assert on_hand(lg) == 8
    r = lg.reservations["order:web:O1:SKU-1"]
    assert r.state is ReservationState.SETTLED


def test_own_orders_are_left_out_for_a_channel_that_allocates_them_until_shipped() -> None:
    """`only_foreign_to` (Vendure's basis): the channel's unshipped orders are its own
    allocations, left out; once shipped, it took them off its own on-hand, so they count."""
    lg = ledger()
    apply(lg, ev(E.COUNT, qty=10, at=T0))
    lg.apply(order(qty=2), T0, Changes())  # type: ignore[arg-type]
    assert lg.reserved("SKU-1", "paris", T0) == 2
    assert lg.reserved("SKU-1", "paris", T0, only_foreign_to="web") == 0
    assert lg.reserved("SKU-1", "paris", T0, only_foreign_to="kiosk") == 2
    ship = T0 + 60 * SEC
    lg.apply(ev(E.ORDER_FULFILLED, qty=0, location=None, connector="shop", channel="web",
                order_id="O1", at=ship), ship, Changes())
    assert lg.reserved("SKU-1", "paris", ship, only_foreign_to="web") == 2
    apply(lg, ev(E.SALE, qty=2, at=ship))  # the store reports the shipment: settled
    assert lg.reserved("SKU-1", "paris", ship, only_foreign_to="web") == 0


def test_rule6_fulfilment_after_a_later_count_settles_at_once() -> None:
    lg = ledger()
    apply(lg, ev(E.COUNT, qty=10, at=T0))
    lg.apply(order(qty=2), T0, Changes())  # type: ignore[arg-type]
    apply(lg, ev(E.COUNT, qty=8, at=T0 + 100 * SEC))
    lg.apply(ev(E.ORDER_FULFILLED, qty=0, location=None, connector="shop", channel="web",
                order_id="O1", at=T0 + 50 * SEC), T0, Changes())
    assert lg.reserved("SKU-1", "paris", T0) == 0


def test_rule6_cancel_releases_at_once() -> None:
    lg = ledger()
    apply(lg, ev(E.COUNT, qty=10, at=T0))
    lg.apply(order(qty=2), T0, Changes())  # type: ignore[arg-type]
    v = lg.apply(ev(E.ORDER_CANCELLED, qty=0, sku="", location=None, connector="shop",
                    channel="web", order_id="O1"), T0, Changes())
    assert v.outcome is Outcome.APPLIED
    assert lg.reserved("SKU-1", "paris", T0) == 0


def test_rule6_order_older_than_max_age_is_released() -> None:
    lg = ledger()
    apply(lg, ev(E.COUNT, qty=10, at=T0))
    lg.apply(order(qty=2), T0, Changes())  # type: ignore[arg-type]
    later = T0 + 15 * 86_400 * SEC
    due = list(lg.due_expiries(later))
    assert [(t, r.res_id) for t, r in due] == [(E.RESERVATION_EXPIRE, "order:web:O1:SKU-1")]
    v = lg.apply(ev(E.RESERVATION_EXPIRE, qty=2, connector="syncd", hold_id="order:web:O1:SKU-1"),
                 later, Changes())
    assert v.outcome is Outcome.APPLIED
    assert lg.reserved("SKU-1", "paris", later) == 0


def test_rule6_repeated_order_line_is_a_duplicate() -> None:
    lg = ledger()
    apply(lg, ev(E.COUNT, qty=10, at=T0))
    lg.apply(order(qty=2), T0, Changes())  # type: ignore[arg-type]
    v = lg.apply(order(qty=2), T0, Changes())  # type: ignore[arg-type]
    assert v.outcome is Outcome.DUPLICATE
    assert lg.reserved("SKU-1", "paris", T0) == 2


# -- holds -------------------------------------------------------------------------------------


def hold(hold_id: str = "H1", qty: int = 2, ttl: int = 3600 * SEC, **kw: object) -> object:
    base = dict(sku="SKU-1", qty=qty, location="paris", connector="api", hold_id=hold_id,
                order_id="W-1", expires_at=T0 + ttl, event_id=f"hold:{hold_id}:create")
    base.update(kw)
    return ev(E.HOLD_CREATE, **base)  # type: ignore[arg-type]


def test_hold_refused_when_available_is_short() -> None:
    lg = ledger()
    apply(lg, ev(E.COUNT, qty=3, at=T0))  # paris safety stock 1: avail 2
    v = lg.apply(hold(qty=3), T0, Changes())  # type: ignore[arg-type]
    assert (v.outcome, v.reason) == (Outcome.REJECTED, "insufficient_stock")
    assert lg.apply(hold(qty=2), T0, Changes()).outcome is Outcome.APPLIED  # type: ignore[arg-type]
    assert lg.avail("SKU-1", "paris", T0) == 0


def test_hold_only_at_pickup_locations() -> None:
    lg = ledger()
    apply(lg, ev(E.COUNT, qty=30, location="lyon", connector="wms"))
    v = lg.apply(hold(location="lyon"), T0, Changes())  # type: ignore[arg-type]
    assert v.reason == "not_pickup_location"


def test_hold_is_idempotent_on_its_id() -> None:
    lg = ledger()
    apply(lg, ev(E.COUNT, qty=10, at=T0))
    first = lg.apply(hold(), T0, Changes())  # type: ignore[arg-type]
    again = lg.apply(hold(), T0, Changes())  # type: ignore[arg-type]
    assert again.outcome is Outcome.DUPLICATE and again.reservation is first.reservation
    other = lg.apply(hold(qty=1), T0, Changes())  # type: ignore[arg-type]
    assert (other.outcome, other.reason) == (Outcome.REJECTED, "hold_conflict")
    assert lg.reserved("SKU-1", "paris", T0) == 2


def test_hold_release_gives_the_stock_back() -> None:
    lg = ledger()
    apply(lg, ev(E.COUNT, qty=10, at=T0))
    before = lg.avail("SKU-1", "paris", T0)
    lg.apply(hold(), T0, Changes())  # type: ignore[arg-type]
    v = lg.apply(ev(E.HOLD_RELEASE, connector="api", hold_id="H1"), T0, Changes())
    assert v.outcome is Outcome.APPLIED
    assert lg.avail("SKU-1", "paris", T0) == before
    again = lg.apply(ev(E.HOLD_RELEASE, connector="api", hold_id="H1"), T0, Changes())
    assert again.outcome is Outcome.DUPLICATE


def test_hold_expiry_is_decided_at_read_time() -> None:
    lg = ledger()
    apply(lg, ev(E.COUNT, qty=10, at=T0))
    lg.apply(hold(ttl=60 * SEC), T0, Changes())  # type: ignore[arg-type]
    assert lg.reserved("SKU-1", "paris", T0 + 59 * SEC) == 2
    # no sweeper has run, yet the hold no longer counts
    assert lg.reserved("SKU-1", "paris", T0 + 60 * SEC) == 0
    assert lg.reservations["H1"].state is ReservationState.HELD
    # the sweeper only records it
    due = list(lg.due_expiries(T0 + 60 * SEC))
    assert [t for t, _ in due] == [E.HOLD_EXPIRE]
    lg.apply(ev(E.HOLD_EXPIRE, connector="syncd", hold_id="H1"), T0 + 60 * SEC, Changes())
    assert lg.reservations["H1"].state is ReservationState.EXPIRED
    # an expired hold cannot be collected or released
    v = lg.apply(ev(E.HOLD_COLLECT, connector="api", hold_id="H1"), T0 + 61 * SEC, Changes())
    assert (v.outcome, v.reason) == (Outcome.REJECTED, "hold_expired")


def test_hold_collect_moves_on_hand_and_hold_together() -> None:
    lg = ledger()
    apply(lg, ev(E.COUNT, qty=10, at=T0))
    lg.apply(hold(), T0, Changes())  # type: ignore[arg-type]
    ch = Changes()
    v = lg.apply(ev(E.HOLD_COLLECT, connector="api", hold_id="H1", at=T0 + SEC), T0 + SEC, ch)
    assert v.outcome is Outcome.APPLIED
    assert on_hand(lg) == 8
    assert lg.reservations["H1"].state is ReservationState.COLLECTED
    assert ("SKU-1", "paris") in ch.levels and "H1" in ch.reservations


def test_pos_pickup_naming_the_hold_collects_it() -> None:
    lg = ledger()
    apply(lg, ev(E.COUNT, qty=10, at=T0))
    lg.apply(hold(), T0, Changes())  # type: ignore[arg-type]
    assert apply(lg, ev(E.PICKUP, qty=2, at=T0 + SEC, hold_id="H1")) == [Outcome.APPLIED]
    assert on_hand(lg) == 8
    assert lg.reservations["H1"].state is ReservationState.COLLECTED
    assert lg.avail("SKU-1", "paris", T0) == 8 - 1


def test_stale_pickup_still_collects_the_hold() -> None:
    lg = ledger()
    apply(lg, ev(E.COUNT, qty=10, at=T0))
    lg.apply(hold(), T0, Changes())  # type: ignore[arg-type]
    apply(lg, ev(E.COUNT, qty=8, at=T0 + 10 * SEC))  # the count already has the handover in it
    assert apply(lg, ev(E.PICKUP, qty=2, at=T0 + 5 * SEC, hold_id="H1")) == [Outcome.STALE]
    assert on_hand(lg) == 8
    assert lg.reservations["H1"].state is ReservationState.COLLECTED

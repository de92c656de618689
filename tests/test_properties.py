"""Hypothesis properties of the conflict rules and the availability formula."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.availability import channel_figures, published
from syncd.figures import Figures
from syncd.ledger import Changes, Ledger, LedgerConfig, replay
from syncd.model import Channel, Event, EventType, Outcome
from tests.core import SEC, T0, retailer

E = EventType
DELTAS = [E.SALE, E.RETURN, E.RECEIPT, E.ADJUST, E.PICKUP]
SIGN = {E.SALE: -1, E.PICKUP: -1, E.RETURN: 1, E.RECEIPT: 1, E.ADJUST: 1}


@st.composite
def stock_events(draw: st.DrawFn, max_size: int = 30) -> list[Event]:
    """Counts and deltas at distinct moments within an hour, from any connector."""
    n = draw(st.integers(0, max_size))
    times = draw(st.lists(st.integers(0, 3600 * SEC), min_size=n, max_size=n, unique=True))
    out = []
    for i, t in enumerate(times):
        typ = draw(st.sampled_from([E.COUNT, *DELTAS]))
        qty = draw(st.integers(-5, 5) if typ is E.ADJUST else st.integers(0 if typ is E.COUNT
                                                                          else 1, 50))
        out.append(Event(
            connector=draw(st.sampled_from(["pos", "pos", "pos", "wms"])), event_id=f"e{i}",
            type=typ, sku=draw(st.sampled_from(["A", "B"])), qty=qty, occurred_at=T0 + t,
            location=draw(st.sampled_from(["paris", "lille"])),
        ))
    return out


def expected_on_hand(events: list[Event], sku: str, loc: str) -> int:
    """The watermark rule, stated directly: the latest count plus the deltas after it."""
    mine = [e for e in events if e.sku == sku and e.location == loc and e.connector == "pos"]
    counts = [e for e in mine if e.type is E.COUNT]
    base, since = (0, None)
    if counts:
        last = max(counts, key=lambda e: e.occurred_at)
        base, since = last.qty, last.occurred_at
    return base + sum(SIGN[e.type] * e.qty for e in mine
                      if e.type is not E.COUNT and (since is None or e.occurred_at > since))


def levels_of(lg: Ledger) -> dict[tuple[str, str], int]:
    return {k: v.on_hand for k, v in lg.levels.items()}


@given(stock_events(), st.randoms(use_true_random=False))
def test_counts_and_deltas_follow_the_watermark_rule_in_any_arrival_order(
    events: list[Event], rnd: object
) -> None:
    shuffled = list(events)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    lg = replay(retailer(), [(e, T0) for e in shuffled])
    for sku in ("A", "B"):
        for loc in ("paris", "lille"):
            got = lg.levels[(sku, loc)].on_hand if (sku, loc) in lg.levels else 0
            assert got == expected_on_hand(events, sku, loc)


@given(stock_events(), st.lists(st.integers(0, 29), max_size=30))
def test_any_duplication_of_the_log_changes_nothing(
    events: list[Event], repeat: list[int]
) -> None:
    once = replay(retailer(), [(e, T0) for e in events])
    doubled = list(events) + [events[i] for i in repeat if i < len(events)]
    twice = replay(retailer(), [(e, T0) for e in doubled])
    assert levels_of(once) == levels_of(twice)


@given(
    pool=st.integers(-1000, 10**7),
    allocation=st.floats(0.01, 1.0),
    safety=st.integers(0, 100),
    max_quantity=st.integers(0, 100_000),
)
def test_published_is_never_below_zero_or_above_max(
    pool: int, allocation: float, safety: int, max_quantity: int
) -> None:
    assert 0 <= published(pool, allocation, safety, max_quantity) <= max_quantity


@given(
    avails=st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(-100, 10**6)),
    per_location=st.booleans(),
    max_quantity=st.integers(0, 5000),
)
def test_channel_figures_stay_in_bounds(
    avails: dict[str, int], per_location: bool, max_quantity: int
) -> None:
    ch = Channel("c", "x", ("a", "b", "c"), safety_stock=3, allocation=0.5,
                 max_quantity=max_quantity, per_location=per_location)
    for qty in channel_figures(ch, avails).values():
        assert 0 <= qty <= max_quantity


@settings(max_examples=200)
@given(
    count=st.integers(0, 30),
    qty=st.integers(1, 10),
    ends=st.sampled_from([E.HOLD_RELEASE, E.HOLD_EXPIRE]),
    ttl=st.integers(1, 7200),
    orders=st.lists(st.integers(1, 5), max_size=3),
)
def test_a_hold_released_or_expired_gives_back_exactly_what_it_took(
    count: int, qty: int, ends: EventType, ttl: int, orders: list[int]
) -> None:
    lg = Ledger(retailer())
    lg.apply(Event("pos", "c", E.COUNT, "A", count, T0, "paris"), T0, Changes())
    for i, q in enumerate(orders):
        lg.apply(Event("shop", f"o{i}", E.ORDER, "A", q, T0, None, order_id=f"O{i}",
                       channel="web"), T0, Changes())
    before = lg.avail("A", "paris", T0)
    v = lg.apply(Event("api", "h", E.HOLD_CREATE, "A", qty, T0, "paris", hold_id="H",
                       expires_at=T0 + ttl * SEC), T0, Changes())
    if before < qty:
        assert v.outcome is Outcome.REJECTED and v.reason == "insufficient_stock"
        assert lg.avail("A", "paris", T0) == before
        return
    assert lg.avail("A", "paris", T0) == before - qty
    end_at = T0 + ttl * SEC if ends is E.HOLD_EXPIRE else T0
    v = lg.apply(Event("syncd", "x", ends, "A", qty, end_at, "paris", hold_id="H"), end_at,
                 Changes())
    assert v.outcome is Outcome.APPLIED
    assert lg.avail("A", "paris", end_at) == before


def _every_channel() -> LedgerConfig:
    """The retailer with one channel of every figure kind: pooled (web), per location
    (kiosk), a location map with a cap, and on-hand less the other channels' reservations."""
    cfg = retailer(allocation=0.5)
    channels = dict(cfg.channels)
    channels["market"] = Channel("market", "amz", ("lyon", "lille"), max_quantity=7,
                                 location_map=(("lyon", "L1"), ("lille", "L2")))
    channels["vend"] = Channel("vend", "vendure", ("paris", "lille"),
                               basis="on_hand_less_foreign")
    return LedgerConfig(locations=cfg.locations, channels=channels,
                        order_reservation_max_age=cfg.order_reservation_max_age)


@st.composite
def mixed_batches(draw: st.DrawFn) -> list[list[Event]]:
    """Stock events, orders (with cancels and fulfilments) and holds, in a few batches."""
    out: list[list[Event]] = []
    n = 0
    for _ in range(draw(st.integers(1, 4))):
        batch = []
        for _ in range(draw(st.integers(1, 8))):
            n += 1
            sku = draw(st.sampled_from(["A", "B"]))
            kind = draw(st.sampled_from(["stock", "stock", "order", "update", "hold"]))
            if kind == "stock":
                typ = draw(st.sampled_from([E.COUNT, *DELTAS]))
                loc = draw(st.sampled_from(["paris", "lille", "lyon"]))
                batch.append(Event("wms" if loc == "lyon" else "pos", f"s{n}", typ, sku,
                                   draw(st.integers(0, 9)), T0 + n, loc))
            elif kind == "order":
                ch = draw(st.sampled_from(["web", "market", "vend"]))
                batch.append(Event("shop", f"o{n}", E.ORDER, sku, draw(st.integers(1, 4)),
                                   T0 + n, None, channel=ch, order_id=f"O{n % 3}"))
            elif kind == "update":
                batch.append(Event("shop", f"u{n}", draw(st.sampled_from(
                    [E.ORDER_CANCELLED, E.ORDER_FULFILLED])), sku, 1, T0 + n, None,
                    channel=draw(st.sampled_from(["web", "market", "vend"])),
                    order_id=f"O{n % 3}"))
            else:
                batch.append(Event("api", f"h{n}", E.HOLD_CREATE, sku, draw(st.integers(1, 3)),
                                   T0 + n, draw(st.sampled_from(["paris", "lille"])),
                                   hold_id=f"H{n}", expires_at=T0 + 3600 * SEC))
        out.append(batch)
    return out


@settings(max_examples=150)
@given(mixed_batches())
def test_figures_of_what_moved_equal_a_full_recompute(batches: list[list[Event]]) -> None:
    """The engine recomputes only the figures a batch moved (`Figures.moved`); after any
    batches those figures, laid over the ones of untouched SKU × locations, equal every figure
    computed from scratch."""
    config = _every_channel()
    lg = Ledger(config)
    figures = Figures(lg)
    empty = Figures(Ledger(config))
    published: dict[tuple[str, str, str], int] = {}
    now = T0 + 100
    for batch in batches:
        changes = Changes()
        for e in batch:
            lg.apply(e, now, changes)
        held = {(r.sku, r.location) for r in changes.reservations.values()}
        moved = {**{key: lg.levels.get(key) for key in held}, **changes.levels}
        published.update(figures.moved(moved, now))
    for sku in ("A", "B"):
        for ch in config.channels.values():
            full = _reference(lg, ch, sku, now)
            for remote, qty in full.items():
                key = (ch.name, sku, remote)
                assert published.get(key, empty.of(ch, sku, now)[remote]) == qty, key


def _reference(lg: Ledger, ch: Channel, sku: str, now: int) -> dict[str, int]:
    """A channel's figures from `Ledger.avail` and the pure formula, not through `Figures`."""
    avails = {loc: lg.avail(sku, loc, now) for loc in ch.sells_from}
    if ch.basis == "on_hand_less_foreign":
        on_hand = {loc: (lv.on_hand if (lv := lg.levels.get((sku, loc))) else 0)
                   for loc in ch.sells_from}
        foreign = {loc: lg.reserved(sku, loc, now, only_foreign_to=ch.name)
                   for loc in ch.sells_from}
        return channel_figures(ch, avails, foreign, on_hand)
    return channel_figures(ch, avails)

"""The availability formula of DESIGN.md, as pure functions over plain data.

```
avail(sku, loc)    = on_hand - sum(active reservations(sku, loc)) - loc.safety_stock
pool(sku, ch)      = sum over loc in ch.sells_from of max(0, avail(sku, loc))
published(sku, ch) = clamp(floor(pool * ch.allocation) - ch.safety_stock, 0, ch.max_quantity)
```
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping

from .model import Channel

__all__ = [
    "ChannelFigures",
    "avail",
    "channel_figures",
    "pool",
    "published",
]

# channel-side key -> desired quantity; "" is the pooled figure
ChannelFigures = dict[str, int]


def avail(on_hand: int, reserved: int, safety_stock: int) -> int:
    """What one location could sell now. May be negative (oversold)."""
    return on_hand - reserved - safety_stock


def pool(avails: Iterable[int]) -> int:
    return sum(a for a in avails if a > 0)


def published(pool_qty: int, allocation: float, safety_stock: int, max_quantity: int) -> int:
    # floor with a tolerance so that e.g. 0.7 * 10 (= 6.999...) gives 7, not 6
    raw = math.floor(pool_qty * allocation + 1e-9) - safety_stock
    return max(0, min(raw, max_quantity))


def channel_figures(
    channel: Channel,
    avails: Mapping[str, int],
    foreign_reserved: Mapping[str, int] | None = None,
    on_hand: Mapping[str, int] | None = None,
    only: Collection[str] | None = None,
) -> ChannelFigures:
    """Every figure a channel publishes for one SKU.

    `avails` maps each location of `channel.sells_from` to `avail(sku, loc)`. A channel with a
    `location_map` (or `per_location`) publishes `max(0, avail)` per location instead of one pooled
    figure. With `basis == "on_hand_less_foreign"` (Vendure, which subtracts its own allocations)
    each location publishes on-hand minus the reservations held by *other* channels. With
    `only`, a per-location channel returns only the figures of those locations (the others
    did not move).
    """
    if channel.basis == "on_hand_less_foreign":
        if on_hand is None or foreign_reserved is None:
            raise ValueError("on_hand_less_foreign needs on_hand and foreign_reserved")
        keys = dict(channel.location_map) or {loc: loc for loc in channel.sells_from}
        if only is not None:
            keys = {loc: remote for loc, remote in keys.items() if loc in only}
        return {
            remote: min(max(0, on_hand.get(loc, 0) - foreign_reserved.get(loc, 0)),
                        channel.max_quantity)
            for loc, remote in keys.items()
        }
    if channel.location_map:
        return {
            remote: min(max(0, avails.get(loc, 0)), channel.max_quantity)
            for loc, remote in channel.location_map
            if only is None or loc in only
        }
    if channel.per_location:
        return {
            loc: min(max(0, avails.get(loc, 0)), channel.max_quantity)
            for loc in channel.sells_from
            if only is None or loc in only
        }
    total = pool(avails.get(loc, 0) for loc in channel.sells_from)
    return {
        "": published(total, channel.allocation, channel.safety_stock, channel.max_quantity)
    }

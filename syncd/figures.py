"""Which channel figures a batch moved, and their values, computed from the ledger.

No I/O: the engine hands it the (SKU, location) keys a batch touched, it answers with every
(channel, SKU, channel-side location) figure that may have moved. A per-location channel (kiosks,
a Shopify `location_map`) recomputes only the locations that moved; a pooled channel recomputes
its one figure from all of its `sells_from`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from . import availability
from .ledger import Ledger
from .model import Channel

__all__ = ["Figures"]


class Figures:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.by_location: dict[str, list[Channel]] = {}
        self.reindex()

    def reindex(self) -> None:
        """Rebuild the location -> channels index (start, reload)."""
        by_loc: dict[str, list[Channel]] = {}
        for ch in self.ledger.config.channels.values():
            for loc in ch.sells_from:
                by_loc.setdefault(loc, []).append(ch)
        self.by_location = by_loc

    def of(self, ch: Channel, sku: str, now: int,
           only: set[str] | None = None) -> dict[str, int]:
        """The channel's figures for one SKU; with `only`, a per-location channel computes
        just those locations."""
        ledger = self.ledger
        per_loc = bool(ch.location_map) or ch.per_location or ch.basis != "available"
        if not per_loc:  # the common case, without intermediate dicts
            total = 0
            for loc in ch.sells_from:
                a = ledger.avail(sku, loc, now)
                if a > 0:
                    total += a
            return {"": availability.published(total, ch.allocation, ch.safety_stock,
                                                ch.max_quantity)}
        locs = [loc for loc in ch.sells_from if loc in ledger.config.locations
                and (only is None or loc in only)]
        avails = {loc: ledger.avail(sku, loc, now) for loc in locs}
        if ch.basis == "on_hand_less_foreign":
            on_hand = {loc: (lv.on_hand if (lv := ledger.levels.get((sku, loc))) else 0)
                       for loc in locs}
            foreign = {loc: ledger.reserved(sku, loc, now, only_foreign_to=ch.name)
                       for loc in locs}
            return availability.channel_figures(ch, avails, foreign, on_hand, only=only)
        return availability.channel_figures(ch, avails, only=only)

    def moved(
        self, keys: Iterable[tuple[str, str]], now: int
    ) -> Iterator[tuple[tuple[str, str, str], int]]:
        """`((channel, sku, channel-side location), quantity)` for every figure `keys` touch."""
        touched: dict[tuple[str, str], set[str]] = {}  # (sku, channel) -> moved locations
        by_loc = self.by_location
        for sku, loc in keys:
            for ch in by_loc.get(loc, ()):
                touched.setdefault((sku, ch.name), set()).add(loc)
        channels = self.ledger.config.channels
        for (sku, ch_name), locs in touched.items():
            channel = channels.get(ch_name)
            if channel is None:
                continue
            for remote_loc, qty in self.of(channel, sku, now, locs).items():
                yield (ch_name, sku, remote_loc), qty

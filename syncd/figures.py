"""Which channel figures a batch moved, and their values, computed from the ledger.

No I/O: the engine hands it the (SKU, location) keys a batch touched, it answers with every
(channel, SKU, channel-side location) figure that may have moved. A per-location channel (kiosks,
a Shopify `location_map`) recomputes only the locations that moved; a pooled channel recomputes
its one figure from all of its `sells_from`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from . import availability
from .ledger import Ledger
from .model import Channel, Level

__all__ = ["Figures"]


class Figures:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        # location -> (channel, channel-side key, cap) of the channels whose figure for that
        # location depends on that location alone (per location, on the "available" basis)
        self.direct: dict[str, list[tuple[str, str, int]]] = {}
        # location -> the channels whose figures combine locations (pooled, or another basis)
        self.combined: dict[str, list[Channel]] = {}
        self.safety: dict[str, int] = {}  # location -> its safety stock
        self.pooled: set[str] = set()  # channels with one figure per SKU from all locations
        self.reindex()

    def reindex(self) -> None:
        """Rebuild the location -> channels indexes (start, reload)."""
        direct: dict[str, list[tuple[str, str, int]]] = {}
        combined: dict[str, list[Channel]] = {}
        known = self.ledger.config.locations
        for ch in self.ledger.config.channels.values():
            remote = dict(ch.location_map) if ch.location_map else None
            simple = ch.basis == "available" and (remote is not None or ch.per_location)
            for loc in ch.sells_from:
                if not simple:
                    combined.setdefault(loc, []).append(ch)
                elif loc in known and (remote is None or loc in remote):
                    key = loc if remote is None else remote[loc]
                    direct.setdefault(loc, []).append((ch.name, key, ch.max_quantity))
        self.direct, self.combined = direct, combined
        self.safety = {name: loc.safety_stock for name, loc in known.items()}
        self.pooled = {ch.name for ch in self.ledger.config.channels.values()
                       if not _per_location(ch)}

    def of(self, ch: Channel, sku: str, now: int,
           only: set[str] | None = None) -> dict[str, int]:
        """The channel's figures for one SKU; with `only`, a per-location channel computes
        just those locations."""
        ledger = self.ledger
        if not _per_location(ch):  # the common case, without intermediate dicts
            return {"": self._pooled(ch, sku, now)}
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

    def _pooled(self, ch: Channel, sku: str, now: int) -> int:
        """A pooled channel's one figure for `sku`, from all of its locations."""
        ledger = self.ledger
        levels, opened, safety = ledger.levels, ledger.open, self.safety
        total = 0
        for loc in ch.sells_from:
            key = (sku, loc)
            lvl = levels.get(key)
            # `availability.avail`, inlined on the per-figure path (a call costs more than the
            # arithmetic): on-hand - reserved - safety stock
            a = (lvl.on_hand if lvl is not None else 0) - safety[loc]
            if key in opened:
                a -= ledger.reserved(sku, loc, now)
            if a > 0:
                total += a
        return availability.published(total, ch.allocation, ch.safety_stock, ch.max_quantity)

    def moved(
        self, keys: Mapping[tuple[str, str], Level | None], now: int
    ) -> Iterator[tuple[tuple[str, str, str], int]]:
        """`((channel, sku, channel-side location), quantity)` for every figure `keys` touch;
        `keys` gives each (SKU, location) with its level (None: it has none), which a batch
        already holds (`Changes.levels`): a second lookup in the ledger's levels costs.

        The per-figure path of every batch: a per-location figure from its one location, a
        pooled channel's figure once per SKU, other kinds for the locations that moved."""
        ledger = self.ledger
        opened, safety = ledger.open, self.safety
        direct, combined, pooled_names = self.direct, self.combined, self.pooled
        pooled: set[tuple[str, str]] = set()  # (sku, channel) of pooled channels
        touched: dict[tuple[str, str], set[str]] = {}  # (sku, channel) -> moved locations
        for key, lvl in keys.items():
            sku, loc = key
            simple = direct.get(loc)
            if simple:
                # `availability.avail`, inlined as in `_pooled`
                a = (lvl.on_hand if lvl is not None else 0) - safety[loc]
                if key in opened:
                    a -= ledger.reserved(sku, loc, now)
                for ch_name, remote, cap in simple:
                    yield (ch_name, sku, remote), (a if a < cap else cap) if a > 0 else 0
            chans = combined.get(loc)
            if chans:
                for ch in chans:
                    if ch.name in pooled_names:
                        pooled.add((sku, ch.name))
                    else:
                        touched.setdefault((sku, ch.name), set()).add(loc)
        channels = self.ledger.config.channels
        for sku, ch_name in pooled:
            channel = channels.get(ch_name)
            if channel is not None:
                yield (ch_name, sku, ""), self._pooled(channel, sku, now)
        for (sku, ch_name), locs in touched.items():
            channel = channels.get(ch_name)
            if channel is None:
                continue
            for remote_loc, qty in self.of(channel, sku, now, locs).items():
                yield (ch_name, sku, remote_loc), qty


def _per_location(ch: Channel) -> bool:
    """Whether the channel publishes a figure per location (or per channel-side location)."""
    return bool(ch.location_map) or ch.per_location or ch.basis != "available"

"""Read-only views of the engine's in-memory state for the HTTP API and the kiosk publishers;
no I/O."""

from __future__ import annotations

from typing import Any

from .figures import Figures
from .ledger import Ledger
from .outbox import Outbox

__all__ = ["available_by_location", "stock"]


def stock(ledger: Ledger, figures: Figures, outbox: Outbox, sku: str, now: int) -> dict[str, Any]:
    """The `/v1/stock/{sku}` view: on-hand, reserved and available per location, and the
    published and pushed figures per channel."""
    cfg = ledger.config
    locs: dict[str, dict[str, int]] = {}
    for name in cfg.locations:
        lvl = ledger.levels.get((sku, name))
        reserved = ledger.reserved(sku, name, now)
        if lvl is None and not reserved:
            continue
        locs[name] = {
            "on_hand": lvl.on_hand if lvl else 0,
            "reserved": reserved,
            "available": max(0, ledger.avail(sku, name, now)),
        }
    chans: dict[str, Any] = {}
    for ch in cfg.channels.values():
        for remote_loc in figures.of(ch, sku, now):
            row = outbox.rows.get((ch.name, sku, remote_loc))
            if row is None:
                continue
            entry = {
                "published": row.desired,
                "pushed": row.pushed,
                "state": row.state if not row.pending else "pending",
            }
            if remote_loc:
                chans.setdefault(ch.name, {"locations": {}})["locations"][remote_loc] = entry
            else:
                chans[ch.name] = entry
    return {"sku": sku, "locations": locs, "channels": chans}


def available_by_location(ledger: Ledger, sku: str, now: int) -> dict[str, int]:
    """What each location has available for `sku` (never below 0)."""
    return {name: max(0, ledger.avail(sku, name, now)) for name in ledger.config.locations}

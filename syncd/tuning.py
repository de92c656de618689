"""Interpreter settings for the daemon process (`syncd run`): the garbage collector and the GIL.

The engine keeps every level, open reservation and outbox row in memory: a million SKU × location
rows are a few million long-lived objects. CPython's cyclic collector walks every tracked object
on each full collection, and with its default thresholds it runs a young collection every 700
container allocations (every few dozen events here). syncd's state objects form no reference
cycles (reference counting frees them), so the daemon

- freezes what it loaded at start out of the collector's reach (`gc.freeze`: the objects stay
  alive and are freed by reference counting as usual; only cycle detection skips them), and
- runs young collections every 50,000 allocations instead of 700.

Cycles are still collected, only less often. On the engine benchmark the collector's share of the
CPU time fell from about 21 % to about 6 % (BENCHMARKS.md, "Where the time goes").

The engine also has SQLite insert a batch's ledger rows on aiosqlite's thread while the event
loop finishes the batch before it (`Engine._process`). sqlite3 releases the GIL while a statement
steps, but the thread needs it back to bind the next statement and to hand over the result, and a
thread waiting for the GIL gets it only when the holder is asked to let go: after the switch
interval, 5 ms by default, longer than the event loop's share of a batch. At 1 ms the insert
finishes while the loop is still busy (BENCHMARKS.md, "Where the time goes", third session of
2026-12-06; docs/decisions.md, "SQLite works beside the event loop").
"""

from __future__ import annotations

import gc
import sys

__all__ = ["GEN0_THRESHOLD", "SWITCH_INTERVAL", "freeze_loaded_state", "tune"]

GEN0_THRESHOLD = 50_000
SWITCH_INTERVAL = 0.001  # seconds


def tune() -> None:
    """Collect young objects every `GEN0_THRESHOLD` allocations (default CPython: 700), and let
    a thread waiting for the GIL have it after `SWITCH_INTERVAL` (default: 5 ms)."""
    gc.set_threshold(GEN0_THRESHOLD, 20, 100)
    sys.setswitchinterval(SWITCH_INTERVAL)


def freeze_loaded_state() -> None:
    """Move every object alive now (the state loaded at start) to the permanent generation,
    after a full collection: garbage frozen with it (cycles left by the start) would never be
    freed."""
    gc.collect()
    gc.freeze()

"""Garbage-collector settings for the daemon process (`syncd run`).

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
"""

from __future__ import annotations

import gc

__all__ = ["GEN0_THRESHOLD", "freeze_loaded_state", "tune"]

GEN0_THRESHOLD = 50_000


def tune() -> None:
    """Collect young objects every `GEN0_THRESHOLD` allocations (default CPython: 700)."""
    gc.set_threshold(GEN0_THRESHOLD, 20, 100)


def freeze_loaded_state() -> None:
    """Move every object alive now (the state loaded at start) to the permanent generation,
    after a full collection: garbage frozen with it (cycles left by the start) would never be
    freed."""
    gc.collect()
    gc.freeze()

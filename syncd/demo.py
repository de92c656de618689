"""`syncd demo`: the whole system on this machine (filled in by the demo issue)."""

from __future__ import annotations

__all__ = ["run_demo"]


def run_demo(duration: float, skus: int, seed: int) -> int:
    raise SystemExit("syncd demo: not available yet")

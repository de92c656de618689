"""Pieces every channel's order and webhook mapping shares: the error a payload raises when it is
JSON but unusable, the limits of what the ledger can store, and order lines merged per SKU."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

__all__ = ["MAX_QTY", "MAX_SKU", "MappingError", "line_event_id", "order_lines"]

MAX_QTY = 1_000_000_000
MAX_SKU = 200  # the ledger stores SKUs and event ids in 255 characters


class MappingError(ValueError):
    """The payload is JSON but not a usable document of its kind (dead-lettered)."""


def line_event_id(prefix: str, sku: str) -> str:
    """`{prefix}:{sku}`, shortened with a hash of the SKU when it would not fit the ledger."""
    ident = f"{prefix}:{sku}"
    if len(ident) <= 255:
        return ident
    return f"{prefix[:200]}:{hashlib.sha256(sku.encode()).hexdigest()[:32]}"


def order_lines(
    payload: Mapping[str, Any], *, integral_floats: bool = False
) -> tuple[dict[str, int], list[str]]:
    """The `line_items` of an order as quantity per SKU, and why lines were skipped (no SKU,
    quantity 0, a SKU the ledger cannot store). Raises `MappingError` for a malformed list."""
    lines = payload.get("line_items")
    if not isinstance(lines, list):
        raise MappingError("line_items is missing or not a list")
    qty_by_sku: dict[str, int] = {}
    skipped: list[str] = []
    for i, line in enumerate(lines):
        if not isinstance(line, dict):
            raise MappingError(f"line_items[{i}] is not an object")
        sku = line.get("sku")
        if not isinstance(sku, str) or not sku.strip():
            skipped.append(f"line_items[{i}] has no SKU")
            continue
        qty = line.get("quantity")
        if integral_floats and isinstance(qty, float) and qty.is_integer():
            qty = int(qty)
        if isinstance(qty, bool) or not isinstance(qty, int) or not 0 <= qty <= MAX_QTY:
            raise MappingError(f"line_items[{i}].quantity is not a count")
        if qty == 0:
            skipped.append(f"line_items[{i}] has quantity 0")
            continue
        key = sku.strip()
        if len(key) > MAX_SKU or not key.isprintable():
            skipped.append(f"line_items[{i}] has a SKU syncd cannot store (too long or "
                           "control characters)")
            continue
        qty_by_sku[key] = qty_by_sku.get(key, 0) + qty
    return qty_by_sku, skipped

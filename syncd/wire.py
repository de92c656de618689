"""The event JSON that POS terminals and other sources send (MQTT and `POST /v1/events`).

```json
{"event_id": "T3-000123", "seq": 123, "source": "T3", "type": "sale", "sku": "SKU-1",
 "qty": 2, "occurred_at": "2026-11-23T10:00:00Z", "hold_id": null}
```

One event, or `{"events": [...]}`. `qty` is >= 0 for `count`, > 0 for `sale` / `return` /
`receipt` / `pickup`, and signed (non-zero) for `adjust`. `occurred_at` must carry a zone. A
message with any bad event is refused whole, with a reason naming the field.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from .model import Event, EventType, to_micros

__all__ = ["MAX_EVENTS", "MalformedMessage", "WireEvent", "parse_events"]

MAX_EVENTS = 10_000
Id = Annotated[StrictStr, Field(min_length=1, max_length=255)]
STOCK = Literal["count", "sale", "return", "receipt", "adjust", "pickup"]


class MalformedMessage(ValueError):
    """A message that cannot be applied; `reason` says why, naming the field."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class WireEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: Id
    type: STOCK
    sku: Id
    qty: StrictInt
    occurred_at: datetime
    seq: Annotated[StrictInt, Field(ge=0)] | None = None
    source: Annotated[StrictStr, Field(min_length=1, max_length=128)] | None = None
    hold_id: Id | None = None
    # only on POST /v1/events, where neither the topic nor the route names them
    connector: Annotated[StrictStr, Field(min_length=1, max_length=64)] | None = None
    location: Annotated[StrictStr, Field(min_length=1, max_length=128)] | None = None


def _qty_problem(typ: str, qty: int) -> str | None:
    if typ == "count" and qty < 0:
        return "must be >= 0 for count"
    if typ == "adjust" and qty == 0:
        return "must not be 0 for adjust"
    if typ not in ("count", "adjust") and qty <= 0:
        return f"must be > 0 for {typ}"
    return None


def _fmt(err: Any, prefix: str) -> str:
    loc = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
    kind = err["type"]
    if kind == "extra_forbidden":
        msg = "unknown key"
    elif kind == "missing":
        msg = "required key missing"
    elif kind == "literal_error" and err["loc"] and err["loc"][-1] == "type":
        msg = f"unknown event type {err.get('input')!r}"[:120]
    else:
        msg = err["msg"]
    return f"{loc}: {msg}" if loc else msg


def parse_events(
    payload: bytes | str | Any,
    *,
    connector: str | None,
    location: str | None,
    require_fields: tuple[str, ...] = (),
) -> list[Event]:
    """Validate one message. `connector` / `location`, when given, come from the transport (the
    topic); otherwise each event must carry its own. Raises `MalformedMessage`."""
    if isinstance(payload, bytes | str):
        try:
            data = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedMessage(f"not JSON: {exc}"[:200]) from None
    else:
        data = payload
    if isinstance(data, dict) and "events" in data:
        if set(data) != {"events"}:
            extra = sorted(set(data) - {"events"})[0]
            raise MalformedMessage(f"{extra}: unknown key")
        items = data["events"]
        if not isinstance(items, list) or not items:
            raise MalformedMessage("events: must be a non-empty list")
        if len(items) > MAX_EVENTS:
            raise MalformedMessage(f"events: more than {MAX_EVENTS} events in one message")
        prefixes = [f"events.{i}" for i in range(len(items))]
    else:
        items, prefixes = [data], [""]
    out: list[Event] = []
    for item, prefix in zip(items, prefixes, strict=True):
        if not isinstance(item, dict):
            raise MalformedMessage(f"{prefix or 'message'}: must be a JSON object")
        try:
            w = WireEvent.model_validate(item)
        except ValidationError as exc:
            raise MalformedMessage(_fmt(exc.errors()[0], prefix)) from None
        where = f"{prefix}." if prefix else ""
        if connector is not None and w.connector is not None:
            raise MalformedMessage(f"{where}connector: unknown key")
        if location is not None and w.location is not None:
            raise MalformedMessage(f"{where}location: unknown key")
        for name in require_fields:
            if getattr(w, name) is None:
                raise MalformedMessage(f"{where}{name}: required key missing")
        if problem := _qty_problem(w.type, w.qty):
            raise MalformedMessage(f"{where}qty: {problem}")
        if w.occurred_at.tzinfo is None or w.occurred_at.utcoffset() is None:
            raise MalformedMessage(f"{where}occurred_at: timestamp must carry a time zone")
        out.append(Event(
            connector=connector or w.connector or "", event_id=w.event_id,
            type=EventType(w.type), sku=w.sku, qty=w.qty, occurred_at=to_micros(w.occurred_at),
            location=location or w.location, source=w.source, seq=w.seq, hold_id=w.hold_id,
        ))
    return out

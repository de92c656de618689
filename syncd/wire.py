"""The event JSON of syncd's own POS protocol (MQTT and `POST /v1/events`): bytes in, `Event`s
out, or one clear reason why not.

`parse_message` is a pure function (no I/O, no clock) so that it can be property-tested. A message
is one event or `{"events": [...]}`; a single event is reported as `events.0` so that every reason
names its field the same way: `events.2.qty: must be > 0 for sale`. A message with any bad event is
refused whole: the caller dead-letters it and nothing of it is applied.

Strings that would poison a later commit are refused here rather than in the database: lone
surrogates (not encodable as UTF-8), control characters (PostgreSQL refuses NUL in text), values
longer than their column, integers outside BIGINT.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from datetime import datetime
from typing import Annotated, Any, Final
from urllib.parse import quote

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from .model import STOCK_TYPES, Event, EventType, to_micros

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "MAX_QTY",
    "MAX_SEQ",
    "POS_EVENT_TYPES",
    "MalformedMessage",
    "parse_api_events",
    "parse_message",
    "topic_sku",
]

DEFAULT_MAX_PAYLOAD: Final = 262_144
MAX_SEQ: Final = 2**63 - 1  # BIGINT
MAX_QTY: Final = 1_000_000_000  # no store holds a billion units of one SKU; sums stay in BIGINT

# what a POS may report: the stock facts of its own locations
POS_EVENT_TYPES: Final = frozenset(t.value for t in STOCK_TYPES)
_POSITIVE_TYPES: Final = frozenset({"sale", "return", "receipt", "pickup"})


class MalformedMessage(ValueError):
    """A message that cannot be applied; `reason` says why, for the dead letter."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _quote(value: object, limit: int = 64) -> str:
    """A user-supplied value for a reason: bounded, control characters escaped."""
    text = value if isinstance(value, str) else str(value)
    shown = repr(text[:limit])
    return shown + ("…" if len(text) > limit else "")


# -- field validators --------------------------------------------------------------------------


# one scan finds both: C0/C1 control characters and lone surrogates (not encodable as UTF-8)
_UNFIT: Final = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _clean_text(value: object) -> object:
    if not isinstance(value, str):
        return value  # strict str validation reports the type
    found = _UNFIT.search(value)
    if found is None:
        return value
    if 0xD800 <= ord(found.group()) <= 0xDFFF:
        raise PydanticCustomError("unicode", "must be valid Unicode (no lone surrogates)")
    raise PydanticCustomError("control_char", "must not contain control characters")


def _event_type(value: object) -> object:
    if not isinstance(value, str):
        raise PydanticCustomError("event_type", "must be a string")
    if value not in POS_EVENT_TYPES:
        raise PydanticCustomError(
            "event_type", "unknown event type {name}", {"name": _quote(value)}
        )
    return value


def _timestamp(value: object) -> int:
    """An ISO-8601 timestamp with a zone, as integer microseconds since the epoch."""
    if not isinstance(value, str):
        raise PydanticCustomError("timestamp", "must be an ISO-8601 string")
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        raise PydanticCustomError(
            "timestamp", "not an ISO-8601 timestamp: {value}", {"value": _quote(value)}
        ) from None
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise PydanticCustomError("timestamp", "timestamp must carry a time zone")
    micros = to_micros(ts)
    if micros < 0:
        raise PydanticCustomError("timestamp", "timestamp is before 1970")
    return micros


_Text255 = Annotated[str, Field(min_length=1, max_length=255), BeforeValidator(_clean_text)]
_Text128 = Annotated[str, Field(min_length=1, max_length=128), BeforeValidator(_clean_text)]


class _EventIn(BaseModel):
    """One POS event, exactly these keys; `strict`: `"3"` is not an integer, `true` neither."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, hide_input_in_errors=True)

    event_id: _Text255
    seq: Annotated[int, Field(ge=0, le=MAX_SEQ)] | None = None
    source: _Text128 | None = None
    type: Annotated[str, BeforeValidator(_event_type)]
    sku: _Text255
    qty: Annotated[int, Field(ge=-MAX_QTY, le=MAX_QTY)]
    occurred_at: Annotated[int, BeforeValidator(_timestamp)]  # µs since the epoch
    hold_id: _Text255 | None = None


_EVENTS: Final = TypeAdapter(list[_EventIn])
_TYPES: Final = {t.value: t for t in EventType}


# -- error reasons -----------------------------------------------------------------------------

_PLAIN: Final = {
    "missing": "is required",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "string_type": "must be a string",
    "string_too_short": "must not be empty",
    "model_type": "must be a JSON object",
    "dict_type": "must be a JSON object",
}


def _describe(err: ErrorDetails, prefix: str) -> str:
    loc = [str(p) for p in err["loc"]]
    kind = err["type"]
    ctx: dict[str, Any] = dict(err.get("ctx") or {})
    if kind == "extra_forbidden" and loc:
        key = loc.pop()
        message = f"unknown key {_quote(key)}"
    elif kind in _PLAIN:
        message = _PLAIN[kind]
    elif kind == "greater_than_equal":
        message = f"must be >= {ctx.get('ge')}"
    elif kind == "less_than_equal":
        message = f"must be <= {ctx.get('le')}"
    elif kind == "string_too_long":
        message = f"must be at most {ctx.get('max_length')} characters"
    else:
        message = err["msg"]
    path = ".".join([prefix, *loc])
    return f"{path}: {message}"


def _reason(exc: ValidationError, prefix: str) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    first = _describe(errors[0], prefix)
    more = len(errors) - 1
    return first if not more else f"{first} (and {more} more problem{'s' * (more > 1)})"


# -- JSON --------------------------------------------------------------------------------------


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(f"duplicate key {_quote(key)}")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):  # a key given twice: name the first repeat
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return out


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _load(payload: bytes) -> Any:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedMessage(f"not UTF-8: invalid byte at offset {exc.start}") from None
    try:
        return json.loads(text, object_pairs_hook=_object, parse_constant=_constant)
    except _DuplicateKey as exc:
        raise MalformedMessage(str(exc)) from None
    except RecursionError:
        raise MalformedMessage("not JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, int digits limit
        raise MalformedMessage(f"not JSON: {str(exc)[:200]}") from None


# -- the message -------------------------------------------------------------------------------


def parse_message(
    topic_location: str,
    payload: bytes,
    known_locations: Collection[str],
    *,
    connector: str,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
) -> list[Event]:
    """The events of one message published on `{prefix}/pos/{topic_location}/events`.

    Raises `MalformedMessage` (and nothing else) when any part of it is wrong."""
    if len(payload) > max_payload:
        raise MalformedMessage(f"payload of {len(payload)} bytes exceeds max_payload {max_payload}")
    if topic_location not in known_locations:
        raise MalformedMessage(f"unknown location {_quote(topic_location)}")
    doc = _load(bytes(payload))
    if isinstance(doc, dict) and "events" in doc:
        extra = sorted(k for k in doc if k != "events")
        if extra:
            raise MalformedMessage(f"unknown key {_quote(extra[0])}")
        items = doc["events"]
        if not isinstance(items, list):
            raise MalformedMessage("events: must be a list")
        if not items:
            raise MalformedMessage("events: must not be empty")
    elif isinstance(doc, dict):
        items = [doc]
    else:
        raise MalformedMessage('must be a JSON object: one event or {"events": [...]}')

    try:  # the whole list in one call; any problem is found again item by item below
        valid: list[_EventIn] | None = _EVENTS.validate_python(items)
    except ValidationError:
        valid = None
    out: list[Event] = []
    for i, item in enumerate(items):
        prefix = f"events.{i}"
        if valid is not None:
            m = valid[i]
        elif not isinstance(item, dict):
            raise MalformedMessage(f"{prefix}: must be a JSON object")
        else:
            try:
                m = _EventIn.model_validate(item)
            except ValidationError as exc:
                raise MalformedMessage(_reason(exc, prefix)) from None
        if m.type == "count" and m.qty < 0:
            raise MalformedMessage(f"{prefix}.qty: must be >= 0 for count")
        if m.type in _POSITIVE_TYPES and m.qty <= 0:
            raise MalformedMessage(f"{prefix}.qty: must be > 0 for {m.type}")
        if m.type == "adjust" and m.qty == 0:
            raise MalformedMessage(f"{prefix}.qty: must not be 0 for adjust")
        if m.hold_id is not None and m.type != "pickup":
            raise MalformedMessage(
                f"{prefix}.hold_id: only a pickup names a hold (a handover is not a {m.type})"
            )
        # positional, in `Event`'s field order: the per-event path of every POS message
        out.append(Event(connector, m.event_id, _TYPES[m.type], m.sku, m.qty, m.occurred_at,
                         topic_location, m.source, m.seq, m.hold_id))
    return out


# -- topics ------------------------------------------------------------------------------------

# Characters a topic level cannot carry as is: the separator, the wildcards, `%` itself (so that
# the encoding is reversible), and what a broker may refuse in a UTF-8 topic: NUL and the other
# control characters, lone surrogates, noncharacters.
def _topic_safe(ch: str) -> bool:
    c = ord(ch)
    if c < 0x20 or 0x7F <= c <= 0x9F or ch in "%+#/":
        return False
    return not (0xD800 <= c <= 0xDFFF or 0xFDD0 <= c <= 0xFDEF or (c & 0xFFFE) == 0xFFFE)


def topic_sku(sku: str) -> str:
    """A SKU as one topic level: `+ # / %`, control characters, surrogates and noncharacters
    percent-encoded (UTF-8); everything else is kept. `unquote(level, errors="surrogatepass")`
    gives the SKU back."""
    return "".join(
        ch if _topic_safe(ch) else quote(ch, safe="", errors="surrogatepass") for ch in sku
    )


def parse_api_events(
    payload: bytes, known_locations: Collection[str], known_connectors: Collection[str]
) -> list[Event]:
    """`POST /v1/events`: the same events, each naming its `connector` and `location` (which the
    MQTT topic gives otherwise). Refused whole, like a message, when any event is wrong."""
    if len(payload) > DEFAULT_MAX_PAYLOAD * 16:
        raise MalformedMessage(f"body of {len(payload)} bytes is too large")
    doc = _load(payload)
    items = doc["events"] if isinstance(doc, dict) and "events" in doc else [doc]
    if isinstance(doc, dict) and "events" in doc and set(doc) != {"events"}:
        raise MalformedMessage(f"unknown key {_quote(sorted(set(doc) - {'events'})[0])}")
    if not isinstance(items, list) or not items:
        raise MalformedMessage("events: must be a non-empty list")
    out: list[Event] = []
    for i, item in enumerate(items):
        prefix = f"events.{i}"
        if not isinstance(item, dict):
            raise MalformedMessage(f"{prefix}: must be a JSON object")
        rest = dict(item)
        connector, location = rest.pop("connector", None), rest.pop("location", None)
        for name, value, known in (("connector", connector, known_connectors),
                                   ("location", location, known_locations)):
            if value is None:
                raise MalformedMessage(f"{prefix}.{name}: required key missing")
            if not isinstance(value, str) or value not in known:
                raise MalformedMessage(f"{prefix}.{name}: unknown {name} {_quote(value)}")
        assert isinstance(connector, str) and isinstance(location, str)
        try:
            out.extend(parse_message(location, json.dumps(rest).encode(), known_locations,
                                     connector=connector, max_payload=len(payload) + 1))
        except MalformedMessage as exc:
            raise MalformedMessage(exc.reason.replace("events.0", prefix, 1)) from None
    return out

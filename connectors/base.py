"""The contract between syncd and a connector.

A connector type is a class registered under the entry-point group `syncd.connectors`:

```toml
[project.entry-points."syncd.connectors"]
shopify = "connectors.shopify:ShopifyConnector"
```

It declares `config_model` (a pydantic model, `extra="forbid"`, validated with the rest of the
config before anything starts) and is constructed as `cls(name, config, context)`. A type whose
settings must agree with the channels it serves may also declare a classmethod
`check_channels(name, settings, channels) -> list[str]`: `parse_config` calls it with the
validated settings and those channels (`syncd.model.Channel` by name), and refuses the
configuration with the errors it returns, each `"<dotted key path>: <message>"`. The context
hands it its transports (an aiohttp session, an MQTT URL) so tests inject fakes at the transport
seam and never patch internals.

Inbound, a connector yields `Inbound` batches from `events()`. Each batch's `on_commit` is called
only after every event in it is committed (or dead-lettered), which is when the connector may
acknowledge its source (MQTT PUBACK, an EDI file moved to `processed/`). The engine awaits these
callbacks in order, so one that is a coroutine gets `Engine.callback_timeout` seconds (10) and is
then cancelled: the events stay committed, and a source that was not told delivers them again.
Webhooks arrive through `webhook()`; the HTTP answer is sent after the commit.

Outbound, the pusher of each channel calls `push(channel, items)` with at most `max_batch` items,
each carrying the desired quantity, its version, the quantity syncd last saw on the channel
(`remote`, for compare-and-set) and an idempotency key that stays the same across retries of the
same version.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel

from syncd.model import Channel, Event, Location, Reservation

__all__ = [
    "Connector",
    "ConnectorContext",
    "ConnectorType",
    "DeadLetter",
    "Inbound",
    "PermanentPushError",
    "PushItem",
    "PushResult",
    "PushStatus",
    "TransientPushError",
    "WebhookReply",
]


@dataclass(slots=True, frozen=True)
class DeadLetter:
    connector: str
    reason: str
    payload: bytes
    # where it came from (topic, file name, webhook topic): bounded, for the operator
    origin: str = ""


@dataclass(slots=True)
class Inbound:
    """Events from one source delivery, acknowledged together after their commit."""

    events: list[Event] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    on_commit: Callable[[], Awaitable[None] | None] | None = None
    on_failure: Callable[[BaseException], Awaitable[None] | None] | None = None


@dataclass(slots=True, frozen=True)
class WebhookReply:
    """What a connector made of one webhook delivery."""

    status: int  # 2xx: accepted (events committed first); 401 bad signature; 400 malformed
    events: list[Event] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    error: str = ""
    detail: str = ""


class PushStatus(enum.StrEnum):
    OK = "ok"  # the channel now shows `desired`
    ACCEPTED = "accepted"  # queued by the channel (a feed), not yet confirmed applied
    CONFLICT = "conflict"  # compare-and-set failed; `remote` holds the channel's quantity
    TRANSIENT = "transient"  # retry this item later
    PERMANENT = "permanent"  # will not succeed as is (unknown SKU, rejected value)


@dataclass(slots=True, frozen=True)
class PushItem:
    channel: str
    sku: str
    location: str  # channel-side location key ("" = the pooled figure)
    desired: int
    version: int
    remote: int | None  # what syncd last saw on the channel, for compare-and-set
    idempotency_key: str


@dataclass(slots=True, frozen=True)
class PushResult:
    sku: str
    location: str
    status: PushStatus
    remote: int | None = None
    reason: str = ""


class TransientPushError(Exception):
    """The whole call failed in a way worth retrying (5xx, timeout, throttled)."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class PermanentPushError(Exception):
    """The whole call can never succeed as is (bad credentials, misconfiguration)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class ConnectorContext:
    """What syncd gives a connector: its view of the configuration and its transports."""

    locations: Mapping[str, Location]
    channels: Mapping[str, Channel]  # the channels this connector serves
    http: Any = None  # aiohttp.ClientSession, injected
    state_dir: str = ""
    reconcile_every: float = 900.0
    # the current availability of one SKU per location (for kiosk-style publishers)
    read_available: Callable[[str], Mapping[str, int]] | None = None
    # the last committed `seq` of a source of this connector (gap detection), or None
    last_seq: Callable[[str], int | None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Connector(Protocol):
    name: str
    max_batch: int  # largest push the channel accepts in one call
    per_location: bool  # publishes availability per location rather than pooled
    basis: str  # "available", or "on_hand_less_foreign" (Vendure)

    async def start(self) -> None:
        """Connect. Returns once connected the first time (readiness)."""

    def events(self) -> AsyncIterator[Inbound]:
        """Inbound deliveries, until `close()`."""
        ...

    async def push(self, channel: str, items: Sequence[PushItem]) -> Sequence[PushResult]:
        """Set the channel's quantities. Raise `TransientPushError` when the whole call failed."""
        ...

    async def read_levels(self, channel: str, keys: Sequence[tuple[str, str]]) -> dict[
        tuple[str, str], int
    ]:
        """What the channel shows now for `(sku, location)` keys (reconciliation)."""
        ...

    async def webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookReply:
        ...

    def on_reservation(self, r: Reservation) -> None:
        """A hold or order changed state (after commit)."""

    @property
    def connected(self) -> bool: ...

    async def close(self) -> None: ...


class ConnectorType(Protocol):
    """The class an entry point names."""

    config_model: ClassVar[type[BaseModel]]

    def __call__(self, name: str, config: Any, context: ConnectorContext) -> Connector: ...

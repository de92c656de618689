"""The `edi_inventory` connector: warehouse stock files (X12 846, EANCOM INVRPT) from an inbox.

Every settled file becomes exactly one `Inbound`, so the engine commits it in one transaction:
all of its counts or none of them.

- A good file yields COUNT events (`event_id = "<sender>:<control number>:<sku>"`, `occurred_at`
  = the document date) for the location its sender maps to; its `on_commit` moves it to
  `processed/`. That move is the acknowledgement: a crash before it means the file is read again
  and its events are duplicates (the ledger's `(connector, event_id)` uniqueness).
- The same interchange again (same sender and control number, any file name) is logged as a
  "duplicate interchange"; its events still go through the engine, where they are counted as
  duplicates and change nothing, and the file moves to `processed/`.
- A file that cannot be used (not valid EDI, an unknown sender, a sender mapped to a location
  syncd does not know) yields a dead letter (`syncd_dead_letters_total`, `dead_letters` table)
  and no events; its `on_commit` moves it to `failed/` with `<name>.error` holding the reason
  (the segment number and what is wrong). Put it back in the inbox once fixed.
- If a commit fails, `on_failure` leaves the file in the inbox; it is read again after settling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar, Final

from pydantic import BaseModel, ConfigDict, Field, field_validator

from connectors.base import (
    ConnectorContext,
    DeadLetter,
    Inbound,
    PermanentPushError,
    PushItem,
    PushResult,
    WebhookReply,
)
from syncd.config import Duration, PositiveDuration
from syncd.model import Event, EventType, Reservation, to_micros

from .document import Document, EdiError
from .inbox import Inbox, Stat, Where
from .parse import decode, parse_any

__all__ = ["DEAD_PAYLOAD_MAX", "MAX_FILE_BYTES", "EdiInventoryConfig", "EdiInventoryConnector"]

log = logging.getLogger("syncd.connectors.edi_inventory")

DEAD_PAYLOAD_MAX: Final = 64 * 1024  # bytes of a rejected file kept in its dead letter
MAX_FILE_BYTES: Final = 64 * 1024 * 1024  # larger files are rejected, not read into memory
_INTERCHANGES_KEPT: Final = 10_000  # (sender, control number) remembered for duplicate notices

Qualifier = Annotated[str, Field(pattern=r"^[A-Za-z0-9]{1,3}$")]


class EdiInventoryConfig(BaseModel):
    """`[connectors.<name>]` settings of type `edi_inventory`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # the directory the warehouse drops files in; relative paths are under the daemon's
    # state_dir. `processed/` and `failed/` are created inside it.
    inbox: Annotated[str, Field(min_length=1)]
    # sender id (ISA06, stripped / UNB sender) -> syncd location
    locations: Annotated[dict[str, str], Field(min_length=1)]
    qty_qualifier: Qualifier = "33"  # X12 QTY01: 33 available, 17 on hand
    sku_qualifier: Qualifier = "SK"  # X12 LIN id qualifier holding the SKU
    eancom_qty_qualifier: Qualifier = "145"  # EANCOM QTY 6063: 145 actual stock
    eancom_sku_qualifier: Qualifier = "SA"  # PIA item number type, or "LIN" for the LIN item
    poll_every: PositiveDuration = 2.0
    settle: Duration = 1.0  # unchanged this long (size, mtime) before a file is read
    pattern: Annotated[str, Field(min_length=1)] = "*"  # glob on file names

    @field_validator("locations")
    @classmethod
    def _check_locations(cls, value: dict[str, str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for sender, location in value.items():
            key = sender.strip()
            if not key:
                raise ValueError("a sender id is empty")
            if not location:
                raise ValueError(f"sender {key!r} maps to an empty location name")
            if key in out:
                raise ValueError(f"sender {key!r} is listed twice")
            out[key] = location
        return out

    @field_validator("settle")
    @classmethod
    def _check_settle(cls, value: float) -> float:
        if value < 0:
            raise ValueError("must not be negative")
        return value

    @field_validator("pattern")
    @classmethod
    def _check_pattern(cls, value: str) -> str:
        if "/" in value or re.search(r"[\x00-\x1f]", value):
            raise ValueError("must be a pattern for file names, like '*.edi'")
        return value


@dataclass(frozen=True, slots=True)
class _Delivery:
    """One file handed to the engine: its name, what it was when read, its in-flight token."""

    name: str
    stat: Stat
    token: int


class EdiInventoryConnector:
    config_model: ClassVar[type[BaseModel]] = EdiInventoryConfig
    max_batch = 1
    per_location = False
    basis = "available"

    def __init__(self, name: str, config: EdiInventoryConfig, context: ConnectorContext) -> None:
        self.name = name
        self.config = config
        self.context = context
        root = Path(config.inbox)
        if not root.is_absolute() and context.state_dir:
            root = Path(context.state_dir) / root
        self.inbox = Inbox(root, config.pattern, config.settle)
        self._closed = asyncio.Event()
        self._connected = False
        self._reported_down = False
        # (sender, control number) -> the file it came in, for "duplicate interchange" notices
        self._interchanges: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._extra = {"connector": name}
        for sender, location in config.locations.items():
            loc = context.locations.get(location)
            if loc is None:
                log.error("sender %r maps to location %r, which is not configured: its files "
                          "will go to failed/", sender, location, extra=self._extra)
            elif loc.authority != name:
                log.warning("this connector is not the authority of location %r (%r is): the "
                            "counts of sender %r will be ignored", location, loc.authority,
                            sender, extra={**self._extra, "location": location})

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self.inbox.prepare)
        self._connected = True
        log.info("watching %s", self.inbox.root, extra=self._extra)

    @property
    def connected(self) -> bool:
        return self._connected

    async def close(self) -> None:
        self._closed.set()

    # -- inbound ----------------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[Inbound]:
        """One `Inbound` per settled file, in name order, every `poll_every`, until `close()`.

        A new call (the intake restarting after an error) forgets what was in flight: a delivery
        the previous consumer never handed to the engine would otherwise be held forever. One it
        did hand over may then be delivered twice, which the ledger's event ids make harmless."""
        self.inbox.in_flight.clear()
        while not self._closed.is_set():
            for name, stat in await self._poll():
                if self._closed.is_set():
                    return
                inbound = await self._take(name, stat)
                if inbound is not None:
                    yield inbound
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), self.config.poll_every)

    async def _poll(self) -> list[tuple[str, Stat]]:
        try:
            listing = await asyncio.to_thread(self.inbox.listing)
        except OSError as exc:
            if not self._reported_down:
                log.error("inbox %s is not readable: %s", self.inbox.root, exc,
                          extra=self._extra)
                self._reported_down = True
            self._connected = False
            return []
        if self._reported_down:
            log.info("inbox %s is readable again", self.inbox.root, extra=self._extra)
            self._reported_down = False
        self._connected = True
        return self.inbox.ready(listing, asyncio.get_running_loop().time())

    async def _take(self, name: str, stat: Stat) -> Inbound | None:
        try:
            loaded = await asyncio.to_thread(self._load, name, stat)
        except OSError as exc:
            log.warning("cannot read %s: %s", name, exc, extra=self._extra)
            return None
        if loaded is None:
            return None  # changed or gone since it settled: it settles again
        data, parsed = loaded
        delivery = _Delivery(name, stat, self.inbox.hold(name))
        if isinstance(parsed, EdiError):
            return self._reject(delivery, data, str(parsed))
        location = self.config.locations.get(parsed.sender)
        if location is None:
            return self._reject(delivery, data, f"unknown sender {parsed.sender!r}: not in "
                                f"[connectors.{self.name}].locations")
        if location not in self.context.locations:
            return self._reject(delivery, data, f"sender {parsed.sender!r} maps to location "
                                f"{location!r}, which is not configured")
        return self._accept(delivery, parsed, location)

    def _load(self, name: str, stat: Stat) -> tuple[bytes, Document | EdiError] | None:
        """Read and parse (in a worker thread: both can take a while on a big file)."""
        data = self.inbox.read(name, stat, MAX_FILE_BYTES)
        if data is None:
            return None
        if len(data) > MAX_FILE_BYTES:
            return data[:DEAD_PAYLOAD_MAX], EdiError(
                None, f"file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB")
        c = self.config
        try:
            doc = parse_any(decode(data), qty_qualifier=c.qty_qualifier,
                            sku_qualifier=c.sku_qualifier,
                            eancom_qty_qualifier=c.eancom_qty_qualifier,
                            eancom_sku_qualifier=c.eancom_sku_qualifier)
        except EdiError as err:
            return data, err
        return data, doc

    def _accept(self, delivery: _Delivery, doc: Document, location: str) -> Inbound:
        name = delivery.name
        key = (doc.sender, doc.control_number)
        extra = {**self._extra, "location": location}
        earlier = self._interchanges.get(key)
        if earlier is not None:
            log.warning("duplicate interchange: %s repeats interchange %s from %s (first seen in "
                        "%s); its counts change nothing", name, doc.control_number, doc.sender,
                        earlier, extra=extra)
        else:
            self._interchanges[key] = name
            while len(self._interchanges) > _INTERCHANGES_KEPT:
                self._interchanges.popitem(last=False)
        at = to_micros(doc.document_date)
        events = [
            Event(connector=self.name, event_id=f"{doc.sender}:{doc.control_number}:{sku}",
                  type=EventType.COUNT, sku=sku, qty=qty, occurred_at=at, location=location,
                  source=doc.sender)
            for sku, qty in doc.lines
        ]
        first = earlier is None

        async def on_commit() -> None:
            dest = await self._move(delivery, "processed", None)
            if dest is not None:
                log.info("%s processed: %d counts from %s (%s, interchange %s)", name,
                         len(events), doc.sender, doc.standard, doc.control_number, extra=extra)

        async def on_failure(exc: BaseException) -> None:
            if first and self._interchanges.get(key) == name:
                del self._interchanges[key]
            self.inbox.release(name, delivery.token)
            log.warning("commit failed; %s stays in the inbox and will be read again", name,
                        extra=extra)

        return Inbound(events=events, on_commit=on_commit, on_failure=on_failure)

    def _reject(self, delivery: _Delivery, data: bytes, reason: str) -> Inbound:
        name = delivery.name
        log.error("%s rejected: %s", name, reason, extra=self._extra)
        dead = DeadLetter(self.name, reason, data[:DEAD_PAYLOAD_MAX], origin=name)

        async def on_commit() -> None:
            await self._move(delivery, "failed", reason)

        async def on_failure(exc: BaseException) -> None:
            self.inbox.release(name, delivery.token)

        return Inbound(dead=[dead], on_commit=on_commit, on_failure=on_failure)

    async def _move(self, delivery: _Delivery, target: Where, note: str | None) -> Path | None:
        """Move the file in a thread. The file stays in flight until that thread is done, also
        when the engine gives up waiting (`Engine.callback_timeout`: a move stuck on a dead
        mount): it is not read and delivered again while its move may still happen, and a stuck
        file holds one thread, not one more at every retry."""
        name = delivery.name
        moving = asyncio.ensure_future(
            asyncio.to_thread(self.inbox.move, name, delivery.stat, target, note))
        moving.add_done_callback(lambda _: self.inbox.release(name, delivery.token))
        try:
            dest = await asyncio.shield(moving)
        except OSError as exc:
            log.error("cannot move %s to %s/: %s; it will be read again (as a duplicate)", name,
                      target, exc, extra=self._extra)
            return None
        except asyncio.CancelledError:
            moving.add_done_callback(_retrieved)  # its outcome is logged by nobody else
            raise
        if dest is None:
            log.warning("%s changed or vanished after it was read; not moved (a new version is "
                        "read again)", name, extra=self._extra)
        return dest

    # -- no channel side --------------------------------------------------------------------------

    async def push(self, channel: str, items: Sequence[PushItem]) -> Sequence[PushResult]:
        raise PermanentPushError("edi_inventory serves no channel")

    async def read_levels(
        self, channel: str, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], int]:
        raise NotImplementedError("edi_inventory serves no channel")

    async def webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookReply:
        return WebhookReply(404, error="not_found", detail="this connector takes no webhooks")

    def on_reservation(self, r: Reservation) -> None:
        return None


def _retrieved(moving: asyncio.Future[Path | None]) -> None:
    """The outcome of a move nobody waits for any more."""
    exc = None if moving.cancelled() else moving.exception()
    if exc is not None:
        log.error("a move given up by the engine failed later: %s", exc)

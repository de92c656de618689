"""`http_source`: a stock source whose events arrive through `POST /v1/events`.

For back offices and scripts that cannot speak MQTT. It has no settings and no channel side: it
exists so that such a source can be a location's `authority` under its own name.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from syncd.model import Reservation

from .base import (
    ConnectorContext,
    Inbound,
    PermanentPushError,
    PushItem,
    PushResult,
    WebhookReply,
)

__all__ = ["HttpSourceConnector"]


class HttpSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HttpSourceConnector:
    config_model: ClassVar[type[BaseModel]] = HttpSourceConfig
    max_batch = 1
    per_location = False
    basis = "available"

    def __init__(self, name: str, config: HttpSourceConfig, context: ConnectorContext) -> None:
        self.name = name
        self._closed = asyncio.Event()

    async def start(self) -> None:
        return None

    async def events(self) -> AsyncIterator[Inbound]:
        """Nothing arrives here: its events come through the API. Ends at `close()`."""
        await self._closed.wait()
        nothing: tuple[Inbound, ...] = ()
        for inbound in nothing:
            yield inbound

    async def push(self, channel: str, items: Sequence[PushItem]) -> Sequence[PushResult]:
        raise PermanentPushError("an http_source connector cannot serve a channel")

    async def read_levels(
        self, channel: str, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], int]:
        raise NotImplementedError

    async def webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookReply:
        return WebhookReply(404, error="not_found", detail="this connector takes no webhooks")

    def on_reservation(self, r: Reservation) -> None:
        return None

    @property
    def connected(self) -> bool:
        return True

    async def close(self) -> None:
        self._closed.set()

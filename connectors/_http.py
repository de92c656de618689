"""Small pieces every HTTP connector needs, kept in one place."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from connectors.base import ConnectorContext
from syncd.model import Channel, Reservation

__all__ = [
    "HttpConnector", "HttpSession", "is_loopback", "retry_after", "serve_app", "service_url",
]


class HttpSession:
    """A connector's aiohttp session: the daemon's (`context.http`, which tests replace at the
    transport seam) when there is one, else one the connector opens in `start()` and closes in
    `close()`. Calling it gives the session to use now (None before `open()`)."""

    def __init__(self, context: Any) -> None:
        self._context = context  # a ConnectorContext
        self._own: aiohttp.ClientSession | None = None

    def __call__(self) -> aiohttp.ClientSession | None:
        http = self._context.http
        if isinstance(http, aiohttp.ClientSession):
            return http
        return self._own

    def open(self) -> None:
        if self._context.http is None and self._own is None:
            self._own = aiohttp.ClientSession()

    async def close(self) -> None:
        if self._own is not None:
            await self._own.close()
            self._own = None


class HttpConnector:
    """The lifecycle every HTTP connector shares: its session (`HttpSession`), the `_closed`
    event its long waits watch, `start` and `close`, no interest in reservations by default,
    and the one channel it serves. A connector extends `start`/`close` (calling these first)
    and says when it is `connected`."""

    per_location = False
    basis = "available"

    def __init__(self, name: str, context: ConnectorContext) -> None:
        self.name = name
        self.context = context
        self._session = HttpSession(context)
        self._closed = asyncio.Event()
        self._started = False

    async def start(self) -> None:
        self._session.open()
        self._closed.clear()
        self._started = True

    async def close(self) -> None:
        self._closed.set()
        self._started = False
        await self._session.close()

    def on_reservation(self, r: Reservation) -> None:
        return None

    async def _idle(self, seconds: float) -> None:
        """Wait `seconds` between polls, or less when the connector closes."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closed.wait(), seconds)

    def _channel(self) -> Channel | None:
        """The channel this connector serves (the first, for a connector that serves one)."""
        for ch in self.context.channels.values():
            return ch
        return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def service_url(value: str, what: str, example: str = "", https_reason: str = "") -> str:
    """A service's base URL: https (plain http only on loopback, for a local simulator), with no
    query, fragment or credentials; returned without its trailing slash."""
    parts = urlsplit(value.strip())
    host = parts.hostname or ""
    if parts.scheme not in ("https", "http") or not host:
        raise ValueError(f"expected an https URL like {example}" if example
                         else f"{what} must be an https URL")
    if parts.scheme == "http" and not is_loopback(host):
        reason = f": {https_reason}" if https_reason else ""
        raise ValueError(f"{what} must use https{reason} (http only for a loopback simulator)")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{what} takes no query, fragment or credentials")
    return value.strip().rstrip("/")


def retry_after(headers: Mapping[str, str] | None, cap: float = 3600.0) -> float | None:
    """`Retry-After` in seconds (the delta-seconds form), or None when absent or unusable."""
    if headers is None:
        return None
    raw = headers.get("Retry-After")
    if raw is None:
        raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if 0 <= value <= cap else None


@contextlib.asynccontextmanager
async def serve_app(app: web.Application, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Serve an aiohttp application on a free port of `host`; yields its base URL (the
    simulators use this to run beside the tests and the demo)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    try:
        yield f"http://{host}:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()

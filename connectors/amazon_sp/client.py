"""A thin SP-API client: LWA token in `x-amz-access-token`, per-operation token buckets.

SP-API rate-limits every operation with a token bucket ("Usage Plans and Rate Limits"): tokens are
added at `rate` per second up to `burst`; a call takes one; a call that finds none is answered
HTTP 429 `{"errors": [{"code": "QuotaExceeded", "message": "You exceeded your quota for the
requested resource.", "details": ""}]}`. Successful answers carry `x-amzn-RateLimit-Limit`, the
rate (requests per second) applied to the operation for this account-application pair; Amazon
documents that it is absent on 429 / 401 / 5xx and that clients must not depend on it.

`TokenBucket` mirrors that bucket on our side and `SpApiClient.call` waits *before* sending, so a
steady stream is never throttled. The rate follows `x-amzn-RateLimit-Limit` when the header comes
(selling partners with a bigger usage plan get a higher rate; a lower one slows us down). One
token of the burst is kept in reserve (`HEADROOM`) so that network jitter, which can bring two
requests closer together on arrival than they were on departure, never makes Amazon see a burst
bigger than its bucket.

Defaults (developer-docs.amazon.com/sp-api, "Listings Items API Rate Limits", "Feeds API Rate
Limits", searchOrders reference): patchListingsItem and getListingsItem 5/s burst 5 (the per-
account row of the rate-limit table; the older per-operation reference page says burst 10 for
patchListingsItem: we take the smaller); createFeedDocument 0.5/s burst 15; getFeed 2/s burst 15;
getFeedDocument 0.0222/s burst 10; searchOrders 0.0056/s burst 20. createFeed (0.0083/s, and
five JSON_LISTINGS_FEED submissions per five minutes per region) is paced by the connector itself
(`feed_min_interval`), not here.

Whole-call outcomes map onto the push contract:

- 401/403: the token is dropped and the call is sent again once with a new one (an expired or
  revoked token); refused again, `PermanentPushError` (a missing role, a revoked authorisation).
- 429: waited out (Retry-After when given, else one token's time) and sent again: not a failure.
  After `MAX_THROTTLE_WAITS` waits, `TransientPushError` with that wait as `retry_after`.
- 5xx, timeouts, connection errors: `TransientPushError`.
- anything else (200, 201, 202, 400, 404, …) is returned to the caller, who knows what it means.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from connectors._http import retry_after as _retry_after
from connectors.base import PermanentPushError, TransientPushError

from .auth import LwaAuth

__all__ = [
    "DEFAULT_LIMITS",
    "HEADROOM",
    "MAX_THROTTLE_WAITS",
    "USER_AGENT",
    "Response",
    "SpApiClient",
    "TokenBucket",
    "error_text",
]

log = logging.getLogger("connectors.amazon_sp")

# operation -> (rate per second, burst)
DEFAULT_LIMITS: dict[str, tuple[float, int]] = {
    "patchListingsItem": (5.0, 5),
    "getListingsItem": (5.0, 5),
    "createFeedDocument": (0.5, 15),
    "getFeed": (2.0, 15),
    "getFeedDocument": (0.0222, 10),
    "searchOrders": (0.0056, 20),
}
HEADROOM = 1  # tokens of the burst kept in reserve against network jitter
MAX_THROTTLE_WAITS = 20
# SP-API asks for "AppName/Version (Language=...)"
USER_AGENT = "syncd/0.1 (Language=Python)"


class TokenBucket:
    """Our side of one operation's token bucket. `acquire()` waits for a token (FIFO)."""

    def __init__(self, rate: float, burst: int, *, headroom: int = HEADROOM,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs a positive rate and a burst of at least 1")
        self.clock = clock
        self.rate = rate
        self.burst = burst
        self.capacity = float(max(1, burst - headroom))
        self._tokens = self.capacity
        self._stamp = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self.clock()
        self._tokens = min(self.capacity, self._tokens + max(0.0, now - self._stamp) * self.rate)
        self._stamp = now

    @property
    def tokens(self) -> float:
        self._refill()
        return self._tokens

    def wait_time(self) -> float:
        """Seconds until a token is there (0 when one is)."""
        self._refill()
        if self._tokens >= 1.0:
            return 0.0
        return (1.0 - self._tokens) / self.rate

    async def acquire(self, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> float:
        """Take a token, waiting for it. Returns the seconds waited."""
        waited = 0.0
        async with self._lock:
            while True:
                wait = self.wait_time()
                if wait <= 0:
                    self._tokens -= 1.0
                    return waited
                waited += wait
                await sleep(wait)

    def set_rate(self, rate: float) -> None:
        """The rate Amazon applies (`x-amzn-RateLimit-Limit`); tokens so far keep the old rate."""
        if rate > 0 and rate != self.rate:
            self._refill()
            self.rate = rate

    def drain(self) -> None:
        """Amazon answered 429: its bucket is empty, so is ours."""
        self._refill()
        self._tokens = min(self._tokens, 0.0)


@dataclass(slots=True, frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]  # lower-cased names
    body: Any  # parsed JSON, or None
    raw: bytes


def _rate_limit(headers: Mapping[str, str]) -> float | None:
    raw = headers.get("x-amzn-ratelimit-limit")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if 0 < value < 10_000 else None


def error_text(doc: Any, limit: int = 300) -> str:
    """`code: message (details)` of an SP-API ErrorList body, joined."""
    if isinstance(doc, dict) and isinstance(doc.get("errors"), list):
        parts = []
        for err in doc["errors"]:
            if not isinstance(err, dict):
                continue
            text = f"{err.get('code', '?')}: {err.get('message', '')}".strip()
            details = err.get("details")
            if isinstance(details, str) and details:
                text += f" ({details})"
            parts.append(text)
        if parts:
            return "; ".join(parts)[:limit]
    return "no error details"


class SpApiClient:
    """Calls `{endpoint}{path}` with the LWA token, paced per operation."""

    def __init__(
        self,
        session: Callable[[], aiohttp.ClientSession | None],
        endpoint: str,
        auth: LwaAuth,
        timeout: float,
        *,
        limits: Mapping[str, tuple[float, int]] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._session = session
        self.endpoint = endpoint.rstrip("/")
        self.auth = auth
        self.timeout = timeout
        self._sleep = sleep
        self.buckets = {op: TokenBucket(rate, burst)
                        for op, (rate, burst) in (limits or DEFAULT_LIMITS).items()}
        # counters (tests, the benchmark)
        self.calls = 0
        self.calls_by_operation: Counter[str] = Counter()
        self.throttled_calls = 0
        self.paced_seconds = 0.0
        self.ok = True  # the last call reached SP-API and was authorised

    def session(self) -> aiohttp.ClientSession:
        session = self._session()
        if session is None:
            raise TransientPushError("no HTTP session (connector not started)")
        return session

    async def call(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        retry_throttled: bool = True,
    ) -> Response:
        """One SP-API operation. `path` must already be percent-encoded."""
        session = self.session()
        url = URL(self.endpoint + path, encoded=True)
        if params:
            url = url.with_query(dict(params))
        data = json.dumps(body, separators=(",", ":")).encode() if body is not None else None
        bucket = self.buckets.get(operation)
        refreshed = False
        waits = 0
        while True:
            if bucket is not None:
                self.paced_seconds += await bucket.acquire(self._sleep)
            token = await self.auth.token()
            headers = {
                "x-amz-access-token": token,
                "User-Agent": USER_AGENT,
                "Accept": "application/json",
            }
            if data is not None:
                headers["Content-Type"] = "application/json"
            try:
                async with session.request(
                    method, url, data=data, headers=headers,
                    timeout=aiohttp.ClientTimeout(total=self.timeout),
                ) as resp:
                    status = resp.status
                    resp_headers = {k.lower(): v for k, v in resp.headers.items()}
                    raw = await resp.read()
            except TimeoutError:
                self.ok = False
                raise TransientPushError(
                    f"SP-API did not answer {operation} within {self.timeout:g}s") from None
            except aiohttp.ClientError as exc:
                self.ok = False
                raise TransientPushError(
                    f"cannot reach SP-API ({operation}): {type(exc).__name__}") from None
            self.calls += 1
            self.calls_by_operation[operation] += 1
            doc: Any
            try:
                doc = json.loads(raw) if raw else None
            except ValueError:
                doc = None
            rate = _rate_limit(resp_headers)
            if rate is not None and bucket is not None:
                bucket.set_rate(rate)
            if status in (401, 403):
                if not refreshed:  # expired or revoked token: one new token, one more try
                    refreshed = True
                    self.auth.invalidate(token)
                    log.info("SP-API refused the access token (HTTP %d); getting a new one",
                             status)
                    continue
                self.ok = False
                raise PermanentPushError(self.auth.scrub(
                    f"SP-API refused access to {operation} (HTTP {status}: {error_text(doc)})"))
            if status == 429:
                waits += 1
                self.throttled_calls += 1
                if bucket is not None:
                    bucket.drain()
                wait = _retry_after(resp_headers)
                if wait is None:
                    wait = 1.0 / bucket.rate if bucket is not None else 1.0
                if not retry_throttled or waits > MAX_THROTTLE_WAITS:
                    raise TransientPushError(f"SP-API throttled {operation} (QuotaExceeded)",
                                             wait)
                log.info("SP-API throttled %s; waiting %.2fs", operation, wait)
                await self._sleep(wait)
                continue
            if status >= 500:
                self.ok = False
                raise TransientPushError(
                    f"SP-API answered HTTP {status} to {operation}: {error_text(doc, 160)}",
                    _retry_after(resp_headers))
            self.ok = True
            return Response(status, resp_headers, doc, raw)

"""A thin client of the Shopify Admin GraphQL API, paced by the cost-based leaky bucket.

Shopify limits the GraphQL Admin API by *calculated query cost* (shopify.dev, "GraphQL Admin API
rate limits"): each app × store has a bucket of `maximumAvailable` points that refills at
`restoreRate` points per second. A call must find its *requested* cost in the bucket before it
runs; afterwards the difference to the *actual* cost is refunded. Every response reports the state
in `extensions.cost.throttleStatus`. A call the bucket cannot pay is answered HTTP 200 with
`{"errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}]}`.

`CostBucket` mirrors that bucket on our side from the last `throttleStatus` seen plus the time
elapsed, and `GraphQLClient.execute` waits *before* sending until the bucket holds the call's
expected cost, so a steady stream of calls is never throttled. A throttled answer (another app
of ours on the same store, a cost we under-estimated) is waited out and retried here: it is not a
failure. Whole-call failures map onto the push contract: 5xx, timeouts and connection errors
raise `TransientPushError`; 401/403 and other refusals raise `PermanentPushError`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
from pydantic import SecretStr

from connectors._http import retry_after as _retry_after
from connectors.base import PermanentPushError, TransientPushError

__all__ = [
    "MAX_QUERY_COST",
    "CostBucket",
    "GraphQLClient",
]

log = logging.getLogger("connectors.shopify")

# "A single query to the API cannot exceed a cost of 1000" (requested cost, checked before it runs)
MAX_QUERY_COST = 1000
# a call whose throttle never clears is given up after this many waits (then retried by the pusher)
MAX_THROTTLE_WAITS = 50
_TRANSIENT_CODES = frozenset({"INTERNAL_SERVER_ERROR", "SERVICE_UNAVAILABLE", "TIMEOUT"})


class CostBucket:
    """Our estimate of the store's leaky bucket, from the last `throttleStatus` seen.

    Until the first response nothing is known and calls go straight out. `reserve()` takes the
    expected cost out of the estimate before a call, so concurrent calls do not count the same
    points twice; the next response's figures replace the estimate."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.maximum: float | None = None
        self.restore_rate: float = 0.0
        self._available = 0.0
        self._stamp = 0.0

    def level(self) -> float | None:
        if self.maximum is None:
            return None
        elapsed = max(0.0, self.clock() - self._stamp)
        return min(self.maximum, self._available + elapsed * self.restore_rate)

    def wait_for(self, cost: float) -> float:
        """Seconds until the bucket holds `cost` (0 when it does, or when nothing is known)."""
        level = self.level()
        if level is None or self.maximum is None:
            return 0.0
        needed = min(cost, self.maximum)  # a call bigger than the bucket waits for a full one
        if level >= needed:
            return 0.0
        if self.restore_rate <= 0:
            return 1.0
        return (needed - level) / self.restore_rate

    def reserve(self, cost: float) -> None:
        level = self.level()
        if level is None:
            return
        self._available = level - cost
        self._stamp = self.clock()

    def observe(self, status: Mapping[str, Any]) -> None:
        """Take the figures of a response's `extensions.cost.throttleStatus`."""
        try:
            maximum = float(status["maximumAvailable"])
            available = float(status["currentlyAvailable"])
            rate = float(status["restoreRate"])
        except (KeyError, TypeError, ValueError):
            return
        if maximum <= 0 or rate < 0:
            return
        self.maximum = maximum
        self.restore_rate = rate
        self._available = min(available, maximum)
        self._stamp = self.clock()


class GraphQLClient:
    """POSTs GraphQL documents to `{shop_url}/admin/api/{version}/graphql.json`."""

    def __init__(
        self,
        session: Callable[[], aiohttp.ClientSession | None],
        endpoint: str,
        access_token: SecretStr,
        timeout: float,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self.endpoint = endpoint
        self._token = access_token
        self.timeout = timeout
        self._sleep = sleep
        self.bucket = CostBucket(clock)
        self._pace = asyncio.Lock()
        # counters (read by tests and the benchmark)
        self.calls = 0
        self.throttled_calls = 0
        self.paced_seconds = 0.0
        self.points_requested = 0
        self.points_spent = 0
        self.ok = True  # the last call reached Shopify and was authorised

    def max_cost(self) -> int:
        """The largest requested cost one call may have: the single-query limit, or the bucket
        itself when it is smaller (a call bigger than the bucket would be throttled forever)."""
        maximum = self.bucket.maximum
        if maximum is None:
            return MAX_QUERY_COST
        return max(1, min(MAX_QUERY_COST, int(maximum)))

    async def _paced(self, cost: int) -> None:
        async with self._pace:
            while True:
                wait = self.bucket.wait_for(cost)
                if wait <= 0:
                    self.bucket.reserve(cost)
                    return
                self.paced_seconds += wait
                await self._sleep(wait)

    async def execute(
        self, query: str, variables: Mapping[str, Any] | None = None, *, cost: int,
        operation: str | None = None,
    ) -> dict[str, Any]:
        """Run one document and return its `data`. `cost` is the expected requested cost."""
        session = self._session()
        if session is None:
            raise TransientPushError("no HTTP session (connector not started)")
        payload: dict[str, Any] = {"query": query, "variables": dict(variables or {})}
        if operation:
            payload["operationName"] = operation
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "X-Shopify-Access-Token": self._token.get_secret_value(),
        }
        waits = 0
        while True:
            await self._paced(cost)
            try:
                async with session.post(
                    self.endpoint, data=body, headers=headers,
                    timeout=aiohttp.ClientTimeout(total=self.timeout),
                ) as resp:
                    status = resp.status
                    resp_headers = {k: v for k, v in resp.headers.items()}
                    raw = await resp.read()
            except TimeoutError:
                self.ok = False
                raise TransientPushError(f"Shopify did not answer within {self.timeout:g}s") \
                    from None
            except aiohttp.ClientError as exc:
                self.ok = False
                raise TransientPushError(f"cannot reach Shopify: {type(exc).__name__}") from None
            self.calls += 1
            if status in (401, 403):
                self.ok = False
                raise PermanentPushError(
                    f"Shopify refused the access token (HTTP {status})"
                )
            if status == 429:  # REST-style throttle: honour Retry-After, then go again
                waits += 1
                self.throttled_calls += 1
                if waits > MAX_THROTTLE_WAITS:
                    raise TransientPushError("throttled", _retry_after(resp_headers))
                await self._sleep(_retry_after(resp_headers) or 1.0)
                continue
            if status >= 500:
                raise TransientPushError(f"Shopify answered HTTP {status}",
                                         _retry_after(resp_headers))
            if status != 200:
                self.ok = False
                raise PermanentPushError(f"Shopify answered HTTP {status}")
            self.ok = True
            try:
                doc = json.loads(raw)
            except ValueError:
                raise TransientPushError("Shopify answered with a body that is not JSON") \
                    from None
            if not isinstance(doc, dict):
                raise TransientPushError("Shopify answered with an unexpected body")
            cost_info = (doc.get("extensions") or {}).get("cost") or {}
            if isinstance(cost_info, dict):
                status_info = cost_info.get("throttleStatus")
                if isinstance(status_info, dict):
                    self.bucket.observe(status_info)
                self._account(cost, cost_info)
            errors = doc.get("errors")
            if errors:
                codes = _error_codes(errors)
                if "THROTTLED" in codes:
                    waits += 1
                    self.throttled_calls += 1
                    wait = self._throttle_wait(cost, cost_info)
                    log.info("Shopify throttled a call; waiting %.2fs", wait)
                    if waits > MAX_THROTTLE_WAITS:
                        raise TransientPushError("throttled", wait)
                    await self._sleep(wait)
                    continue
                message = _error_message(errors)
                if codes & _TRANSIENT_CODES:
                    raise TransientPushError(f"Shopify error: {message}")
                if "ACCESS_DENIED" in codes:
                    raise PermanentPushError(f"Shopify denied access: {message}")
                raise PermanentPushError(f"Shopify rejected the request: {message}")
            data = doc.get("data")
            if not isinstance(data, dict):
                raise TransientPushError("Shopify answered without data")
            return data

    def _account(self, expected: int, cost_info: Mapping[str, Any]) -> None:
        requested = cost_info.get("requestedQueryCost")
        actual = cost_info.get("actualQueryCost")
        if isinstance(requested, int | float):
            self.points_requested += int(requested)
            if requested > expected:
                log.debug("requested cost %s above the estimate %s", requested, expected)
        if isinstance(actual, int | float):
            self.points_spent += int(actual)

    def _throttle_wait(self, expected: int, cost_info: Mapping[str, Any]) -> float:
        """(requested − currently available) / restore rate, from the throttled answer."""
        status = cost_info.get("throttleStatus")
        if not isinstance(status, dict):
            return 1.0
        requested = cost_info.get("requestedQueryCost")
        try:
            need = float(requested) if requested is not None else float(expected)
            have = float(status["currentlyAvailable"])
            rate = float(status["restoreRate"])
            maximum = float(status["maximumAvailable"])
        except (KeyError, TypeError, ValueError):
            return 1.0
        if rate <= 0:
            return 1.0
        return max(0.05, (min(need, maximum) - have) / rate + 0.01)


def _error_codes(errors: Any) -> set[str]:
    codes: set[str] = set()
    if isinstance(errors, list):
        for err in errors:
            if isinstance(err, dict):
                ext = err.get("extensions")
                if isinstance(ext, dict) and isinstance(ext.get("code"), str):
                    codes.add(ext["code"])
                if err.get("message") == "Throttled":
                    codes.add("THROTTLED")
    return codes


def _error_message(errors: Any) -> str:
    if isinstance(errors, list):
        msgs = [str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors]
        return "; ".join(msgs)[:500]
    return str(errors)[:500]
